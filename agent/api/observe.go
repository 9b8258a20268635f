package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// Observer hears of every inference request once it has been answered; the
// daemon feeds telemetry and the updater's probation with it. It is called on
// the request's goroutine after the response is written, and must not block.
type Observer interface {
	ObserveInference(*Inference)
}

// Inference is one answered inference request. Its tensors alias the
// request's pooled buffers: they are valid only during ObserveInference.
type Inference struct {
	// Model is the model that served (or refused) the request; zero when
	// the model or version was not found.
	Model catalog.Entry
	// Protocol is how the request came: "v2" (HTTP), "tfserving" or
	// "grpc".
	Protocol string
	// Code is the HTTP status sent (for gRPC, the status the same outcome
	// gets over HTTP: its gRPC code is derived from it); Err the error
	// behind it, if any.
	Code int
	Err  error
	// Latency is the whole request, body reading included; Timing splits
	// the model's part into queue wait and invoke.
	Latency time.Duration
	Timing  catalog.Timing
	// Inputs are the request's inputs in the model's order, once they were
	// bound to it (nil for requests refused before that); Outputs are set
	// on success.
	Inputs  []tensor.Tensor
	Outputs []tensor.Tensor
}

// observe records one answered inference request in the metrics and tells
// the Observer.
func (s *Server) observe(protocol string, rt route, c *call, e catalog.Entry, code int, err error, tm catalog.Timing, start time.Time) {
	total := time.Since(start)
	if e.Name == "" {
		// Refused before it reached the model (a body that did not
		// decode): name the model when it exists.
		e, _ = s.opts.Backend.Lookup(rt.model, rt.version)
	}
	// Label by the served model only: names from the URL of requests that
	// found no model would let any client grow the series without bound.
	version := ""
	if e.Version != 0 {
		version = strconv.FormatInt(e.Version, 10)
	}
	s.metrics.requests.WithLabelValues(e.Name, version, protocol, strconv.Itoa(code)).Inc()
	if code == http.StatusOK {
		s.metrics.duration.WithLabelValues(e.Name, version).Observe(total.Seconds())
		s.metrics.phases.WithLabelValues(e.Name, version, "queue").Observe(tm.Queue.Seconds())
		s.metrics.phases.WithLabelValues(e.Name, version, "invoke").Observe(tm.Invoke.Seconds())
	}
	if s.opts.Observer == nil {
		return
	}
	in := &c.observed
	*in = Inference{Model: e, Protocol: protocol, Code: code, Err: err, Latency: total, Timing: tm}
	if len(c.ins) == len(e.Inputs) && len(c.ins) > 0 {
		c.inTensors = c.inTensors[:0]
		for i, info := range e.Inputs {
			c.inTensors = append(c.inTensors, tensor.Tensor{Name: info.Name, DataType: info.DataType, Shape: info.Shape, Data: c.ins[i]})
		}
		in.Inputs = c.inTensors
	}
	if code == http.StatusOK {
		in.Outputs = c.outs
	}
	s.opts.Observer.ObserveInference(in)
	*in = Inference{}
}
