// Package daemon is the one place that wires the agent together: it turns a
// config into the serving registry, the HTTP API and (as they land) the
// model store, telemetry and the updater, and runs them under one context.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/agent/api"
	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/config"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/sdnotify"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/agent/stream"
	"github.com/outpost-edge/outpost/agent/telemetry"
	"github.com/outpost-edge/outpost/agent/updater"
	"github.com/outpost-edge/outpost/agent/version"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

// Agent is the running daemon's parts.
type Agent struct {
	cfg      config.Config
	log      *slog.Logger
	registry *serving.Registry
	api      *api.Server
	grpc     listener         // nil unless grpc is on in the config
	store    *store.Store     // nil without a data dir
	link     *fleetlink.Link  // the device's one MQTT connection; nil without a fleet
	queue    *telemetry.Queue // nil without a data dir or with telemetry off
	ulink    *updater.Link    // nil without a fleet or a data dir
	updater  *updater.Updater // nil when ulink is
	streams  []*stream.Stream

	started       time.Time
	counter       *requestCounter
	statusChanged chan struct{} // poked when the status should go out
	// updateStatus, if set, reports the updater's current or last update.
	updateStatus func() *protocol.UpdateStatus

	mu     sync.Mutex // guards models
	models map[string]config.Model
}

// New checks the config, binds the API's listener and prepares the
// registry. It loads no model yet: Run does, so a slow load never delays a
// port-in-use error.
func New(cfg config.Config, log *slog.Logger) (*Agent, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	chain := delegateChain(cfg.Delegates)
	a := &Agent{cfg: cfg, log: log, models: map[string]config.Model{}, started: time.Now(),
		counter: &requestCounter{traffic: updater.NewTrafficCounter()}, statusChanged: make(chan struct{}, 1)}
	for _, m := range cfg.Models {
		a.models[m.Name] = m
	}
	if cfg.DataDir != "" {
		st, err := store.OpenDataDir(cfg.DataDir, store.Options{Logger: log})
		if err != nil {
			return nil, err
		}
		a.store = st
	}
	rt := runtime.Options{
		Workers:   cfg.Workers,
		Threads:   cfg.Threads,
		MaxQueue:  cfg.Queue,
		Delegates: chain,
		Inputs:    inputSpecs(cfg.Inputs),
		Logger:    log.With("component", "runtime"),
	}
	token, err := readSecret("api token", cfg.API.TokenFile)
	if err != nil {
		return nil, err
	}
	if a.link, err = newFleetLink(cfg, log); err != nil {
		return nil, err
	}
	if err := a.newUpdaterLink(cfg, log); err != nil {
		return nil, err
	}
	if a.queue, err = newQueue(cfg, a.link, a.servingModel, log); err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	refs := newReferences(a.store)
	sopts := serving.Options{Runtime: rt, Logger: log.With("component", "serving")}
	if a.queue != nil {
		reg.MustRegister(a.queue.Collector())
		a.counter.next = inferenceTelemetry{q: a.queue, refs: refs}
		trials := trialTelemetry{q: a.queue, refs: refs}
		sopts.ShadowObserver, sopts.CanaryObserver = trials, trials
	}
	a.registry = serving.New(sopts)
	reg.MustRegister(a.registry.Collector())
	if err := a.newUpdater(cfg, rt, reg, log); err != nil {
		return nil, err
	}
	if a.updater != nil {
		refs.staged = a.updater.StagedManifest // a candidate's reference profile
	}
	if a.streams, err = newStreams(cfg, a.registry, a.counter.traffic, a.queue, refs, log); err != nil {
		return nil, err
	}
	if len(a.streams) > 0 {
		reg.MustRegister(stream.Collector(a.streams...))
	}
	a.api, err = api.New(api.Options{
		Listen:         cfg.Listen,
		Backend:        a.registry,
		Reloader:       a,
		MaxBodyBytes:   cfg.API.MaxBodyBytes,
		RequestTimeout: cfg.API.RequestTimeout,
		DrainTimeout:   cfg.API.DrainTimeout,
		Token:          token,
		RateLimit:      cfg.API.RateLimit,
		RateBurst:      cfg.API.RateBurst,
		Registry:       reg,
		Observer:       a.counter,
		Logger:         log.With("component", "api"),
		Version:        version.Version,
	})
	if err != nil {
		return nil, err
	}
	if cfg.GRPC.On() {
		if a.grpc, err = newGRPC(cfg, a.api, log.With("component", "grpc")); err != nil {
			return nil, err
		}
	}
	return a, nil
}

