// Package runtime runs TensorFlow Lite models through the TFLite C API: it
// loads a model from bytes, describes its tensors, keeps a pool of
// interpreters for concurrent callers, and applies accelerator delegates in a
// fallback chain (external plugin -> XNNPACK -> plain CPU).
//
// This is the only package in Outpost that uses cgo. It links
// libtensorflowlite_c (2.9, XNNPACK built in) and libexternal_delegate_obj;
// `make setup` fetches both and the Makefile sets the cgo flags.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrInvalidModel: the bytes are not a model this runtime can load
	// (not a flatbuffer, truncated, unresolved custom op, unsupported type).
	ErrInvalidModel = errors.New("runtime: invalid model")
	// ErrInput: inputs do not match the model (count, type or size).
	ErrInput = errors.New("runtime: input does not match the model")
	// ErrOverloaded: the wait queue in front of the pool is full.
	ErrOverloaded = errors.New("runtime: overloaded")
	// ErrClosed: the model was closed.
	ErrClosed = errors.New("runtime: model closed")
)

// Options configure how a model is run. The zero value is usable: XNNPACK
// with one thread, falling back to plain CPU, and one interpreter per core.
type Options struct {
	// Workers is the number of interpreters in the pool; default GOMAXPROCS.
	Workers int
	// Threads is the number of threads each interpreter (and XNNPACK) uses;
	// default 1, which suits a pool of one interpreter per core.
	Threads int
	// MaxQueue bounds the callers waiting for an interpreter; beyond it
	// Invoke fails fast with ErrOverloaded. Default 64 per worker; negative
	// means no callers may wait.
	MaxQueue int
	// Delegates is the fallback chain, tried in order; plain CPU always ends
	// it. Nil means [XNNPACK]. An empty non-nil slice means plain CPU only.
	Delegates []DelegateSpec
	// Logger receives delegate fallbacks; nil is silent.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Workers <= 0 {
		o.Workers = goruntime.GOMAXPROCS(0)
	}
	if o.Threads <= 0 {
		o.Threads = 1
	}
	if o.MaxQueue == 0 {
		o.MaxQueue = 64 * o.Workers
	}
	if o.MaxQueue < 0 {
		o.MaxQueue = 0
	}
	if o.Delegates == nil {
		o.Delegates = []DelegateSpec{{Kind: XNNPACK}}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Model is a loaded model with a pool of interpreters. It is safe for
// concurrent use; Close waits for calls in progress.
type Model struct {
	inputs   []tensor.Info
	outputs  []tensor.Info
	inSizes  []int
	outSizes []int
	report   DelegateReport
	cm       *cModel
	pool     chan *interp
	all      []*interp
	maxQueue int64
	waiting  atomic.Int64

	// life is held for reading by every call in progress and for writing by
	// Close, so the C memory is freed only once no call can touch it.
	life   sync.RWMutex
	closed bool // guarded by life
}

// LoadFile reads and loads a model file.
func LoadFile(path string, opts Options) (*Model, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("runtime: %w", err)
	}
	m, err := Load(data, opts)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return m, nil
}

// Load builds a model from the bytes of a .tflite file (they are copied), sets
// up the delegate chain and the interpreter pool, and runs no inference.
func Load(data []byte, opts Options) (*Model, error) {
	opts = opts.withDefaults()
	cm, err := newCModel(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidModel, err)
	}
	first, report, err := firstInterp(cm, opts)
	if err != nil {
		cm.free()
		return nil, err
	}
	m := &Model{
		cm:       cm,
		report:   report,
		pool:     make(chan *interp, opts.Workers),
		maxQueue: int64(opts.MaxQueue),
	}
	m.all = append(m.all, first)
	for len(m.all) < opts.Workers {
		d, err := report.spec.create(opts.Threads)
		if err != nil {
			m.freeAll()
			return nil, fmt.Errorf("runtime: delegate %s for worker %d: %v", report.Delegate, len(m.all), err)
		}
		p, err := newInterp(cm, opts.Threads, d)
		if err != nil {
			m.freeAll()
			return nil, fmt.Errorf("runtime: interpreter %d: %v", len(m.all), err)
		}
		m.all = append(m.all, p)
	}
	for _, p := range m.all {
		m.pool <- p
	}
	m.inputs, m.inSizes = infos(first.inputs)
	m.outputs, m.outSizes = infos(first.outputs)
	return m, nil
}

