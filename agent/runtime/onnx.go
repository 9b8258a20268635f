package runtime

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"strings"
	"sync"
	"syscall"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/models/onnx"
)

// The ONNX backend: one ONNX Runtime session per model, shared by the
// workers (OrtApi::Run is safe for concurrent use), and per worker a set of
// input and output tensors bound to memory outside the Go heap, so ONNX
// Runtime reads and writes buffers the garbage collector knows nothing of.
// Scalar (rank 0) inputs are the exception: the binding makes them only from
// a value, so a worker makes one from the input's bytes and keeps it until
// the bytes change.
//
// onnxruntime_go v1.27.0 asks the library for ORT_API_VERSION 24 (ONNX
// Runtime 1.24's C API); the 1.30 library serves every older version of the
// API table, so the pair works (TestONNXRuntimeVersion).

// Detect tells the format of a model from its bytes: "TFL3" at offset 4 is a
// TFLite flatbuffer; a protobuf that starts with ModelProto's ir_version and
// reads as a model is ONNX. The error says why the bytes are neither.
func Detect(data []byte) (Format, error) {
	if len(data) >= 8 && string(data[4:8]) == "TFL3" {
		return TFLite, nil
	}
	// ir_version is field 1, a varint: tag byte 0x08. Every exporter writes
	// it first; a file starting otherwise is not taken for ONNX.
	if len(data) > 0 && data[0] == 0x08 {
		if _, err := onnx.Read(data); err != nil {
			return "", fmt.Errorf("looks like ONNX but %v", err)
		}
		return ONNX, nil
	}
	if len(data) < 8 {
		return "", fmt.Errorf("not a TFLite flatbuffer nor an ONNX model: %d bytes is too short", len(data))
	}
	return "", errors.New("not a TFLite flatbuffer (no TFL3 identifier) nor an ONNX model (no ir_version first)")
}

// ortEnv is the process's ONNX Runtime environment, made on first use.
var ortEnv struct {
	mu   sync.Mutex
	done bool
	err  error
}

func initORT(lib string) error {
	ortEnv.mu.Lock()
	defer ortEnv.mu.Unlock()
	if ortEnv.done {
		return ortEnv.err
	}
	ortEnv.done = true
	if lib == "" {
		lib = os.Getenv("OUTPOST_ONNXRUNTIME_LIB")
	}
	if lib == "" {
		lib = "libonnxruntime.so.1"
	}
	ort.SetSharedLibraryPath(lib)
	// Fatal only: ONNX Runtime otherwise prints every failed node to stderr,
	// and our errors already carry the message.
	if err := ort.InitializeEnvironment(ort.WithLogLevelFatal()); err != nil {
		ortEnv.err = fmt.Errorf("runtime: onnx runtime %s: %v", lib, err)
		return ortEnv.err
	}
	return nil
}

// ONNXVersion is the ONNX Runtime library version ("1.30.0"), or "" when no
// ONNX model was loaded yet (the library is opened on first use).
func ONNXVersion() string {
	ortEnv.mu.Lock()
	defer ortEnv.mu.Unlock()
	if !ortEnv.done || ortEnv.err != nil {
		return ""
	}
	return ort.GetVersion()
}

// onnxTensor is one input or output as served: its fixed shape and size.
type onnxTensor struct {
	info  tensor.Info
	etype ort.TensorElementDataType
	size  int // bytes
}

var onnxTypes = map[tensor.DataType]ort.TensorElementDataType{
	tensor.FP32: ort.TensorElementDataTypeFloat, tensor.Uint8: ort.TensorElementDataTypeUint8,
	tensor.Int8: ort.TensorElementDataTypeInt8, tensor.Uint16: ort.TensorElementDataTypeUint16,
	tensor.Int16: ort.TensorElementDataTypeInt16, tensor.Int32: ort.TensorElementDataTypeInt32,
	tensor.Int64: ort.TensorElementDataTypeInt64, tensor.Bool: ort.TensorElementDataTypeBool,
	tensor.FP16: ort.TensorElementDataTypeFloat16, tensor.FP64: ort.TensorElementDataTypeDouble,
	tensor.Uint32: ort.TensorElementDataTypeUint32, tensor.Uint64: ort.TensorElementDataTypeUint64,
}

