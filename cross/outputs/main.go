//go:build cgo

// Command outputs runs the test models through the agent's runtime on fixed
// inputs and either writes their outputs to a reference file or compares
// them with one. cross/test-arm64.sh writes the reference natively (amd64)
// and compares under qemu (arm64) in the same run, so the two architectures
// are checked against each other, not against a stored file.
//
//	outputs -models DIR -write ref.json
//	outputs -models DIR -compare ref.json [-rtol 1e-3 -atol 1e-4]
//	outputs -onnx ...   (Silero VAD through ONNX Runtime instead)
//
// Each model runs through the interpreter pool with XNNPACK and with plain
// CPU, and through the bare C API; on one architecture the pool must equal
// the bare run (1e-5), across architectures every output must agree within
// atol + rtol*|reference|. FMA and vector widths differ between x86-64 and
// ARM64 kernels, so bit equality is not expected across them.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"

	"github.com/outpost-edge/outpost/agent/runtime"
)

// models are the test models the agent can load with the stock kernels.
var models = []string{
	"face_detection_short_range.tflite",
	"face_detection_full_range.tflite",
	"hand_landmark_lite.tflite",
}

// reference is the file format: run key -> output index -> values.
type reference struct {
	Arch string                 `json:"arch"`
	Runs map[string][][]float32 `json:"runs"`
}

func main() {
	dir := flag.String("models", ".deps/models", "directory holding the test models")
	write := flag.String("write", "", "write the outputs to this reference file")
	compare := flag.String("compare", "", "compare the outputs with this reference file")
	rtol := flag.Float64("rtol", 1e-3, "relative tolerance across architectures")
	atol := flag.Float64("atol", 1e-4, "absolute tolerance across architectures")
	onnxOnly := flag.Bool("onnx", false, "run Silero VAD v5 through ONNX Runtime (frames in order, state fed back) instead of the TFLite models")
	flag.Parse()
	if (*write == "") == (*compare == "") {
		fmt.Fprintln(os.Stderr, "outputs: give exactly one of -write or -compare")
		os.Exit(2)
	}
	if err := run(*dir, *write, *compare, *rtol, *atol, *onnxOnly); err != nil {
		fmt.Fprintln(os.Stderr, "outputs:", err)
		os.Exit(1)
	}
}

func run(dir, write, compare string, rtol, atol float64, onnxOnly bool) error {
	got := reference{Arch: goruntime.GOARCH, Runs: map[string][][]float32{}}
	if onnxOnly {
		if err := runSilero(filepath.Join(dir, "silero_vad_v5.onnx"), got.Runs); err != nil {
			return err
		}
	}
	for _, name := range models {
		if onnxOnly {
			break
		}
		if err := runModel(filepath.Join(dir, name), name, got.Runs); err != nil {
			return err
		}
	}
	if write != "" {
		b, err := json.Marshal(got)
		if err != nil {
			return err
		}
		fmt.Printf("outputs: %s: %d runs written to %s\n", got.Arch, len(got.Runs), write)
		return os.WriteFile(write, b, 0o644)
	}
	b, err := os.ReadFile(compare)
	if err != nil {
		return err
	}
	var want reference
	if err := json.Unmarshal(b, &want); err != nil {
		return fmt.Errorf("%s: %w", compare, err)
	}
	return check(want, got, rtol, atol)
}

// runModel runs one model on two fixed inputs in every mode and records the
// outputs under "model/mode/seed".
func runModel(path, name string, runs map[string][][]float32) error {
	for _, mode := range []string{"xnnpack", "cpu"} {
		opts := runtime.Options{Workers: 1}
		if mode == "cpu" {
			opts.Delegates = []runtime.DelegateSpec{}
		}
		m, err := runtime.LoadFile(path, opts)
		if err != nil {
			return err
		}
		if d := m.Delegate().Delegate; d != mode {
			m.Close()
			return fmt.Errorf("%s: ran on %s, want %s", name, d, mode)
		}
		for _, seed := range []float64{0, 1} {
			in := make([][]byte, len(m.InputSizes()))
			for i, n := range m.InputSizes() {
				in[i] = pattern(n, seed+float64(i))
			}
			out := make([][]byte, len(m.OutputSizes()))
			for i, n := range m.OutputSizes() {
				out[i] = make([]byte, n)
			}
			if err := m.Invoke(context.Background(), in, out); err != nil {
				m.Close()
				return fmt.Errorf("%s/%s: %w", name, mode, err)
			}
			bare, err := runBare(path, mode == "xnnpack", in, len(out))
			if err != nil {
				m.Close()
				return fmt.Errorf("%s/%s bare: %w", name, mode, err)
			}
			key := fmt.Sprintf("%s/%s/%g", name, mode, seed)
			for i := range out {
				if d := maxAbs(floats(out[i]), floats(bare[i])); d > 1e-5 {
					m.Close()
					return fmt.Errorf("%s output %d: pool differs from the bare C API by %g", key, i, d)
				}
				runs[key] = append(runs[key], floats(out[i]))
			}
		}
		m.Close()
	}
	return nil
}

