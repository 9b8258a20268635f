// Package api is the agent's local HTTP inference API: the Open Inference
// Protocol v2 (KServe/Triton REST, with the binary tensor data extension),
// TF Serving's REST predict and status calls, health, metadata, Prometheus
// metrics, agent status and model reload (Triton's repository extension).
//
// It binds to loopback by default; a bearer token, a per-client rate limit,
// body limits and a per-request timeout protect it. Bad input gets a 4xx
// with {"error": "..."}, overload a 503 with Retry-After. The package has no
// cgo: it runs models through the Backend interface. Other transports (the
// gRPC server, agent/grpcapi) run their requests through the same path with
// Server.StartCall.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/internal/ratelimit"
)

// Backend runs the served models; serving.Registry implements it. Safe for
// concurrent use.
type Backend interface {
	// List returns the served models.
	List() []catalog.Entry
	// Lookup returns the model serving name, at version or, for 0, the
	// current one; errors wrap catalog.ErrModelNotFound/ErrVersionNotFound.
	Lookup(name string, version int64) (catalog.Entry, error)
	// Infer runs a model: prepare returns inputs for the instance that will
	// run, in signature order (it may be called again if a swap intervenes);
	// emit receives each output, valid only during the call. Errors wrap the
	// catalog sentinels.
	Infer(ctx context.Context, name string, version int64,
		prepare func(catalog.Entry) ([][]byte, error), emit func(i int, data []byte) error,
	) (catalog.Entry, catalog.Timing, error)
}

// Reloader reloads models from where they came from (files, the model
// store). Optional: without it the repository endpoints answer 501.
type Reloader interface {
	// Reload reloads every model, or only name when it is not empty.
	Reload(ctx context.Context, name string) error
	// Unload stops serving name.
	Unload(name string) error
}

// Options configure a Server. Zero values get the documented defaults.
type Options struct {
	// Listen is host:port or unix:/path; default 127.0.0.1:8480.
	Listen   string
	Backend  Backend
	Reloader Reloader
	// MaxBodyBytes bounds request bodies (413 beyond); default 64 MiB.
	MaxBodyBytes int64
	// RequestTimeout bounds one inference, queueing included; default 30s.
	RequestTimeout time.Duration
	// DrainTimeout bounds the wait for requests in flight at shutdown;
	// default 10s.
	DrainTimeout time.Duration
	// Token, when set, is required as "Authorization: Bearer <token>" on
	// every endpoint but /v2/health/*.
	Token string
	// RateLimit per client address in requests/second, with RateBurst;
	// 0 disables it.
	RateLimit float64
	RateBurst int
	// Registerer receives the API's metrics; nil makes a private registry
	// served on /metrics.
	Registry *prometheus.Registry
	// Observer, if set, hears of every answered inference request.
	Observer Observer
	Logger   *slog.Logger
	// Version is reported by GET /v2 and /agent/status.
	Version string
}

// Server serves the API on one listener.
type Server struct {
	opts    Options
	log     *slog.Logger
	ln      net.Listener
	srv     *http.Server
	metrics *metrics
	limiter *ratelimit.PerKey
	started time.Time

	ready    atomic.Bool
	draining atomic.Bool
}

// New binds the listener (so a port in use fails here, not later) and
// prepares the server; Run serves.
func New(opts Options) (*Server, error) {
	if opts.Backend == nil {
		return nil, errors.New("api: Options.Backend is required")
	}
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:8480"
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 64 << 20
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 30 * time.Second
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	if opts.Version == "" {
		opts.Version = "dev"
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	ln, err := listen(opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("api: listen %s: %w", opts.Listen, err)
	}
	s := &Server{opts: opts, log: log, ln: ln, started: time.Now()}
	s.metrics = newMetrics(opts.Registry, opts.Backend, opts.Version)
	if opts.RateLimit > 0 {
		s.limiter = ratelimit.New(opts.RateLimit, opts.RateBurst, nil)
	}
	s.srv = &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return s, nil
}

func listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		// A socket file left by a previous run would make Listen fail.
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(path)
		}
		return net.Listen("unix", path)
	}
	return net.Listen("tcp", addr)
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// SetReady marks the agent ready (or not) for /v2/health/ready; the daemon
// sets it once its models are loaded.
func (s *Server) SetReady(v bool) { s.ready.Store(v) }

// Ready reports what SetReady last set.
func (s *Server) Ready() bool { return s.ready.Load() }

// Run serves until ctx is cancelled, then stops accepting, lets requests in
// flight finish within DrainTimeout, and returns nil on a clean drain.
func (s *Server) Run(ctx context.Context) error {
	s.srv.BaseContext = func(net.Listener) context.Context { return context.WithoutCancel(ctx) }
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("api: %w", err)
	case <-ctx.Done():
	}
	s.draining.Store(true)
	drain, cancel := context.WithTimeout(context.Background(), s.opts.DrainTimeout)
	defer cancel()
	err := s.srv.Shutdown(drain)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("api: %w", serr)
	}
	if err != nil {
		s.srv.Close()
		return fmt.Errorf("api: drain: %w", err)
	}
	return nil
}