func loadONNX(data []byte, opts Options) (*loaded, error) {
	sig, err := onnx.Read(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidModel, err)
	}
	if len(sig.Inputs) == 0 {
		return nil, fmt.Errorf("%w: onnx model has no inputs", ErrInvalidModel)
	}
	ins := make([]onnxTensor, len(sig.Inputs))
	for i, t := range sig.Inputs {
		if ins[i], err = servedInput(t, opts.Inputs[t.Name]); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidModel, err)
		}
	}
	if err := initORT(opts.ONNXRuntimeLib); err != nil {
		return nil, err
	}
	sess, report, err := onnxSession(data, sig, opts)
	if err != nil {
		return nil, err
	}
	l := &loaded{format: ONNX, report: report, freeModel: func() { sess.Destroy() }}
	l.warm = make([][]byte, len(ins))
	for i, t := range ins {
		l.warm[i] = fill(t, opts.Inputs[t.info.Name].Warm)
	}
	outs, err := discoverOutputs(sess, sig, ins, l.warm)
	if err != nil {
		sess.Destroy()
		return nil, err
	}
	for len(l.workers) < opts.Workers {
		w, err := newONNXWorker(sess, ins, outs)
		if err != nil {
			for _, w := range l.workers {
				w.free()
			}
			sess.Destroy()
			return nil, fmt.Errorf("runtime: onnx worker %d: %v", len(l.workers), err)
		}
		l.workers = append(l.workers, w)
	}
	for _, t := range ins {
		l.inputs = append(l.inputs, t.info)
		l.inSizes = append(l.inSizes, t.size)
	}
	for _, t := range outs {
		l.outputs = append(l.outputs, t.info)
		l.outSizes = append(l.outSizes, t.size)
	}
	return l, nil
}

// servedInput fixes the shape of one input: the model's own where it says,
// the spec's where it leaves a dimension open (1 without a spec).
func servedInput(t onnx.Tensor, spec InputSpec) (onnxTensor, error) {
	dt := tensor.DataType(t.DataType)
	et, ok := onnxTypes[dt]
	if !ok {
		return onnxTensor{}, fmt.Errorf("input %q has type %s, which the agent does not serve", t.Name, t.DataType)
	}
	shape := append([]int{}, t.Shape...)
	if spec.Shape != nil {
		if len(spec.Shape) != len(shape) {
			return onnxTensor{}, fmt.Errorf("input %q: configured shape %v has rank %d, the model's %v has %d", t.Name, spec.Shape, len(spec.Shape), t.Shape, len(t.Shape))
		}
		for i, d := range spec.Shape {
			if shape[i] >= 0 && d != shape[i] {
				return onnxTensor{}, fmt.Errorf("input %q: configured shape %v differs from the model's %v at dimension %d", t.Name, spec.Shape, t.Shape, i)
			}
			if d <= 0 {
				return onnxTensor{}, fmt.Errorf("input %q: configured dimension %d is %d", t.Name, i, d)
			}
			shape[i] = d
		}
	}
	for i, d := range shape {
		if d < 0 {
			shape[i] = 1
		}
	}
	n, err := tensor.NumElements(shape)
	if err != nil {
		return onnxTensor{}, fmt.Errorf("input %q: %v", t.Name, err)
	}
	return onnxTensor{info: tensor.Info{Name: t.Name, DataType: dt, Shape: shape}, etype: et, size: n * dt.Size()}, nil
}

// fill makes an input whose every element is v in the input's type.
func fill(t onnxTensor, v float64) []byte {
	b := make([]byte, t.size)
	if v == 0 {
		return b
	}
	es := t.info.DataType.Size()
	var one [8]byte
	switch t.info.DataType {
	case tensor.FP32:
		binary.LittleEndian.PutUint32(one[:], math.Float32bits(float32(v)))
	case tensor.FP64:
		binary.LittleEndian.PutUint64(one[:], math.Float64bits(v))
	case tensor.FP16:
		binary.LittleEndian.PutUint16(one[:], fp16(float32(v)))
	default:
		binary.LittleEndian.PutUint64(one[:], uint64(int64(v)))
	}
	for i := 0; i < len(b); i += es {
		copy(b[i:i+es], one[:es])
	}
	return b
}

// fp16 rounds to the nearest half (normal range only; enough for warm-up
// values).
func fp16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int((b>>23)&0xff) - 127 + 15
	mant := b & 0x7fffff
	switch {
	case exp <= 0:
		return sign
	case exp >= 31:
		return sign | 0x7c00
	}
	return sign | uint16(exp)<<10 | uint16(mant>>13)
}

