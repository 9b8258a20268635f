// Package runtime runs models for the agent: TensorFlow Lite models through
// the TFLite C API and ONNX models through ONNX Runtime, chosen from the
// model's bytes. Both sit behind one Model: it describes the tensors, keeps a
// pool of workers (an interpreter, or a set of bound tensors on a shared ONNX
// Runtime session) for concurrent callers, and applies accelerators in a
// fallback chain (TFLite: external plugin -> XNNPACK -> plain CPU; ONNX
// Runtime: CUDA or TensorRT execution providers -> CPU).
//
// This and the ONNX Runtime binding it uses are the only cgo in Outpost. It
// links libtensorflowlite_c (2.9, XNNPACK built in) and
// libexternal_delegate_obj, and opens libonnxruntime.so.1 (1.30) with dlopen
// on the first ONNX load; `make setup` fetches them and the Makefile sets the
// cgo flags and the rpath through which the ONNX Runtime library is found.
package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrInvalidModel: the bytes are not a model this runtime can load
	// (neither a TFLite flatbuffer nor an ONNX model, truncated, unresolved
	// custom op, unsupported operator set or type).
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
	// Workers is the number of interpreters in the pool; default one per
	// CPU (CPUs).
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
	// Inputs fixes, by input name, what ONNX models leave open: the served
	// shape of an input with open dimensions (open dimensions without an
	// entry are 1), and the value every element holds in the warm-up run
	// (default 0). A stateful or branching model such as Silero VAD needs
	// both (its sample-rate input must be a supported rate). Entries apply
	// to any ONNX model with an input of that name; TFLite ignores them.
	Inputs map[string]InputSpec
	// ONNXRuntimeLib is the path of libonnxruntime.so.1, opened on the first
	// ONNX load in the process (later values are ignored). Empty means
	// $OUTPOST_ONNXRUNTIME_LIB, else the name alone, found through the
	// binary's rpath (/usr/lib/outpost, then the binary's directory).
	ONNXRuntimeLib string
	// Logger receives delegate fallbacks; nil is silent.
	Logger *slog.Logger

	// explicitDelegates is set by withDefaults when Delegates was not nil:
	// the default chain [XNNPACK] is TFLite's, ONNX models run on CPU.
	explicitDelegates bool
}

// InputSpec fixes one input of an ONNX model; see Options.Inputs.
type InputSpec struct {
	Shape []int   `json:"shape,omitempty" yaml:"shape,omitempty"`
	Warm  float64 `json:"warm,omitempty" yaml:"warm,omitempty"`
}

// Format is the kind of model file, told from its bytes.
type Format string

const (
	// TFLite is a TensorFlow Lite flatbuffer ("TFL3" at offset 4).
	TFLite Format = "tflite"
	// ONNX is an ONNX ModelProto.
	ONNX Format = "onnx"
)

// worker is one unit of the pool: it holds a full set of input and output
// buffers and runs the model on them. A worker is used by one caller at a
// time; its buffers stay valid until free.
type worker interface {
	// input returns the buffer of input i, exactly the tensor's byte size.
	input(i int) []byte
	// run runs the model on whatever the input buffers hold.
	run() error
	// output returns the buffer of output i after run.
	output(i int) []byte
	free()
}

// loaded is what a backend hands to Load.
type loaded struct {
	format    Format
	inputs    []tensor.Info
	outputs   []tensor.Info
	inSizes   []int
	outSizes  []int
	warm      [][]byte // warm-up inputs; nil means zeros
	report    DelegateReport
	workers   []worker
	freeModel func() // after every worker is freed
}