func inputSpecs(in map[string]config.Input) map[string]runtime.InputSpec {
	out := make(map[string]runtime.InputSpec, len(in))
	for name, s := range in {
		out[name] = runtime.InputSpec{Shape: s.Shape, Warm: s.Warm}
	}
	return out
}

func delegateChain(ds []config.Delegate) []runtime.DelegateSpec {
	if len(ds) == 0 {
		return nil // the runtime's default: XNNPACK, then CPU
	}
	out := make([]runtime.DelegateSpec, len(ds))
	for i, d := range ds {
		out[i] = runtime.DelegateSpec{Kind: runtime.DelegateKind(d.Kind), Path: d.Path, Options: d.Options}
	}
	return out
}

// readSecret reads a token or password kept in a file (what names it in
// errors), without the line end editors leave; "" when path is empty.
func readSecret(what, path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", what, err)
	}
	s := strings.TrimRight(string(b), " \r\n")
	if s == "" {
		return "", fmt.Errorf("%s: %s is empty", what, path)
	}
	return s, nil
}

// listener is an optional server beside the HTTP API (the gRPC one).
type listener interface {
	// Run serves until ctx is cancelled, drains, and returns nil then.
	Run(ctx context.Context) error
	Addr() net.Addr
}

// Addr is where the API listens.
func (a *Agent) Addr() string { return a.api.Addr().String() }

// GRPCAddr is where the gRPC listener listens; "" when it is off.
func (a *Agent) GRPCAddr() string {
	if a.grpc == nil {
		return ""
	}
	return a.grpc.Addr().String()
}

// Run loads the configured models, marks the API ready, and serves until
// ctx is cancelled; SIGHUP reloads the models. A model that fails to load is
// logged and skipped, so one bad file does not take the others down.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// SIGHUP is caught before the first load can mark the API ready: one
	// sent as soon as the agent answers ready must reload, not kill the
	// process (or vanish, when started with SIGHUP ignored). One arriving
	// during the first load waits in the channel and reloads after it.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// Telemetry outlives the API's drain, so the last requests are counted,
	// and stops when Run returns.
	stopTelemetry := a.runTelemetry()
	defer stopTelemetry()
	// The listeners: each reports once, when it has drained or failed.
	errc := make(chan error, 2)
	servers := 1
	go func() { errc <- a.api.Run(ctx) }()
	if a.grpc != nil {
		servers++
		go func() { errc <- a.grpc.Run(ctx) }()
	}
	a.reload(ctx, "")
	// Streams start once the models are loaded, and stop before the
	// registry closes.
	stopStreams := a.runStreams(ctx)
	// stop waits for the listeners still running (they drain once ctx is
	// cancelled), stops the streams, then unloads the models.
	stop := func(err error) error {
		sdnotify.Stopping()
		cancel()
		errs := []error{err}
		for range servers - 1 {
			errs = append(errs, <-errc)
		}
		stopStreams()
		a.registry.Close()
		return errors.Join(errs...)
	}
	a.log.Info("serving", "listen", a.Addr(), "grpc", a.GRPCAddr(), "models", len(a.registry.List()), "version", version.Version)
	// systemd (Type=notify) learns we serve once the first load is done,
	// whatever its outcome: a broken model file must not fail the unit.
	if err := sdnotify.Ready(); err != nil {
		a.log.Warn("sd_notify READY", "err", err)
	}
	var watchdog <-chan time.Time
	if every, err := sdnotify.WatchdogInterval(); err != nil {
		a.log.Warn("systemd watchdog", "err", err)
	} else if every > 0 {
		t := time.NewTicker(every / 2)
		defer t.Stop()
		watchdog = t.C
	}

	for {
		select {
		case <-watchdog:
			// The ping comes from the loop that also handles reloads, so
			// a wedged loop is restarted by systemd.
			sdnotify.Watchdog()
		case <-hup:
			a.log.Info("SIGHUP: reloading models")
			a.reload(ctx, "")
		case err := <-errc: // a listener stopped: drained after ctx ended, or failed
			return stop(err)
		case <-ctx.Done():
			return stop(<-errc) // the listeners drain first
		}
	}
}