// onnxSession walks the execution provider chain until a session builds.
// With the default chain (nil Delegates) it is plain CPU; XNNPACK and
// external TFLite plugins are TFLite links and are skipped with a reason.
func onnxSession(data []byte, sig *onnx.Model, opts Options) (*ort.DynamicAdvancedSession, DelegateReport, error) {
	var rep DelegateReport
	var chain []DelegateSpec
	if opts.explicitDelegates {
		chain = append(chain, opts.Delegates...)
	}
	chain = append(chain, DelegateSpec{Kind: CPU})
	inNames := make([]string, len(sig.Inputs))
	for i, t := range sig.Inputs {
		inNames[i] = t.Name
	}
	outNames := make([]string, len(sig.Outputs))
	for i, t := range sig.Outputs {
		outNames[i] = t.Name
	}
	for _, spec := range chain {
		switch spec.Kind {
		case External, XNNPACK:
			rep.Fallbacks = append(rep.Fallbacks, Fallback{Delegate: spec.String(), Reason: "a TFLite delegate; it does not run ONNX models"})
			continue
		case CPU, CUDA, TensorRT:
		default:
			rep.Fallbacks = append(rep.Fallbacks, Fallback{Delegate: spec.String(), Reason: fmt.Sprintf("unknown delegate kind %q", spec.Kind)})
			continue
		}
		so, err := sessionOptions(spec, opts.Threads)
		if err != nil {
			rep.Fallbacks = append(rep.Fallbacks, Fallback{Delegate: spec.String(), Reason: "create: " + oneLine(err.Error())})
			opts.Logger.Warn("execution provider unavailable, falling back", "delegate", spec.String(), "err", err)
			continue
		}
		sess, err := ort.NewDynamicAdvancedSessionWithONNXData(data, inNames, outNames, so)
		so.Destroy()
		if err != nil {
			if spec.Kind == CPU {
				return nil, rep, fmt.Errorf("%w: onnx runtime: %s", ErrInvalidModel, explainORT(err.Error(), sig))
			}
			rep.Fallbacks = append(rep.Fallbacks, Fallback{Delegate: spec.String(), Reason: "session: " + oneLine(err.Error())})
			opts.Logger.Warn("execution provider failed, falling back", "delegate", spec.String(), "err", err)
			continue
		}
		rep.spec = spec
		rep.Delegate = spec.String()
		return sess, rep, nil
	}
	return nil, rep, fmt.Errorf("%w: no execution provider could run it", ErrInvalidModel)
}

func sessionOptions(spec DelegateSpec, threads int) (*ort.SessionOptions, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*ort.SessionOptions, error) {
		so.Destroy()
		return nil, err
	}
	// Workers run in parallel on the one session; each run uses the calling
	// thread plus threads-1 helpers.
	if err := so.SetIntraOpNumThreads(threads); err != nil {
		return fail(err)
	}
	if err := so.SetInterOpNumThreads(1); err != nil {
		return fail(err)
	}
	switch spec.Kind {
	case CUDA:
		po, err := ort.NewCUDAProviderOptions()
		if err != nil {
			return fail(err)
		}
		defer po.Destroy()
		if len(spec.Options) > 0 {
			if err := po.Update(spec.Options); err != nil {
				return fail(err)
			}
		}
		if err := so.AppendExecutionProviderCUDA(po); err != nil {
			return fail(err)
		}
	case TensorRT:
		po, err := ort.NewTensorRTProviderOptions()
		if err != nil {
			return fail(err)
		}
		defer po.Destroy()
		if len(spec.Options) > 0 {
			if err := po.Update(spec.Options); err != nil {
				return fail(err)
			}
		}
		if err := so.AppendExecutionProviderTensorRT(po); err != nil {
			return fail(err)
		}
	}
	return so, nil
}

// explainORT leads with the cause ONNX Runtime buried in its message, e.g. an
// operator set newer than this runtime knows.
func explainORT(msg string, sig *onnx.Model) string {
	msg = oneLine(msg)
	if strings.Contains(strings.ToLower(msg), "opset") {
		return fmt.Sprintf("model imports operator set %d, which ONNX Runtime %s does not support (%s)", sig.Opset(), ort.GetVersion(), msg)
	}
	return msg
}

