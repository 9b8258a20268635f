package runtime

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"testing"
)

// repoRoot is the directory holding go.mod.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// modelPath returns a test model fetched by `make setup`; a missing model is
// a failure, not a skip, so CI cannot pass without the real thing.
func modelPath(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("OUTPOST_MODELS")
	if dir == "" {
		dir = filepath.Join(repoRoot(t), ".deps", "models")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test model missing (run `make setup`): %v", err)
	}
	return p
}

func readModel(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(modelPath(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// buildPlugin compiles testdata/plugins/<name>.c into a shared library with
// $OUTPOST_TEST_CC (default gcc), so a cross build run under qemu can use
// the target's compiler (cross/test-arm64.sh sets aarch64-linux-gnu-gcc).
func buildPlugin(t testing.TB, name string) string {
	t.Helper()
	root := repoRoot(t)
	lib := filepath.Join(root, ".deps", "tflite", "linux_"+goruntime.GOARCH)
	out := filepath.Join(t.TempDir(), name+".so")
	cc := os.Getenv("OUTPOST_TEST_CC")
	if cc == "" {
		cc = "gcc"
	}
	cmd := exec.Command(cc, "-shared", "-fPIC", "-O2",
		"-I", filepath.Join(root, "agent", "runtime", "include"),
		"-I", filepath.Join(root, ".deps", "tflite", "include"),
		"-o", out, filepath.Join("testdata", "plugins", name+".c"),
		"-L", lib, "-ltensorflowlite_c", "-Wl,-rpath,"+lib)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building plugin %s: %v\n%s", name, err, b)
	}
	return out
}

// pattern fills a float32 tensor of n bytes with a deterministic, varied
// signal in [-1, 1] so outputs depend on every input element.
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

// maxDiff is the largest absolute difference between two float32 tensors.
func maxDiff(t testing.TB, a, b []byte) float64 {
	t.Helper()
	d, err := diff(a, b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// diff is maxDiff for goroutines other than the test's.
func diff(a, b []byte) (float64, error) {
	if len(a) != len(b) {
		return 0, fmt.Errorf("tensor sizes differ: %d vs %d", len(a), len(b))
	}
	fa, fb := floats(a), floats(b)
	var d float64
	for i := range fa {
		if math.IsNaN(float64(fa[i])) || math.IsNaN(float64(fb[i])) {
			return 0, fmt.Errorf("NaN at %d", i)
		}
		d = math.Max(d, math.Abs(float64(fa[i]-fb[i])))
	}
	return d, nil
}

// runBare runs the model straight through the C API on inputs.
func runBare(t testing.TB, path string, xnnpack bool, in [][]byte, outSizes []int) [][]byte {
	t.Helper()
	r, err := NewBaseline(path, 1, xnnpack)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for i, b := range in {
		if err := r.SetInput(i, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Run(); err != nil {
		t.Fatal(err)
	}
	out := make([][]byte, len(outSizes))
	for i := range out {
		out[i] = append([]byte(nil), r.Output(i)...)
		if len(out[i]) != outSizes[i] {
			t.Fatalf("bare output %d is %d bytes, want %d", i, len(out[i]), outSizes[i])
		}
	}
	return out
}

func outBufs(m *Model) [][]byte {
	sizes := m.OutputSizes()
	out := make([][]byte, len(sizes))
	for i, n := range sizes {
		out[i] = make([]byte, n)
	}
	return out
}

func inputsFor(m *Model, seed float64) [][]byte {
	sizes := m.InputSizes()
	in := make([][]byte, len(sizes))
	for i, n := range sizes {
		in[i] = pattern(n, seed+float64(i))
	}
	return in
}
