package updater

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
	"github.com/outpost-edge/outpost/models/manifest"
)

// Runtime loads a model for validation; the daemon passes the real TFLite
// runtime (a *runtime.Model satisfies Model). Load must be safe to call
// while other models serve.
type Runtime interface {
	Load(data []byte) (Model, error)
}

// RuntimeFunc adapts a function to Runtime.
type RuntimeFunc func(data []byte) (Model, error)

// Load calls f.
func (f RuntimeFunc) Load(data []byte) (Model, error) { return f(data) }

// Model is a loaded model: what validation needs of agent/runtime.Model.
type Model interface {
	Inputs() []tensor.Info
	Outputs() []tensor.Info
	InputSizes() []int
	OutputSizes() []int
	// Invoke runs the model: in and out hold every tensor's raw bytes in
	// signature order, each exactly its size.
	Invoke(ctx context.Context, in, out [][]byte) error
	Close() error
}

// validate loads data and runs the manifest's golden vectors: every output
// element within the vector's tolerance (after dequantization), every run
// within the latency budget. Without golden vectors it runs the model once
// on zeros, so at least a model that loads but cannot run is caught.
func (u *Updater) validate(ctx context.Context, m *manifest.Manifest, data []byte) (string, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s v%d: %s", ErrValidation, m.Name, m.Version, fmt.Sprintf(format, a...))
	}
	start := time.Now()
	model, err := u.opts.Runtime.Load(data)
	if err != nil {
		return "", bad("load: %v", err)
	}
	defer model.Close()
	loaded := time.Since(start)
	if r, ok := model.(interface{ RuntimeName() string }); ok && r.RuntimeName() != m.RuntimeName() {
		return "", bad("the manifest says runtime %s, the bytes are a %s model", m.RuntimeName(), r.RuntimeName())
	}
	if err := sameSignature(model.Inputs(), m.Inputs); err != nil {
		return "", bad("inputs: %v", err)
	}
	if err := sameSignature(model.Outputs(), m.Outputs); err != nil {
		return "", bad("outputs: %v", err)
	}
	out := make([][]byte, len(model.OutputSizes()))
	for i, n := range model.OutputSizes() {
		out[i] = make([]byte, n)
	}
	if len(m.Golden) == 0 {
		in := make([][]byte, len(model.InputSizes()))
		for i, n := range model.InputSizes() {
			in[i] = make([]byte, n)
		}
		if w, ok := model.(interface{ WarmInputs() [][]byte }); ok {
			// An ONNX input may need a value other than zero (a sample rate).
			in = w.WarmInputs()
		}
		if err := model.Invoke(ctx, in, out); err != nil {
			return "", bad("run on zeros: %v", err)
		}
		return fmt.Sprintf("loaded in %s, ran once (no golden vectors signed)", loaded.Round(time.Millisecond)), nil
	}
	var slowest time.Duration
	for gi, g := range m.Golden {
		in, err := goldenInputs(model, g)
		if err != nil {
			return "", bad("golden %d: %v", gi, err)
		}
		if gi == 0 {
			// The first run packs weights (XNNPACK); it is not what the
			// model costs per request.
			if err := model.Invoke(ctx, in, out); err != nil {
				return "", bad("golden %d: warm-up: %v", gi, err)
			}
		}
		rctx, cancel := context.WithTimeout(ctx, u.opts.LatencyBudget)
		t0 := time.Now()
		err = model.Invoke(rctx, in, out)
		took := time.Since(t0)
		cancel()
		if err != nil {
			return "", bad("golden %d: %v", gi, err)
		}
		if took > u.opts.LatencyBudget {
			return "", bad("golden %d took %s, over the latency budget of %s", gi, took, u.opts.LatencyBudget)
		}
		slowest = max(slowest, took)
		if err := compare(model.Outputs(), out, g); err != nil {
			return "", bad("golden %d: %v", gi, err)
		}
	}
	return fmt.Sprintf("loaded in %s, %d golden vectors within tolerance, slowest %s (budget %s)",
		loaded.Round(time.Millisecond), len(m.Golden), slowest.Round(time.Microsecond), u.opts.LatencyBudget), nil
}