// release destroys v unless it is nil, also as a nil pointer in the
// interface: a failed run can leave outputs of a type ONNX Runtime never
// filled in.
func release(v ort.Value) {
	if v == nil {
		return
	}
	if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
		return
	}
	v.Destroy()
}

// discoverOutputs runs the model once on the warm-up inputs, letting ONNX
// Runtime allocate the outputs, to learn their shapes: models leave output
// dimensions open that follow from the inputs.
func discoverOutputs(sess *ort.DynamicAdvancedSession, sig *onnx.Model, ins []onnxTensor, warm [][]byte) ([]onnxTensor, error) {
	var values []ort.Value
	defer func() {
		for _, v := range values {
			release(v)
		}
	}()
	for i, t := range ins {
		v, err := onnxValue(t, warm[i])
		if err != nil {
			return nil, fmt.Errorf("runtime: onnx input %q: %v", t.info.Name, err)
		}
		values = append(values, v)
	}
	for _, t := range sig.Outputs {
		if len(t.Shape) == 0 {
			return nil, fmt.Errorf("%w: output %q is a scalar; scalar outputs are not served yet", ErrInvalidModel, t.Name)
		}
	}
	outs := make([]ort.Value, len(sig.Outputs))
	defer func() {
		for _, v := range outs {
			release(v)
		}
	}()
	if err := sess.Run(values, outs); err != nil {
		return nil, fmt.Errorf("%w: onnx runtime: first run on the warm-up inputs (set the inputs' shape and warm value in the configuration): %s", ErrInvalidModel, oneLine(err.Error()))
	}
	res := make([]onnxTensor, len(outs))
	for i, v := range outs {
		t := sig.Outputs[i]
		dt := tensor.DataType(t.DataType)
		et, ok := onnxTypes[dt]
		if !ok || v.GetONNXType() != ort.ONNXTypeTensor {
			return nil, fmt.Errorf("%w: output %q has type %s, which the agent does not serve", ErrInvalidModel, t.Name, t.DataType)
		}
		shape := make([]int, 0, len(v.GetShape()))
		for _, d := range v.GetShape() {
			shape = append(shape, int(d))
		}
		if len(shape) == 0 {
			return nil, fmt.Errorf("%w: output %q is a scalar; scalar outputs are not served yet", ErrInvalidModel, t.Name)
		}
		n, err := tensor.NumElements(shape)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%w: output %q has shape %v", ErrInvalidModel, t.Name, shape)
		}
		res[i] = onnxTensor{info: tensor.Info{Name: t.Name, DataType: dt, Shape: shape}, etype: et, size: n * dt.Size()}
	}
	return res, nil
}

// onnxValue makes an ONNX Runtime value holding a copy of b.
func onnxValue(t onnxTensor, b []byte) (ort.Value, error) {
	if len(t.info.Shape) == 0 {
		return scalar(t, b)
	}
	// The value only borrows its data: keep it outside the Go heap.
	mem, err := syscall.Mmap(-1, 0, len(b), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, err
	}
	copy(mem, b)
	v, err := ort.NewCustomDataTensor(shape64(t.info.Shape), mem, t.etype)
	if err != nil {
		syscall.Munmap(mem)
		return nil, err
	}
	return &mappedValue{CustomDataTensor: v, mem: mem}, nil
}

// mappedValue frees its memory with the value.
type mappedValue struct {
	*ort.CustomDataTensor
	mem []byte
}

func (v *mappedValue) Destroy() error {
	err := v.CustomDataTensor.Destroy()
	syscall.Munmap(v.mem)
	return err
}

func shape64(s []int) ort.Shape {
	out := make(ort.Shape, len(s))
	for i, d := range s {
		out[i] = int64(d)
	}
	return out
}

// scalar makes a rank-0 value from its little-endian bytes.
func scalar(t onnxTensor, b []byte) (ort.Value, error) {
	le := binary.LittleEndian
	switch t.info.DataType {
	case tensor.FP32:
		return ort.NewScalar(math.Float32frombits(le.Uint32(b)))
	case tensor.FP64:
		return ort.NewScalar(math.Float64frombits(le.Uint64(b)))
	case tensor.Int64:
		return ort.NewScalar(int64(le.Uint64(b)))
	case tensor.Uint64:
		return ort.NewScalar(le.Uint64(b))
	case tensor.Int32:
		return ort.NewScalar(int32(le.Uint32(b)))
	case tensor.Uint32:
		return ort.NewScalar(le.Uint32(b))
	case tensor.Int16:
		return ort.NewScalar(int16(le.Uint16(b)))
	case tensor.Uint16:
		return ort.NewScalar(le.Uint16(b))
	case tensor.Int8:
		return ort.NewScalar(int8(b[0]))
	case tensor.Uint8:
		return ort.NewScalar(b[0])
	}
	return nil, fmt.Errorf("scalar of type %s is not supported", t.info.DataType)
}