func (o Options) withDefaults() Options {
	if o.Workers <= 0 {
		o.Workers = cpus
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
	o.explicitDelegates = o.Delegates != nil
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
	format    Format
	inputs    []tensor.Info
	outputs   []tensor.Info
	inSizes   []int
	outSizes  []int
	warm      [][]byte
	report    DelegateReport
	freeModel func()
	pool      *pool
	all       []worker

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

// Load builds a model from the bytes of a .tflite or .onnx file (they are
// copied), sets up the accelerator chain and the worker pool. A TFLite load
// runs no inference; an ONNX load runs the model once on the warm-up inputs
// to learn the shapes of outputs the model leaves open.
func Load(data []byte, opts Options) (*Model, error) {
	opts = opts.withDefaults()
	var l *loaded
	var err error
	switch f, derr := Detect(data); f {
	case TFLite:
		l, err = loadTFLite(data, opts)
	case ONNX:
		l, err = loadONNX(data, opts)
	default:
		return nil, fmt.Errorf("%w: %v", ErrInvalidModel, derr)
	}
	if err != nil {
		return nil, err
	}
	m := &Model{
		format:    l.format,
		inputs:    l.inputs,
		outputs:   l.outputs,
		inSizes:   l.inSizes,
		outSizes:  l.outSizes,
		warm:      l.warm,
		report:    l.report,
		freeModel: l.freeModel,
		all:       l.workers,
		pool:      newPool(l.workers, opts.MaxQueue),
	}
	return m, nil
}

// loadTFLite builds the TFLite interpreters, one per worker.
func loadTFLite(data []byte, opts Options) (*loaded, error) {
	cm, err := newCModel(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidModel, err)
	}
	first, report, err := firstInterp(cm, opts)
	if err != nil {
		cm.free()
		return nil, err
	}
	l := &loaded{format: TFLite, report: report, freeModel: cm.free}
	all := []*interp{first}
	fail := func(err error) (*loaded, error) {
		for _, p := range all {
			p.free()
		}
		cm.free()
		return nil, err
	}
	for len(all) < opts.Workers {
		d, err := report.spec.create(opts.Threads)
		if err != nil {
			return fail(fmt.Errorf("runtime: delegate %s for worker %d: %v", report.Delegate, len(all), err))
		}
		p, err := newInterp(cm, opts.Threads, d)
		if err != nil {
			return fail(fmt.Errorf("runtime: interpreter %d: %v", len(all), err))
		}
		all = append(all, p)
	}
	for _, p := range all {
		l.workers = append(l.workers, p)
	}
	l.inputs, l.inSizes = infos(first.inputs)
	l.outputs, l.outSizes = infos(first.outputs)
	return l, nil
}

// firstInterp walks the delegate chain until an interpreter builds, and
// records why each earlier delegate was skipped.
func firstInterp(cm *cModel, opts Options) (*interp, DelegateReport, error) {
	var rep DelegateReport
	chain := append(append([]DelegateSpec(nil), opts.Delegates...), DelegateSpec{Kind: CPU})
	for _, spec := range chain {
		if spec.Kind.onnxOnly() {
			rep.Fallbacks = append(rep.Fallbacks, Fallback{Delegate: spec.String(), Reason: "an ONNX Runtime execution provider; it does not run TFLite models"})
			continue
		}
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

// Format says which runtime runs the model.
func (m *Model) Format() Format { return m.format }

// RuntimeName is the runtime as a signed manifest names it: "tflite" or
// "onnx".
func (m *Model) RuntimeName() string { return string(m.format) }

// WarmInputs returns inputs for a warm-up run: each exactly its size, filled
// from Options.Inputs for ONNX models, zeros otherwise. Do not modify.
func (m *Model) WarmInputs() [][]byte {
	if m.warm != nil {
		return m.warm
	}
	in := make([][]byte, len(m.inSizes))
	for i, n := range m.inSizes {
		in[i] = make([]byte, n)
	}
	return in
}

// Delegate says which delegate runs the model and why others were skipped.
func (m *Model) Delegate() DelegateReport { return m.report }

// Workers is the number of interpreters in the pool.
func (m *Model) Workers() int { return len(m.all) }

// Waiting is the number of callers queued for an interpreter.
func (m *Model) Waiting() int { return m.pool.waiting() }

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
	p, err := m.pool.get(ctx)
	if err != nil {
		return tm, err
	}
	defer m.pool.put(p)
	got := nanotime()
	tm.Queue = got - start
	for i, b := range in {
		dst := p.input(i)
		if len(b) != len(dst) {
			return tm, fmt.Errorf("%w: input %d (%s) is %d bytes, want %d", ErrInput, i, m.inputs[i].Name, len(b), len(dst))
		}
		copy(dst, b)
	}
	if err := p.run(); err != nil {
		return tm, fmt.Errorf("runtime: %w", err)
	}
	tm.Invoke = nanotime() - got
	for i := range m.outputs {
		if err := emit(i, p.output(i)); err != nil {
			return tm, err
		}
	}
	return tm, nil
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
	m.freeModel()
}

// Version is the TFLite library version, e.g. "2.9.0".
func Version() string { return tfliteVersion() }
