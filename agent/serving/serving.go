// Package serving keeps the models the agent serves: one hot-swappable slot
// per model name, each holding a runtime.Model with its catalog entry. A new
// version is loaded and warmed beside the old one and swapped in atomically;
// calls in flight finish on the old one, so a swap fails no request.
package serving

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/runtime"
)

// Options configure a Registry. The zero value runs models with the
// runtime's defaults and logs nothing.
type Options struct {
	Runtime runtime.Options
	// CandidateWorkers is the size of a candidate's own interpreter pool
	// (default: Runtime.Workers, as the serving version's). A promoted
	// candidate serves with that pool as it is, and a canary's share must
	// not queue for fewer interpreters than the serving version has, or
	// its latency would be judged on the pool rather than the model; a
	// shadow uses only ShadowWorkers of them at once.
	CandidateWorkers int
	// ShadowQueue bounds the copies waiting for a candidate in shadow
	// (default 64); a full queue drops the copy. ShadowWorkers drain it
	// (default 1, so copies take at most one core from the serving
	// version).
	ShadowQueue, ShadowWorkers int
	// ShadowObserver, if set, hears of every copy sent to a candidate in
	// shadow.
	ShadowObserver ShadowObserver
	// CanaryObserver, if set, hears of every request a candidate in canary
	// failed and the serving version answered instead.
	CanaryObserver CanaryObserver
	Logger         *slog.Logger
}

// Registry is the set of served models. It is safe for concurrent use.
type Registry struct {
	opts Options
	log  *slog.Logger

	mu     sync.RWMutex // guards slots and trials (the maps, not their contents)
	slots  map[string]*runtime.Slot[catalog.Entry]
	trials map[string]*trial // candidates on trial beside slots (trial.go)

	loadMu sync.Mutex // serializes loads and trials, so two versions never race to swap

	shadowCopies    *prometheus.CounterVec
	canaryFallbacks *prometheus.CounterVec
}

// New returns an empty registry.
func New(opts Options) *Registry {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.ShadowQueue <= 0 {
		opts.ShadowQueue = 64
	}
	if opts.ShadowWorkers <= 0 {
		opts.ShadowWorkers = 1
	}
	return &Registry{opts: opts, log: log, slots: map[string]*runtime.Slot[catalog.Entry]{}, trials: map[string]*trial{},
		shadowCopies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_shadow_copies_total",
			Help: "Copies of live requests for a candidate in shadow, by model, candidate version and result: compared (both answered), failed (the candidate did not answer) or dropped (its queue was full).",
		}, []string{"model", "version", "result"}),
		canaryFallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_canary_fallbacks_total",
			Help: "Requests a candidate in canary failed (after reading the request) that the serving version answered instead, by model and candidate version.",
		}, []string{"model", "version"})}
}

// Digest is the catalog digest of model bytes.
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// LoadFile reads a model file and loads it as name at version.
func (r *Registry) LoadFile(ctx context.Context, name string, version int64, path string) (catalog.Entry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return catalog.Entry{}, fmt.Errorf("serving: %s: %w", name, err)
	}
	return r.Load(ctx, name, version, data, path)
}

// Load builds the model, warms every interpreter with one run, and swaps it
// in as name. When the same version with the same digest is already serving
// it does nothing; when it is name's candidate on trial, that candidate is
// swapped in as it is (promoted), without a second load. source says where
// the model came from (for status pages).
func (r *Registry) Load(ctx context.Context, name string, version int64, data []byte, source string) (catalog.Entry, error) {
	if version <= 0 {
		return catalog.Entry{}, fmt.Errorf("serving: %s: version %d is not a positive integer", name, version)
	}
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	digest := Digest(data)
	slot := r.slot(name, true)
	if _, cur, ok := slot.Current(); ok && cur.Version == version && cur.Digest == digest {
		return cur, nil
	}
	if e, ok := r.promote(name, version, digest); ok {
		return e, nil
	}
	start := time.Now()
	m, err := runtime.Load(data, r.opts.Runtime)
	if err != nil {
		r.dropIfEmpty(name)
		return catalog.Entry{}, fmt.Errorf("serving: %s v%d: %w", name, version, err)
	}
	if err := warm(ctx, m); err != nil {
		m.Close()
		r.dropIfEmpty(name)
		return catalog.Entry{}, fmt.Errorf("serving: %s v%d: warm-up: %w", name, version, err)
	}
	e := r.entry(name, version, digest, m, source)
	old, replaced := slot.Swap(m, e)
	if replaced {
		r.log.Info("model swapped", "model", name, "from", old.Version, "to", version, "digest", digest, "delegate", e.Delegate, "took", time.Since(start))
	} else {
		r.log.Info("model loaded", "model", name, "version", version, "digest", digest, "delegate", e.Delegate, "took", time.Since(start))
	}
	return e, nil
}