// onnxWorker is one set of bound tensors. Its input and output buffers are
// one anonymous mapping; scalar inputs are values of their own.
type onnxWorker struct {
	sess    *ort.DynamicAdvancedSession
	mem     []byte
	ins     []onnxTensor
	inBufs  [][]byte
	outBufs [][]byte
	inVals  []ort.Value // nil for scalars, see scalars
	outVals []ort.Value
	// scalars holds the value made for each scalar input and the bytes it
	// was made from; nil for other inputs.
	scalars     []ort.Value
	scalarBytes [][]byte
	runIns      []ort.Value // reused argument slices
	runOuts     []ort.Value
}

func newONNXWorker(sess *ort.DynamicAdvancedSession, ins, outs []onnxTensor) (*onnxWorker, error) {
	const align = 64
	total := 0
	for _, t := range append(append([]onnxTensor(nil), ins...), outs...) {
		total += (t.size + align - 1) / align * align
	}
	mem, err := syscall.Mmap(-1, 0, total, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, err
	}
	w := &onnxWorker{sess: sess, mem: mem, ins: ins}
	off := 0
	carve := func(t onnxTensor) ([]byte, ort.Value, error) {
		b := mem[off : off+t.size : off+t.size]
		off += (t.size + align - 1) / align * align
		if len(t.info.Shape) == 0 {
			return b, nil, nil
		}
		v, err := ort.NewCustomDataTensor(shape64(t.info.Shape), b, t.etype)
		return b, v, err
	}
	for _, t := range ins {
		b, v, err := carve(t)
		if err != nil {
			w.free()
			return nil, fmt.Errorf("input %q: %v", t.info.Name, err)
		}
		w.inBufs, w.inVals = append(w.inBufs, b), append(w.inVals, v)
	}
	for _, t := range outs {
		b, v, err := carve(t)
		if err != nil {
			w.free()
			return nil, fmt.Errorf("output %q: %v", t.info.Name, err)
		}
		w.outBufs, w.outVals = append(w.outBufs, b), append(w.outVals, v)
	}
	w.runIns = make([]ort.Value, len(ins))
	w.runOuts = make([]ort.Value, len(outs))
	w.scalars = make([]ort.Value, len(ins))
	w.scalarBytes = make([][]byte, len(ins))
	return w, nil
}

func (w *onnxWorker) input(i int) []byte  { return w.inBufs[i] }
func (w *onnxWorker) output(i int) []byte { return w.outBufs[i] }

func (w *onnxWorker) run() error {
	copy(w.runIns, w.inVals)
	for i, v := range w.inVals {
		if v != nil {
			continue
		}
		// A scalar is usually the same from call to call (a sample rate):
		// keep the value until its bytes change.
		if w.scalars[i] == nil || !bytes.Equal(w.scalarBytes[i], w.inBufs[i]) {
			s, err := scalar(w.ins[i], w.inBufs[i])
			if err != nil {
				return fmt.Errorf("input %q: %v", w.ins[i].info.Name, err)
			}
			if w.scalars[i] != nil {
				w.scalars[i].Destroy()
			}
			w.scalars[i] = s
			w.scalarBytes[i] = append(w.scalarBytes[i][:0], w.inBufs[i]...)
		}
		w.runIns[i] = w.scalars[i]
	}
	copy(w.runOuts, w.outVals)
	if err := w.sess.Run(w.runIns, w.runOuts); err != nil {
		return fmt.Errorf("onnx runtime: %s", oneLine(err.Error()))
	}
	return nil
}

func (w *onnxWorker) free() {
	for _, v := range append(append(append([]ort.Value(nil), w.inVals...), w.outVals...), w.scalars...) {
		if v != nil {
			v.Destroy()
		}
	}
	w.inVals, w.outVals, w.scalars = nil, nil, nil
	if w.mem != nil {
		syscall.Munmap(w.mem)
		w.mem = nil
	}
}