// runSilero runs 8 frames of a fixed signal through Silero VAD v5 in order,
// feeding each state output back, and records every frame's outputs.
func runSilero(path string, runs map[string][][]float32) error {
	m, err := runtime.LoadFile(path, runtime.Options{Workers: 1, Inputs: map[string]runtime.InputSpec{
		"input": {Shape: []int{1, 512}}, "state": {Shape: []int{2, 1, 128}}, "sr": {Warm: 16000}}})
	if err != nil {
		return err
	}
	defer m.Close()
	state := make([]byte, 1024)
	sr := make([]byte, 8)
	binary.LittleEndian.PutUint64(sr, 16000)
	for f := range 8 {
		in := [][]byte{pattern(2048, float64(f)), state, sr}
		out := [][]byte{make([]byte, 4), make([]byte, 1024)}
		if err := m.Invoke(context.Background(), in, out); err != nil {
			return fmt.Errorf("silero frame %d: %w", f, err)
		}
		key := fmt.Sprintf("silero_vad_v5.onnx/cpu/frame%d", f)
		runs[key] = [][]float32{floats(out[0]), floats(out[1])}
		state = out[1]
	}
	return nil
}

func runBare(path string, xnnpack bool, in [][]byte, nOut int) ([][]byte, error) {
	r, err := runtime.NewBaseline(path, 1, xnnpack)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	for i, b := range in {
		if err := r.SetInput(i, b); err != nil {
			return nil, err
		}
	}
	if err := r.Run(); err != nil {
		return nil, err
	}
	out := make([][]byte, nOut)
	for i := range out {
		out[i] = slices.Clone(r.Output(i))
	}
	return out, nil
}

// check compares every run of want with got and prints the worst error per
// model and mode; any value outside tolerance, NaN or missing run fails.
func check(want, got reference, rtol, atol float64) error {
	keys := make([]string, 0, len(want.Runs))
	for k := range want.Runs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(keys) == 0 || len(keys) != len(got.Runs) {
		return fmt.Errorf("%d runs in the reference, %d here", len(keys), len(got.Runs))
	}
	bad := 0
	for _, k := range keys {
		g, ok := got.Runs[k]
		if !ok || len(g) != len(want.Runs[k]) {
			return fmt.Errorf("%s: outputs missing or of a different count", k)
		}
		worst, worstRel := 0.0, 0.0
		for i, w := range want.Runs[k] {
			if len(w) != len(g[i]) {
				return fmt.Errorf("%s output %d: %d values, reference has %d", k, i, len(g[i]), len(w))
			}
			for j := range w {
				a, b := float64(w[j]), float64(g[i][j])
				d := math.Abs(a - b)
				if math.IsNaN(a) || math.IsNaN(b) || d > atol+rtol*math.Abs(a) {
					if bad < 10 {
						fmt.Printf("outputs: %s output %d[%d]: %s %g, %s %g\n", k, i, j, want.Arch, a, got.Arch, b)
					}
					bad++
				}
				worst = math.Max(worst, d)
				if a != 0 {
					worstRel = math.Max(worstRel, d/math.Abs(a))
				}
			}
		}
		fmt.Printf("outputs: %-52s max |%s-%s| %.3g (rel %.3g)\n", k, got.Arch, want.Arch, worst, worstRel)
	}
	if bad > 0 {
		return fmt.Errorf("%d values outside atol %g + rtol %g", bad, atol, rtol)
	}
	fmt.Printf("outputs: %s matches %s on %d runs within atol %g + rtol %g\n", got.Arch, want.Arch, len(keys), atol, rtol)
	return nil
}

// pattern is the same deterministic input the runtime tests use: a varied
// signal in [-1, 1] so every output depends on every input element.
func pattern(n int, seed float64) []byte {
	b := make([]byte, n)
	for i := 0; i < n/4; i++ {
		v := float32(math.Sin(float64(i)*0.37 + seed))
		binary.LittleEndian.PutUint32(b[i*4:], math.Float32bits(v))
	}
	return b
}

func floats(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[i*4:]))
	}
	return out
}

func maxAbs(a, b []float32) float64 {
	var d float64
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}