// entry describes model m loaded as name at version, and logs the
// delegates it could not use.
func (r *Registry) entry(name string, version int64, digest string, m *runtime.Model, source string) catalog.Entry {
	rep := m.Delegate()
	for _, f := range rep.Fallbacks {
		r.log.Warn("delegate skipped", "model", name, "version", version, "delegate", f.Delegate, "reason", f.Reason)
	}
	return catalog.Entry{
		Name: name, Version: version, Digest: digest,
		Inputs: m.Inputs(), Outputs: m.Outputs(), Runtime: m.RuntimeName(),
		Delegate: rep.Delegate, DelegatedNodes: rep.DelegatedNodes, TotalNodes: rep.TotalNodes,
		Workers: m.Workers(), Source: source, LoadedAt: time.Now(),
	}
}

// warm runs each worker once on the model's warm-up inputs (zeros, or what
// the configuration says for an ONNX input): XNNPACK packs weights on the
// first run, which must not land on a client's request.
func warm(ctx context.Context, m *runtime.Model) error {
	in := m.WarmInputs()
	for range m.Workers() {
		if _, err := m.InvokeFunc(ctx, in, func(int, []byte) error { return nil }, len(m.Outputs())); err != nil {
			return err
		}
	}
	return nil
}

func (r *Registry) slot(name string, create bool) *runtime.Slot[catalog.Entry] {
	r.mu.RLock()
	s := r.slots[name]
	r.mu.RUnlock()
	if s != nil || !create {
		return s
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s = r.slots[name]; s == nil {
		s = &runtime.Slot[catalog.Entry]{}
		r.slots[name] = s
	}
	return s
}

// served returns name's slot and its candidate on trial (nil without one),
// under one read lock: the per-request lookup.
func (r *Registry) served(name string) (*runtime.Slot[catalog.Entry], *trial) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.slots[name], r.trials[name]
}

func (r *Registry) dropIfEmpty(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.slots[name]; s != nil {
		if _, _, ok := s.Current(); !ok {
			delete(r.slots, name)
		}
	}
}

// Unload stops serving name (and its candidate, if any) once its calls in
// flight finish.
func (r *Registry) Unload(name string) error {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	r.endTrial(name)
	r.mu.Lock()
	s := r.slots[name]
	delete(r.slots, name)
	r.mu.Unlock()
	if s == nil {
		return fmt.Errorf("serving: %s: %w", name, catalog.ErrModelNotFound)
	}
	return s.Close()
}