// firstInterp walks the delegate chain until an interpreter builds, and
// records why each earlier delegate was skipped.
func firstInterp(cm *cModel, opts Options) (*interp, DelegateReport, error) {
	var rep DelegateReport
	chain := append(append([]DelegateSpec(nil), opts.Delegates...), DelegateSpec{Kind: CPU})
	for _, spec := range chain {
		if err := spec.validate(); err != nil {
			rep.Fallbacks = append(rep.Fallbacks, Fallback{Delegate: spec.String(), Reason: err.Error()})
			continue
		}
		d, err := spec.create(opts.Threads)
		if err != nil {
			rep.Fallbacks = append(rep.Fallbacks, Fallback{Delegate: spec.String(), Reason: "create: " + err.Error()})
			opts.Logger.Warn("delegate unavailable, falling back", "delegate", spec.String(), "err", err)
			continue
		}
		p, err := newInterp(cm, opts.Threads, d)
		if err != nil {
			if spec.Kind == CPU {
				// Plain CPU failing means the model itself cannot run here.
				return nil, rep, fmt.Errorf("%w: %s", ErrInvalidModel, explain(err.Error()))
			}
			rep.Fallbacks = append(rep.Fallbacks, Fallback{Delegate: spec.String(), Reason: "apply: " + oneLine(err.Error())})
			opts.Logger.Warn("delegate failed to apply, falling back", "delegate", spec.String(), "err", err)
			continue
		}
		rep.spec = spec
		rep.Delegate = spec.String()
		if p.delegate != nil {
			rep.TotalNodes, rep.DelegatedNodes, rep.Partitions = p.delegate.counts()
			if rep.DelegatedNodes == 0 {
				p.free()
				rep.Fallbacks = append(rep.Fallbacks, Fallback{Delegate: spec.String(), Reason: "claimed no nodes"})
				continue
			}
		}
		return p, rep, nil
	}
	return nil, rep, fmt.Errorf("%w: no delegate could run it", ErrInvalidModel)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// explain turns TFLite's report of a model it cannot prepare into one line
// that leads with the cause, e.g. a custom op this runtime lacks.
func explain(msg string) string {
	const marker = "unresolved custom op: "
	if i := strings.Index(msg, marker); i >= 0 {
		op := msg[i+len(marker):]
		if j := strings.IndexAny(op, ". \n"); j >= 0 {
			op = op[:j]
		}
		return fmt.Sprintf("model uses custom op %s, which this TFLite runtime does not provide (%s)", op, oneLine(msg))
	}
	return oneLine(msg)
}

func infos(s []tensorSlot) ([]tensor.Info, []int) {
	out := make([]tensor.Info, len(s))
	sizes := make([]int, len(s))
	for i := range s {
		out[i] = s[i].info
		sizes[i] = len(s[i].data)
	}
	return out, sizes
}

// Inputs describes the model's input tensors, in order. Do not modify.
func (m *Model) Inputs() []tensor.Info { return m.inputs }

// Outputs describes the model's output tensors, in order. Do not modify.
func (m *Model) Outputs() []tensor.Info { return m.outputs }

// Delegate says which delegate runs the model and why others were skipped.
func (m *Model) Delegate() DelegateReport { return m.report }

// Workers is the number of interpreters in the pool.
func (m *Model) Workers() int { return len(m.all) }

// Waiting is the number of callers queued for an interpreter.
func (m *Model) Waiting() int { return int(m.waiting.Load()) }

// Invoke copies the inputs into an interpreter, runs the model, and copies
// the outputs into out. Each in[i] must hold exactly the bytes of input i in
// its datatype; out[i] must be exactly the size of output i (see
// OutputSizes). It waits for a free interpreter until ctx is done, and fails
// fast with ErrOverloaded when too many callers already wait.
func (m *Model) Invoke(ctx context.Context, in, out [][]byte) error {
	_, err := m.InvokeFunc(ctx, in, func(i int, b []byte) error {
		if len(out[i]) != len(b) {
			return fmt.Errorf("%w: output %d buffer is %d bytes, want %d", ErrInput, i, len(out[i]), len(b))
		}
		copy(out[i], b)
		return nil
	}, len(out))
	return err
}

// InvokeFunc is Invoke for callers that encode outputs themselves: after the
// run, emit is called for each output with a view of the tensor's memory that
// is valid only during the call. nOut must equal the number of outputs. The
// returned Timing splits the call into waiting for an interpreter and
// running it.
func (m *Model) InvokeFunc(ctx context.Context, in [][]byte, emit func(i int, data []byte) error, nOut int) (Timing, error) {
	var tm Timing
	if len(in) != len(m.inputs) {
		return tm, fmt.Errorf("%w: got %d inputs, model has %d", ErrInput, len(in), len(m.inputs))
	}
	if nOut != len(m.outputs) {
		return tm, fmt.Errorf("%w: asked for %d outputs, model has %d", ErrInput, nOut, len(m.outputs))
	}
	m.life.RLock()
	defer m.life.RUnlock()
	if m.closed {
		return tm, ErrClosed
	}
	start := nanotime()
	p, err := m.acquire(ctx)
	if err != nil {
		return tm, err
	}
	defer func() { m.pool <- p }()
	got := nanotime()
	tm.Queue = got - start
	for i, b := range in {
		dst := p.inputs[i].data
		if len(b) != len(dst) {
			return tm, fmt.Errorf("%w: input %d (%s) is %d bytes, want %d", ErrInput, i, p.inputs[i].info.Name, len(b), len(dst))
		}
		copy(dst, b)
	}
	if err := p.invoke(); err != nil {
		return tm, fmt.Errorf("runtime: %w", err)
	}
	tm.Invoke = nanotime() - got
	for i := range p.outputs {
		if err := emit(i, p.outputs[i].data); err != nil {
			return tm, err
		}
	}
	return tm, nil
}

func (m *Model) acquire(ctx context.Context) (*interp, error) {
	select {
	case p := <-m.pool:
		return p, nil
	default:
	}
	if m.waiting.Add(1) > m.maxQueue {
		m.waiting.Add(-1)
		return nil, ErrOverloaded
	}
	defer m.waiting.Add(-1)
	select {
	case p := <-m.pool:
		return p, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// OutputSizes returns the byte size of each output tensor. Do not modify.
func (m *Model) OutputSizes() []int { return m.outSizes }

// InputSizes returns the byte size of each input tensor. Do not modify.
func (m *Model) InputSizes() []int { return m.inSizes }

// Close waits for calls in progress, then frees the interpreters, delegates
// and model. Calls after Close fail with ErrClosed. Close is idempotent.
func (m *Model) Close() error {
	m.life.Lock()
	defer m.life.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	m.freeAll()
	return nil
}

func (m *Model) freeAll() {
	for _, p := range m.all {
		p.free()
	}
	m.all = nil
	m.cm.free()
}

// Version is the TFLite library version, e.g. "2.9.0".
func Version() string { return tfliteVersion() }