// sameSignature checks the runtime's tensors against the signed ones by
// name and datatype.
func sameSignature(got []tensor.Info, want []manifest.Tensor) error {
	if len(got) != len(want) {
		return fmt.Errorf("model has %d, manifest says %d", len(got), len(want))
	}
	for i := range got {
		if got[i].Name != want[i].Name || string(got[i].DataType) != want[i].DataType {
			return fmt.Errorf("tensor %d is %s %s, manifest says %s %s", i, got[i].Name, got[i].DataType, want[i].Name, want[i].DataType)
		}
	}
	return nil
}

// goldenInputs orders a vector's inputs as the model takes them.
func goldenInputs(model Model, g manifest.Golden) ([][]byte, error) {
	sizes := model.InputSizes()
	in := make([][]byte, len(sizes))
	for i, t := range model.Inputs() {
		for _, d := range g.Inputs {
			if d.Name == t.Name {
				in[i] = d.Data
			}
		}
		if in[i] == nil {
			return nil, fmt.Errorf("no data for input %q", t.Name)
		}
		if len(in[i]) != sizes[i] {
			return nil, fmt.Errorf("input %q has %d bytes, the model takes %d", t.Name, len(in[i]), sizes[i])
		}
	}
	return in, nil
}

// compare checks every expected output of g against out.
func compare(infos []tensor.Info, out [][]byte, g manifest.Golden) error {
	for _, want := range g.Outputs {
		k := -1
		for i, t := range infos {
			if t.Name == want.Name {
				k = i
			}
		}
		if k < 0 {
			return fmt.Errorf("model has no output %q", want.Name)
		}
		q := infos[k].Quantization
		wv, err := realValues(tensor.DataType(want.DataType), want.Data, q)
		if err != nil {
			return fmt.Errorf("expected %q: %w", want.Name, err)
		}
		gv, err := realValues(infos[k].DataType, out[k], q)
		if err != nil {
			return fmt.Errorf("output %q: %w", want.Name, err)
		}
		if len(wv) != len(gv) {
			return fmt.Errorf("output %q has %d elements, expected %d", want.Name, len(gv), len(wv))
		}
		for i := range wv {
			d := math.Abs(wv[i] - gv[i])
			if math.IsNaN(wv[i]) && math.IsNaN(gv[i]) {
				continue
			}
			if !(d <= g.Tolerance) {
				return fmt.Errorf("output %q element %d is %g, expected %g within %g", want.Name, i, gv[i], wv[i], g.Tolerance)
			}
		}
	}
	return nil
}

// realValues decodes little-endian elements to float64, dequantizing when q
// has a scale.
func realValues(dt tensor.DataType, b []byte, q *tensor.Quantization) ([]float64, error) {
	n := dt.Size()
	if n == 0 || len(b)%n != 0 {
		return nil, fmt.Errorf("cannot compare %d bytes of %s", len(b), dt)
	}
	le := binary.LittleEndian
	out := make([]float64, len(b)/n)
	for i := range out {
		e := b[i*n : (i+1)*n]
		var v float64
		switch dt {
		case tensor.FP32:
			v = float64(math.Float32frombits(le.Uint32(e)))
		case tensor.FP64:
			v = math.Float64frombits(le.Uint64(e))
		case tensor.FP16:
			v = float64(tensorjson.HalfToFloat(le.Uint16(e)))
		case tensor.Uint8, tensor.Bool:
			v = float64(e[0])
		case tensor.Int8:
			v = float64(int8(e[0]))
		case tensor.Uint16:
			v = float64(le.Uint16(e))
		case tensor.Int16:
			v = float64(int16(le.Uint16(e)))
		case tensor.Uint32:
			v = float64(le.Uint32(e))
		case tensor.Int32:
			v = float64(int32(le.Uint32(e)))
		case tensor.Uint64:
			v = float64(le.Uint64(e))
		case tensor.Int64:
			v = float64(int64(le.Uint64(e)))
		default:
			return nil, fmt.Errorf("cannot compare %s", dt)
		}
		if q != nil && q.Scale != 0 {
			v = float64(q.Scale) * (v - float64(q.ZeroPoint))
		}
		out[i] = v
	}
	return out, nil
}
