package serving

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/routing"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/protocol"
)

// A candidate on trial sits beside a model's serving version (docs/PROTOCOL.md,
// Trials): loaded and warmed with its own small pool, it either answers a
// share of the requests (canary) or gets copies of a share of them after the
// serving version answered (shadow), through a bounded queue drained by its
// own workers, so a slow candidate never holds up a client. A copy never runs
// on the serving version's interpreters.

// TrialMode says how a candidate meets live traffic.
type TrialMode string

// Trial modes.
const (
	Shadow TrialMode = "shadow"
	Canary TrialMode = "canary"
)

// Trial is a candidate's mode and share of the requests, in (0, 100].
type Trial struct {
	Mode    TrialMode
	Percent float64
}

func (t Trial) validate() error {
	if (t.Mode != Shadow && t.Mode != Canary) || !(t.Percent > 0 && t.Percent <= 100) {
		return fmt.Errorf("serving: trial %s %v%%: want shadow or canary above 0 and at most 100%%", t.Mode, t.Percent)
	}
	return nil
}

// ErrNoServingVersion: a candidate needs a serving version of its model to
// stand beside.
var ErrNoServingVersion = errors.New("serving: trial needs a serving version")

// ErrNoTrial: the model has no candidate (of that version) on trial.
var ErrNoTrial = errors.New("serving: no candidate on trial")

// ShadowObserver hears of every copy made for a candidate in shadow: its
// comparison when the candidate answered it, its error when it failed, or
// that it was dropped because the queue was full. ObserveShadow runs on the
// shadow worker's goroutine (on the client request's goroutine for a drop)
// and must not block; the result and its tensors are valid only during the
// call.
type ShadowObserver interface {
	ObserveShadow(*ShadowResult)
}

// CanaryObserver hears of every request a candidate in canary failed after
// reading it, which the serving version then answered (Registry.Infer):
// the client saw the serving version's answer, the candidate's failure
// belongs in its telemetry. It runs on the request's goroutine and must not
// block.
type CanaryObserver interface {
	ObserveCanaryFailure(*CanaryFailure)
}

// CanaryFailure is a candidate's failure on a canary request.
type CanaryFailure struct {
	Candidate catalog.Entry
	Err       error         // wraps the catalog's sentinels (ErrOverloaded, ...)
	Invoke    time.Duration // the candidate's run, when it got that far
}

// ShadowResult is one copy of a live request sent to a candidate in shadow.
type ShadowResult struct {
	// Baseline is the serving version that answered the client, Candidate
	// the version on trial.
	Baseline, Candidate catalog.Entry
	// Dropped: the queue was full and no copy was made; nothing else is
	// set.
	Dropped bool
	// Err is why the candidate did not answer (nil when it did).
	Err error
	// BaselineInvoke and CandidateInvoke are the two versions' run times
	// on this request (the model's invoke, without waiting for an
	// interpreter), paired.
	BaselineInvoke, CandidateInvoke time.Duration
	// Inputs and Outputs are the candidate's, in its signature's order
	// (Outputs nil on an error).
	Inputs, Outputs []tensor.Tensor
	// Agreement compares each of the candidate's outputs with the serving
	// version's output of the same name (nil on an error).
	Agreement []OutputAgreement
}

// TrialStatus is a candidate on trial, for status pages and metrics.
type TrialStatus struct {
	Entry catalog.Entry
	Trial Trial
}