// List returns the served models, sorted by name.
func (r *Registry) List() []catalog.Entry {
	r.mu.RLock()
	out := make([]catalog.Entry, 0, len(r.slots))
	for _, s := range r.slots {
		if _, e, ok := s.Current(); ok {
			out = append(out, e)
		}
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Lookup returns the entry serving name; version 0 means whichever is
// current. Errors wrap catalog.ErrModelNotFound or ErrVersionNotFound.
func (r *Registry) Lookup(name string, version int64) (catalog.Entry, error) {
	s, t := r.served(name)
	if s == nil {
		return catalog.Entry{}, fmt.Errorf("model %q: %w", name, catalog.ErrModelNotFound)
	}
	_, e, ok := s.Current()
	if !ok {
		return catalog.Entry{}, fmt.Errorf("model %q: %w", name, catalog.ErrModelNotFound)
	}
	if t != nil && version != 0 && version != e.Version && t.cfg.Load().Mode == Canary {
		if _, c, ok := t.slot.Current(); ok && c.Version == version {
			return c, nil // a canary answers requests for its version
		}
	}
	if version != 0 && version != e.Version {
		return catalog.Entry{}, fmt.Errorf("model %q version %d (serving %d): %w", name, version, e.Version, catalog.ErrVersionNotFound)
	}
	return e, nil
}

// Infer runs name (at version, or current for 0). prepare receives the entry
// of the model instance that will run (during a swap that can be the new
// one) and returns its inputs in signature order, each exactly the tensor's
// size; emit receives each output, valid only during the call. prepare may
// run more than once.
//
// With a candidate in canary, the candidate answers the requests its share
// takes (by ctx's routing key, routing.WithKey, else at random) and those
// that ask for its version; with one in shadow, a share of the requests the
// serving version answered are copied to it once they are answered.
func (r *Registry) Infer(ctx context.Context, name string, version int64,
	prepare func(catalog.Entry) ([][]byte, error), emit func(i int, data []byte) error,
) (catalog.Entry, catalog.Timing, error) {
	s, t := r.served(name)
	if s == nil {
		return catalog.Entry{}, catalog.Timing{}, fmt.Errorf("model %q: %w", name, catalog.ErrModelNotFound)
	}
	var used catalog.Entry
	var tm runtime.Timing
	var err error
	var tap *shadowTap
	if t != nil {
		var served, prepared bool
		if used, tm, prepared, served, err = r.canary(ctx, t, name, version, prepare, emit); served {
			theirs := prepared || errors.Is(err, runtime.ErrOverloaded)
			if err == nil || !theirs || version != 0 || ctx.Err() != nil {
				return used, catalog.Timing{Queue: tm.Queue, Invoke: tm.Invoke}, mapErr(name, err)
			}
			// The candidate failed on a request it could read (or its
			// pool was full): the serving version answers, and the
			// failure counts against the candidate (its telemetry),
			// never against the client.
			r.canaryFallbacks.WithLabelValues(used.Name, versionLabel(used.Version)).Inc()
			if r.opts.CanaryObserver != nil {
				r.opts.CanaryObserver.ObserveCanaryFailure(&CanaryFailure{Candidate: used, Err: mapErr(name, err), Invoke: tm.Invoke})
			}
		}
		if tap = r.tap(t); tap != nil {
			prepare, emit = tap.prepare(prepare), tap.emit(emit)
		}
	}
	err = s.Do(func(m *runtime.Model, e catalog.Entry) error {
		used = e
		if version != 0 && version != e.Version {
			return fmt.Errorf("model %q version %d (serving %d): %w", name, version, e.Version, catalog.ErrVersionNotFound)
		}
		in, err := prepare(e)
		if err != nil {
			return err
		}
		tm, err = m.InvokeFunc(ctx, in, emit, len(e.Outputs))
		return err
	})
	if tap != nil {
		if err == nil {
			r.send(tap, tm.Invoke)
		} else {
			tap.t.free.Put(tap.c)
		}
	}
	return used, catalog.Timing{Queue: tm.Queue, Invoke: tm.Invoke}, mapErr(name, err)
}

// mapErr wraps the runtime's errors in the catalog's sentinels.
func mapErr(name string, err error) error {
	switch {
	case errors.Is(err, runtime.ErrEmpty):
		err = fmt.Errorf("model %q: %w", name, catalog.ErrModelNotFound)
	case errors.Is(err, runtime.ErrOverloaded):
		err = fmt.Errorf("model %q: %w: %w", name, catalog.ErrOverloaded, err)
	case errors.Is(err, runtime.ErrInput):
		err = fmt.Errorf("model %q: %w: %w", name, catalog.ErrBadInput, err)
	}
	return err
}

// Waiting is the number of calls queued for an interpreter of name.
func (r *Registry) Waiting(name string) int {
	if s := r.slot(name, false); s != nil {
		if m, _, ok := s.Current(); ok {
			return m.Waiting()
		}
	}
	return 0
}

// Close unloads every model and candidate.
func (r *Registry) Close() error {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	r.mu.Lock()
	names := make([]string, 0, len(r.trials))
	for n := range r.trials {
		names = append(names, n)
	}
	r.mu.Unlock()
	for _, n := range names {
		r.endTrial(n)
	}
	r.mu.Lock()
	slots := r.slots
	r.slots = map[string]*runtime.Slot[catalog.Entry]{}
	r.mu.Unlock()
	var errs []error
	for _, s := range slots {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}

// Collector reports the shadow copies (outpost_shadow_copies_total) and the
// candidates on trial (outpost_trial_percent).
func (r *Registry) Collector() prometheus.Collector { return collector{r} }

type collector struct{ r *Registry }

var trialDesc = prometheus.NewDesc("outpost_trial_percent",
	"Candidates on trial beside a model's serving version: the share of requests they answer (canary) or get copies of (shadow).",
	[]string{"model", "version", "mode"}, nil)

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	c.r.shadowCopies.Describe(ch)
	c.r.canaryFallbacks.Describe(ch)
	ch <- trialDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	c.r.shadowCopies.Collect(ch)
	c.r.canaryFallbacks.Collect(ch)
	for _, t := range c.r.Trials() {
		ch <- prometheus.MustNewConstMetric(trialDesc, prometheus.GaugeValue, t.Trial.Percent, t.Entry.Name, versionLabel(t.Entry.Version), string(t.Trial.Mode))
	}
}

func versionLabel(v int64) string { return strconv.FormatInt(v, 10) }

func sortTrials(ts []TrialStatus) {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Entry.Name < ts[j].Entry.Name })
}