// runTelemetry starts the fleet link, the updater and its link, and the
// queue, and returns the function that stops them and waits until they are
// done (the queue writes its last aggregates on the way out).
func (a *Agent) runTelemetry() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if a.link != nil {
		wg.Go(func() {
			if err := a.link.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("fleet link stopped", "err", err)
			}
		})
	}
	if a.ulink != nil {
		wg.Go(func() { a.runStatus(ctx) })
		wg.Go(func() {
			if err := a.ulink.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("updater link stopped", "err", err)
			}
		})
	}
	if a.updater != nil {
		wg.Go(func() {
			if err := a.updater.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("updater stopped", "err", err)
			}
		})
	}
	if a.queue != nil {
		wg.Go(func() {
			if err := a.queue.Run(ctx); err != nil && ctx.Err() == nil {
				a.log.Error("telemetry queue stopped", "err", err)
			}
		})
	}
	return func() {
		cancel()
		wg.Wait()
		if a.updater != nil {
			a.updater.Close()
		}
	}
}

// reload runs Reload, logs what failed and updates readiness.
func (a *Agent) reload(ctx context.Context, name string) {
	if err := a.Reload(ctx, name); err != nil {
		a.log.Error("some models failed to load", "err", err)
	}
}

// updateReady marks the API ready when every model the agent should serve
// (configured or installed) is being served: a broken file leaves it not
// ready, as Triton's strict readiness does, while the models that loaded
// serve on. With no model at all, the agent is ready.
func (a *Agent) updateReady() {
	served := map[string]bool{}
	for _, e := range a.registry.List() {
		served[e.Name] = true
	}
	wanted := a.wanted()
	ready := true
	for _, n := range wanted {
		if !served[n] {
			ready = false
			a.log.Warn("not ready: model is not served", "model", n)
		}
	}
	a.api.SetReady(ready)
	a.statusChange()
	sdnotify.Status(fmt.Sprintf("serving %d of %d models", len(served), len(wanted)))
}

// wanted names every model the agent should serve.
func (a *Agent) wanted() []string {
	set := map[string]bool{}
	a.mu.Lock()
	for n := range a.models {
		set[n] = true
	}
	a.mu.Unlock()
	if a.store != nil {
		names, _ := a.store.Names()
		for _, n := range names {
			set[n] = true
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	return out
}

// Reload (api.Reloader) loads every model again, or only name: the current
// version of each model installed in the store, then the configured model
// files (a configured name that the store also holds is served from the
// store, which the updater keeps). Models that did not change stay as they
// are; their requests never notice.
func (a *Agent) Reload(ctx context.Context, name string) error {
	var errs []error
	fromStore := map[string]bool{}
	if a.store != nil {
		names, err := a.store.Names()
		if err != nil {
			errs = append(errs, err)
		}
		for _, n := range names {
			if name != "" && n != name {
				continue
			}
			fromStore[n] = true
			data, e, err := a.store.Load(n)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if _, err := a.registry.Load(ctx, n, e.Manifest.Version, data, "store"); err != nil {
				errs = append(errs, err)
			}
		}
	}
	a.mu.Lock()
	var todo []config.Model
	for _, m := range a.models {
		if (name == "" || m.Name == name) && !fromStore[m.Name] {
			todo = append(todo, m)
		}
	}
	a.mu.Unlock()
	if name != "" && len(todo) == 0 && !fromStore[name] {
		return fmt.Errorf("model %q is neither configured nor installed: %w", name, catalog.ErrModelNotFound)
	}
	for _, m := range todo {
		path := m.Path
		if !filepath.IsAbs(path) && a.cfg.DataDir != "" {
			path = filepath.Join(a.cfg.DataDir, path)
		}
		if _, err := a.registry.LoadFile(ctx, m.Name, m.Version, path); err != nil {
			errs = append(errs, err)
		}
	}
	a.updateReady()
	return errors.Join(errs...)
}

// Unload (api.Reloader) stops serving name until the next reload. The
// agent stays ready: the model was let go on purpose.
func (a *Agent) Unload(name string) error { return a.registry.Unload(name) }
