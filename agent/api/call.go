package api

import (
	"context"
	"crypto/subtle"
	"net/http"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// Call is one inference request that reached the agent by another
// transport than this package's HTTP handlers (the gRPC server in
// agent/grpcapi). It goes through the same path as an HTTP request: the
// request timeout, the input checks against the model's signature (with the
// same messages), the in-flight gauge, the request and latency metrics
// (labelled with the call's protocol) and the Observer.
//
// Start one with Server.StartCall and end it with Finish exactly once. A
// Call is not safe for concurrent use.
type Call struct {
	s        *Server
	c        *call
	protocol string
	rt       route
	start    time.Time
	entry    catalog.Entry
	tm       catalog.Timing
}

// StartCall begins a call of protocol (a short metrics label such as
// "grpc") for model at version (0: the current one).
func (s *Server) StartCall(protocol, model string, version int64) *Call {
	s.metrics.inflight.Inc()
	return &Call{s: s, c: getCall(), protocol: protocol, start: time.Now(),
		rt: route{kind: "v2", action: "infer", model: model, version: version}}
}

// Infer runs the call's model on inputs, matched to the model's inputs by
// name and checked as HTTP requests are. check, if not nil, sees the entry
// of the model instance that will run before its inputs are bound (to refuse
// unknown requested outputs, say); during a swap it may be called twice. The
// outputs, in the model's order, alias the call's buffers: they are valid
// until Finish. Errors are for Finish to classify.
func (c *Call) Infer(ctx context.Context, inputs []tensor.Tensor, check func(catalog.Entry) error) (catalog.Entry, []tensor.Tensor, error) {
	var err error
	c.entry, c.tm, err = c.s.run(ctx, c.rt, c.c, func() []tensor.Tensor { return inputs }, check)
	if err != nil {
		return c.entry, nil, err
	}
	return c.entry, c.c.outs, nil
}

// Finish records the call, answered with err (nil for success), in the
// metrics and tells the Observer, as for an HTTP request; it returns the
// HTTP status the same outcome has over HTTP (StatusFor), which the metrics
// and the Observer carry. The call's buffers go back to the pool: outputs
// from Infer are no longer valid.
func (c *Call) Finish(err error) int {
	code := http.StatusOK
	if err != nil {
		code = StatusFor(err)
	}
	c.s.observe(c.protocol, c.rt, c.c, c.entry, code, err, c.tm, c.start)
	c.s.metrics.inflight.Dec()
	putCall(c.c)
	c.c = nil
	return code
}

// Lookup returns the entry of the model served as name at version (0: the
// current one); errors wrap catalog.ErrModelNotFound or ErrVersionNotFound.
func (s *Server) Lookup(name string, version int64) (catalog.Entry, error) {
	return s.opts.Backend.Lookup(name, version)
}

// Authorized reports whether an Authorization value ("Bearer <token>")
// carries the API's token; without a token configured everything is.
func (s *Server) Authorized(authorization string) bool {
	if s.opts.Token == "" {
		return true
	}
	got, ok := strings.CutPrefix(authorization, "Bearer ")
	return ok && subtle.ConstantTimeCompare([]byte(got), []byte(s.opts.Token)) == 1
}

// Allow takes one request from client's rate limit (a client address, as
// ratelimit.ClientKey gives for HTTP) and says how long to wait when it is
// spent; without a rate limit everything is allowed.
func (s *Server) Allow(client string) (wait time.Duration, ok bool) {
	if s.limiter == nil {
		return 0, true
	}
	return s.limiter.Allow(client)
}
