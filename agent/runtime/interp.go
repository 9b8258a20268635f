package runtime

import (
	"errors"
	"fmt"
	"unsafe"

	tflite "github.com/mattn/go-tflite"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// interp is one TFLite interpreter with its delegate and error buffer. The
// tensor data pointers are read once after AllocateTensors: they stay valid
// until the interpreter is deleted, since we never resize.
type interp struct {
	it       *tflite.Interpreter
	delegate *countedDelegate // nil for plain CPU
	errs     errBuf
	inputs   []tensorSlot
	outputs  []tensorSlot
}

type tensorSlot struct {
	info tensor.Info
	data []byte // view of the tensor's memory inside TFLite
}

// newInterp builds an interpreter for m with the given delegate (nil for
// plain CPU). On failure it frees everything it made, including d, and the
// error carries what TFLite reported.
func newInterp(m *cModel, threads int, d *countedDelegate) (*interp, error) {
	opts := tflite.NewInterpreterOptions()
	if opts == nil {
		d.Delete()
		return nil, errors.New("cannot create interpreter options")
	}
	defer opts.Delete()
	opts.SetNumThread(threads)
	errs := newErrBuf()
	errs.attach(opts)
	if d != nil {
		opts.AddDelegate(d)
	}
	it := tflite.NewInterpreter(m.goModel(), opts)
	if it == nil {
		msg := errs.take()
		errs.free()
		d.Delete()
		if msg == "" {
			msg = "TfLiteInterpreterCreate failed"
		}
		return nil, errors.New(msg)
	}
	p := &interp{it: it, delegate: d, errs: errs}
	if st := it.AllocateTensors(); st != tflite.OK {
		msg := errs.take()
		p.free()
		return nil, fmt.Errorf("allocate tensors: %s", orStatus(msg, st))
	}
	var err error
	if p.inputs, err = slots(it.GetInputTensorCount(), it.GetInputTensor); err != nil {
		p.free()
		return nil, fmt.Errorf("inputs: %w", err)
	}
	if p.outputs, err = slots(it.GetOutputTensorCount(), it.GetOutputTensor); err != nil {
		p.free()
		return nil, fmt.Errorf("outputs: %w", err)
	}
	return p, nil
}

func orStatus(msg string, st tflite.Status) string {
	if msg != "" {
		return msg
	}
	return fmt.Sprintf("status %d", int(st))
}

func slots(n int, get func(int) *tflite.Tensor) ([]tensorSlot, error) {
	out := make([]tensorSlot, n)
	for i := range out {
		t := get(i)
		if t == nil {
			return nil, fmt.Errorf("tensor %d missing", i)
		}
		info, err := describe(t)
		if err != nil {
			return nil, err
		}
		out[i].info = info
		if size := int(t.ByteSize()); size > 0 && t.Data() != nil {
			out[i].data = unsafe.Slice((*byte)(t.Data()), size)
		}
	}
	return out, nil
}

// TFLite's TfLiteType values (c_api_types.h), mapped to protocol names.
var tfliteTypes = map[tflite.TensorType]tensor.DataType{
	1: tensor.FP32, 2: tensor.Int32, 3: tensor.Uint8, 4: tensor.Int64,
	5: tensor.Bytes, 6: tensor.Bool, 7: tensor.Int16, 9: tensor.Int8,
	10: tensor.FP16, 11: tensor.FP64, 13: tensor.Uint64, 16: tensor.Uint32,
}

func describe(t *tflite.Tensor) (tensor.Info, error) {
	dt, ok := tfliteTypes[t.Type()]
	if !ok {
		return tensor.Info{}, fmt.Errorf("tensor %q has unsupported TFLite type %d", t.Name(), int(t.Type()))
	}
	info := tensor.Info{Name: t.Name(), DataType: dt, Shape: t.Shape()}
	if q := t.QuantizationParams(); q.Scale != 0 {
		info.Quantization = &tensor.Quantization{Scale: float32(q.Scale), ZeroPoint: int32(q.ZeroPoint)}
	}
	return info, nil
}

// invoke runs the graph on whatever the input tensors hold.
func (p *interp) invoke() error {
	if st := p.it.Invoke(); st != tflite.OK {
		return fmt.Errorf("invoke: %s", orStatus(p.errs.take(), st))
	}
	return nil
}

func (p *interp) free() {
	if p.it != nil {
		p.it.Delete()
		p.it = nil
	}
	p.delegate.Delete() // after the interpreter: it still references it
	p.errs.free()
	p.inputs, p.outputs = nil, nil
}

// The worker methods: an interpreter's buffers are the tensors' own memory.
func (p *interp) input(i int) []byte  { return p.inputs[i].data }
func (p *interp) output(i int) []byte { return p.outputs[i].data }
func (p *interp) run() error          { return p.invoke() }