// trial is one model's candidate.
type trial struct {
	slot    runtime.Slot[catalog.Entry]
	cfg     atomic.Pointer[Trial]
	queue   chan *shadowCopy
	free    sync.Pool // *shadowCopy
	stopped chan struct{}
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// shadowCopy is a live request's inputs and the serving version's outputs,
// waiting for the candidate.
type shadowCopy struct {
	baseline catalog.Entry
	invoke   time.Duration
	ins      [][]byte // in the baseline's input order
	outs     [][]byte // in the baseline's output order
}

func (t *trial) getCopy() *shadowCopy {
	if c, ok := t.free.Get().(*shadowCopy); ok {
		return c
	}
	return &shadowCopy{}
}

// StartTrial puts data as name's candidate at version beside the serving
// version, in trial t, and returns its entry: loaded with its own pool
// (Options.CandidateWorkers interpreters) and warmed before it sees a
// request. When the same version and digest is already on trial, only its
// mode and share change, at once. Another candidate of name is unloaded
// first. Errors wrap ErrNoServingVersion when name serves nothing.
func (r *Registry) StartTrial(ctx context.Context, name string, version int64, data []byte, t Trial) (catalog.Entry, error) {
	if err := t.validate(); err != nil {
		return catalog.Entry{}, err
	}
	if version <= 0 {
		return catalog.Entry{}, fmt.Errorf("serving: %s: version %d is not a positive integer", name, version)
	}
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	s := r.slot(name, false)
	if s == nil {
		return catalog.Entry{}, fmt.Errorf("%w: %s", ErrNoServingVersion, name)
	}
	if _, _, ok := s.Current(); !ok {
		return catalog.Entry{}, fmt.Errorf("%w: %s", ErrNoServingVersion, name)
	}
	digest := Digest(data)
	if old := r.trialOf(name); old != nil {
		if _, e, ok := old.slot.Current(); ok && e.Version == version && e.Digest == digest {
			old.cfg.Store(&t)
			r.log.Info("trial changed", "model", name, "version", version, "mode", t.Mode, "percent", t.Percent)
			return e, nil
		}
		r.endTrial(name)
	}
	start := time.Now()
	opts := r.opts.Runtime
	if r.opts.CandidateWorkers > 0 {
		opts.Workers = r.opts.CandidateWorkers
	}
	m, err := runtime.Load(data, opts)
	if err != nil {
		return catalog.Entry{}, fmt.Errorf("serving: %s v%d candidate: %w", name, version, err)
	}
	if err := warm(ctx, m); err != nil {
		m.Close()
		return catalog.Entry{}, fmt.Errorf("serving: %s v%d candidate: warm-up: %w", name, version, err)
	}
	e := r.entry(name, version, digest, m, "trial")
	tr := &trial{queue: make(chan *shadowCopy, r.opts.ShadowQueue), stopped: make(chan struct{})}
	tr.slot.Swap(m, e)
	tr.cfg.Store(&t)
	wctx, cancel := context.WithCancel(context.Background())
	tr.cancel = cancel
	for range r.opts.ShadowWorkers {
		tr.wg.Go(func() { r.shadowWorker(wctx, tr) })
	}
	r.mu.Lock()
	r.trials[name] = tr
	r.mu.Unlock()
	r.log.Info("candidate on trial", "model", name, "version", version, "digest", digest, "mode", t.Mode, "percent", t.Percent, "took", time.Since(start))
	return e, nil
}

// EndTrial unloads name's candidate once its calls in flight finish; the
// serving version never stops. It does nothing when there is none.
func (r *Registry) EndTrial(name string) {
	r.loadMu.Lock()
	defer r.loadMu.Unlock()
	r.endTrial(name)
}

// endTrial is EndTrial with loadMu held.
func (r *Registry) endTrial(name string) {
	r.mu.Lock()
	t := r.trials[name]
	delete(r.trials, name)
	r.mu.Unlock()
	if t == nil {
		return
	}
	t.stop()
	_, e, _ := t.slot.Current()
	t.slot.Close()
	r.log.Info("candidate unloaded", "model", name, "version", e.Version)
}

// stop ends t's shadow workers and waits for them.
func (t *trial) stop() {
	t.cancel()
	close(t.stopped)
	t.wg.Wait()
}

// promote swaps name's candidate at version and digest in as the serving
// version, without loading it again; ok is false when there is no such
// candidate. loadMu is held.
func (r *Registry) promote(name string, version int64, digest string) (catalog.Entry, bool) {
	t := r.trialOf(name)
	if t == nil {
		return catalog.Entry{}, false
	}
	if _, e, ok := t.slot.Current(); !ok || e.Version != version || e.Digest != digest {
		return catalog.Entry{}, false
	}
	r.mu.Lock()
	delete(r.trials, name)
	r.mu.Unlock()
	t.stop()
	// Canary calls in flight on the candidate finish on it: it is not
	// closed, it moves.
	m, e, ok := t.slot.Release()
	if !ok {
		return catalog.Entry{}, false
	}
	e.Source = "store"
	old, _ := r.slot(name, true).Swap(m, e)
	r.log.Info("candidate promoted", "model", name, "from", old.Version, "to", version, "digest", digest)
	return e, true
}

// Trials lists the candidates on trial, sorted by model name.
func (r *Registry) Trials() []TrialStatus {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []TrialStatus
	for _, t := range r.trials {
		if _, e, ok := t.slot.Current(); ok {
			out = append(out, TrialStatus{Entry: e, Trial: *t.cfg.Load()})
		}
	}
	sortTrials(out)
	return out
}

func (r *Registry) trialOf(name string) *trial {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.trials[name]
}

// canary runs the request on name's candidate when the canary's share takes
// it (or it asked for the candidate's version). served is false when the
// serving version is to answer: no canary, not this request's arm, or a
// candidate that went away meanwhile; prepared says that the request's
// inputs were read (a failure after that is the candidate's, not the
// request's).
func (r *Registry) canary(ctx context.Context, t *trial, name string, version int64,
	prepare func(catalog.Entry) ([][]byte, error), emit func(i int, data []byte) error,
) (used catalog.Entry, tm runtime.Timing, prepared, served bool, err error) {
	cfg := t.cfg.Load()
	if cfg.Mode != Canary {
		return used, tm, false, false, nil
	}
	_, cand, ok := t.slot.Current()
	if !ok {
		return used, tm, false, false, nil
	}
	switch {
	case version == cand.Version:
	case version == 0 && routing.Canary(ctx, name, cfg.Percent):
	default:
		return used, tm, false, false, nil
	}
	used = cand // also when its pool is full and Do runs nothing
	err = t.slot.Do(func(m *runtime.Model, e catalog.Entry) error {
		used = e
		in, err := prepare(e)
		if err != nil {
			return err
		}
		prepared = true
		tm, err = m.InvokeFunc(ctx, in, emit, len(e.Outputs))
		return err
	})
	if errors.Is(err, runtime.ErrEmpty) && version == 0 {
		return catalog.Entry{}, runtime.Timing{}, false, false, nil // ended meanwhile
	}
	return used, tm, prepared, true, err
}

// shadowTap decides whether a request served by the serving version is
// copied to name's candidate and, if so, keeps what the copy needs: the
// inputs prepare returned (wrapped) and each output emit sees.
type shadowTap struct {
	t   *trial
	c   *shadowCopy
	ins [][]byte
}

func (r *Registry) tap(t *trial) *shadowTap {
	cfg := t.cfg.Load()
	if cfg.Mode != Shadow || !routing.Sample(cfg.Percent) {
		return nil
	}
	return &shadowTap{t: t, c: t.getCopy()}
}

func (s *shadowTap) prepare(prepare func(catalog.Entry) ([][]byte, error)) func(catalog.Entry) ([][]byte, error) {
	return func(e catalog.Entry) ([][]byte, error) {
		in, err := prepare(e)
		s.ins = in
		s.c.baseline = e
		s.c.outs = s.c.outs[:0]
		return in, err
	}
}

func (s *shadowTap) emit(emit func(i int, data []byte) error) func(i int, data []byte) error {
	return func(i int, data []byte) error {
		for len(s.c.outs) <= i {
			s.c.outs = append(s.c.outs, nil)
		}
		s.c.outs[i] = append(s.c.outs[i][:0], data...)
		return emit(i, data)
	}
}

// send queues the copy once the serving version answered; a full queue
// drops it (counted, and told to the observer).
func (r *Registry) send(s *shadowTap, invoke time.Duration) {
	c := s.c
	c.invoke = invoke
	for len(c.ins) < len(s.ins) {
		c.ins = append(c.ins, nil)
	}
	c.ins = c.ins[:len(s.ins)]
	for i, b := range s.ins {
		c.ins[i] = append(c.ins[i][:0], b...)
	}
	select {
	case <-s.t.stopped:
		s.t.free.Put(c)
		return
	default:
	}
	select {
	case s.t.queue <- c:
	default:
		s.t.free.Put(c)
		_, cand, ok := s.t.slot.Current()
		if !ok {
			return // the trial ended meanwhile
		}
		r.shadowCopies.WithLabelValues(cand.Name, versionLabel(cand.Version), "dropped").Inc()
		if r.opts.ShadowObserver != nil {
			r.opts.ShadowObserver.ObserveShadow(&ShadowResult{Baseline: c.baseline, Candidate: cand, Dropped: true})
		}
	}
}

// shadowWorker runs copies on the candidate until the trial stops.
func (r *Registry) shadowWorker(ctx context.Context, t *trial) {
	var w shadowWork
	for {
		select {
		case <-t.stopped:
			return
		case c := <-t.queue:
			r.runCopy(ctx, t, c, &w)
			t.free.Put(c)
		}
	}
}

// shadowWork holds one worker's buffers.
type shadowWork struct {
	ins, outs   [][]byte
	inT, outT   []tensor.Tensor
	agreement   []OutputAgreement
	base, other []float64
}

func (r *Registry) runCopy(ctx context.Context, t *trial, c *shadowCopy, w *shadowWork) {
	var cand catalog.Entry
	var tm runtime.Timing
	err := t.slot.Do(func(m *runtime.Model, e catalog.Entry) error {
		cand = e
		var err error
		if w.ins, err = matchInputs(c.baseline, e, c.ins, w.ins); err != nil {
			return err
		}
		w.outs = w.outs[:0]
		tm, err = m.InvokeFunc(ctx, w.ins, func(i int, data []byte) error {
			for len(w.outs) <= i {
				w.outs = append(w.outs, nil)
			}
			w.outs = w.outs[:i+1]
			w.outs[i] = append(w.outs[i][:0], data...)
			return nil
		}, len(e.Outputs))
		return err
	})
	if errors.Is(err, runtime.ErrEmpty) || (err != nil && ctx.Err() != nil) {
		return // the trial ended
	}
	res := ShadowResult{Baseline: c.baseline, Candidate: cand, Err: err, BaselineInvoke: c.invoke, CandidateInvoke: tm.Invoke}
	w.inT = tensors(w.inT, cand.Inputs, w.ins)
	res.Inputs = w.inT
	result := "failed"
	if err == nil {
		result = "compared"
		w.outT = tensors(w.outT, cand.Outputs, w.outs)
		res.Outputs = w.outT
		w.agreement = w.agreement[:0]
		for i, o := range cand.Outputs {
			a := OutputAgreement{Name: o.Name}
			for j, bo := range c.baseline.Outputs {
				if bo.Name == o.Name && j < len(c.outs) {
					w.base, w.other = a.compare(bo, c.outs[j], o, w.outs[i], w.base, w.other)
					break
				}
			}
			w.agreement = append(w.agreement, a)
		}
		res.Agreement = w.agreement
	}
	r.shadowCopies.WithLabelValues(cand.Name, versionLabel(cand.Version), result).Inc()
	if r.opts.ShadowObserver != nil {
		r.opts.ShadowObserver.ObserveShadow(&res)
	}
}

// matchInputs orders the baseline's inputs as the candidate takes them, by
// name; each must have the candidate's size.
func matchInputs(base, cand catalog.Entry, ins, dst [][]byte) ([][]byte, error) {
	dst = dst[:0]
	for _, ci := range cand.Inputs {
		k := -1
		for j, bi := range base.Inputs {
			if bi.Name == ci.Name {
				k = j
			}
		}
		if k < 0 || k >= len(ins) {
			return nil, fmt.Errorf("%w: the candidate's input %q is not the serving version's", catalog.ErrBadInput, ci.Name)
		}
		if n, err := ci.ByteSize(); err != nil || n != len(ins[k]) {
			return nil, fmt.Errorf("%w: the candidate's input %q takes %d bytes, the request has %d", catalog.ErrBadInput, ci.Name, n, len(ins[k]))
		}
		dst = append(dst, ins[k])
	}
	return dst, nil
}

func tensors(dst []tensor.Tensor, infos []tensor.Info, data [][]byte) []tensor.Tensor {
	dst = dst[:0]
	for i, info := range infos {
		if i < len(data) {
			dst = append(dst, tensor.Tensor{Name: info.Name, DataType: info.DataType, Shape: info.Shape, Data: data[i]})
		}
	}
	return dst
}

// Trials holds an updater's candidates (updater.Trials) in Registry, taking
// the trial in the protocol's terms, as install commands give it.
type Trials struct{ Registry *Registry }

// Serving reports whether name has a serving version.
func (t Trials) Serving(name string) bool {
	_, err := t.Registry.Lookup(name, 0)
	return err == nil
}

// StartTrial loads data as name's candidate at version in trial pt (or
// changes the trial of the candidate already loaded).
func (t Trials) StartTrial(ctx context.Context, name string, version int64, data []byte, pt protocol.Trial) error {
	_, err := t.Registry.StartTrial(ctx, name, version, data, Trial{Mode: TrialMode(pt.Mode), Percent: pt.Percent})
	return err
}

// EndTrial unloads name's candidate, if any.
func (t Trials) EndTrial(name string) { t.Registry.EndTrial(name) }
