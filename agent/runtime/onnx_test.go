package runtime

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/models/testmodel"
)

// sileroInputs serves Silero VAD v5 on 512-sample frames at 16 kHz.
var sileroInputs = map[string]InputSpec{
	"input": {Shape: []int{1, 512}},
	"state": {Shape: []int{2, 1, 128}},
	"sr":    {Warm: 16000},
}

const sileroFrame = 512 * 4

func loadSilero(t testing.TB, workers int) *Model {
	t.Helper()
	m, err := Load(readModel(t, testmodel.SileroVAD), Options{Workers: workers, Inputs: sileroInputs})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

func TestDetect(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want Format
		err  string
	}{
		{"tflite", readModel(t, "face_detection_short_range.tflite"), TFLite, ""},
		{"onnx", readModel(t, testmodel.SileroVAD), ONNX, ""},
		{"tiny onnx", testmodel.TinyONNX(13), ONNX, ""},
		{"empty", nil, "", "too short"},
		{"text", []byte("hello, this is not a model"), "", "nor an ONNX model"},
		{"onnx tag then garbage", []byte{0x08, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, "", "looks like ONNX"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Detect(tc.data)
			assert.Equal(t, tc.want, got)
			if tc.err == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tc.err)
			}
		})
	}
}

func TestONNXRuntimeVersion(t *testing.T) {
	loadSilero(t, 1)
	assert.Equal(t, "1.30.0", ONNXVersion())
}

func TestONNXDescribe(t *testing.T) {
	m := loadSilero(t, 2)
	assert.Equal(t, ONNX, m.Format())
	assert.Equal(t, []tensor.Info{
		{Name: "input", DataType: tensor.FP32, Shape: []int{1, 512}},
		{Name: "state", DataType: tensor.FP32, Shape: []int{2, 1, 128}},
		{Name: "sr", DataType: tensor.Int64, Shape: []int{}},
	}, m.Inputs())
	assert.Equal(t, []tensor.Info{
		{Name: "output", DataType: tensor.FP32, Shape: []int{1, 1}},
		{Name: "stateN", DataType: tensor.FP32, Shape: []int{2, 1, 128}},
	}, m.Outputs())
	assert.Equal(t, []int{2048, 1024, 8}, m.InputSizes())
	assert.Equal(t, []int{4, 1024}, m.OutputSizes())
	assert.Equal(t, 2, m.Workers())
	assert.Equal(t, "cpu", m.Delegate().Delegate)
	assert.Empty(t, m.Delegate().Fallbacks, "the default chain is TFLite's; ONNX runs on CPU without a fallback")
	warm := m.WarmInputs()
	assert.Equal(t, int64(16000), int64(binary.LittleEndian.Uint64(warm[2])))
}

// sileroFrames is a deterministic test signal: silence, then a voiced
// harmonic tone, then noise, each frame 512 float32 samples.
func sileroFrames(n int) [][]byte {
	frames := make([][]byte, n)
	seed := uint32(1)
	for f := range frames {
		b := make([]byte, sileroFrame)
		for i := 0; i < 512; i++ {
			t := float64(f*512+i) / 16000
			var v float64
			switch {
			case f < n/3:
				v = 0
			case f < 2*n/3:
				v = 0.4*math.Sin(2*math.Pi*150*t) + 0.2*math.Sin(2*math.Pi*300*t) + 0.1*math.Sin(2*math.Pi*450*t)
			default:
				seed = seed*1664525 + 1013904223
				v = (float64(seed>>8)/float64(1<<24) - 0.5) * 0.2
			}
			binary.LittleEndian.PutUint32(b[i*4:], math.Float32bits(float32(v)))
		}
		frames[f] = b
	}
	return frames
}

// runSilero runs frames through m in order, feeding each stateN back as the
// next state, and returns per frame the probability and the state, as
// ortref writes them.
func runSilero(t testing.TB, m *Model, frames [][]byte) []byte {
	t.Helper()
	state := make([]byte, 1024)
	sr := make([]byte, 8)
	binary.LittleEndian.PutUint64(sr, 16000)
	var got bytes.Buffer
	for _, f := range frames {
		out := outBufs(m)
		require.NoError(t, m.Invoke(context.Background(), [][]byte{f, state, sr}, out))
		got.Write(out[0])
		got.Write(out[1])
		state = out[1]
	}
	return got.Bytes()
}

// TestSileroStateful serves the stateful model: the state output fed back
// changes the next frame's answer, silence stays low and the tone is heard.
func TestSileroStateful(t *testing.T) {
	m := loadSilero(t, 1)
	frames := sileroFrames(12)
	got := runSilero(t, m, frames)
	probs := make([]float32, len(frames))
	for i := range probs {
		probs[i] = math.Float32frombits(binary.LittleEndian.Uint32(got[i*(4+1024):]))
	}
	t.Logf("speech probabilities: %v", probs)
	for i := 0; i < 4; i++ {
		assert.Less(t, probs[i], float32(0.2), "silence frame %d", i)
	}
	var maxTone float32
	for _, p := range probs[4:8] {
		maxTone = max(maxTone, p)
	}
	assert.Greater(t, maxTone, probs[0], "the tone must score above silence")

	// The same frame with a fresh state answers differently than after the
	// history: the state is really carried.
	fresh := outBufs(m)
	sr := make([]byte, 8)
	binary.LittleEndian.PutUint64(sr, 16000)
	require.NoError(t, m.Invoke(context.Background(), [][]byte{frames[6], make([]byte, 1024), sr}, fresh))
	assert.NotEqual(t, got[6*(4+1024):6*(4+1024)+4], fresh[0], "frame 6 after history vs from a zero state")

	// The worker keeps the sample-rate scalar between calls: a new value is
	// used (8 kHz wants 256-sample frames, so 512 fails inside the model),
	// and going back gives the 16 kHz answer again.
	sr8k := make([]byte, 8)
	binary.LittleEndian.PutUint64(sr8k, 8000)
	err := m.Invoke(context.Background(), [][]byte{frames[6], make([]byte, 1024), sr8k}, outBufs(m))
	assert.Error(t, err, "512 samples at 8 kHz")
	again := outBufs(m)
	require.NoError(t, m.Invoke(context.Background(), [][]byte{frames[6], make([]byte, 1024), sr}, again))
	assert.Equal(t, fresh, again)
}

// TestSileroMatchesCAPI: the pool's outputs equal, bit for bit, a small C
// program on the ONNX Runtime C API (testdata/ortref) fed the same frames.
func TestSileroMatchesCAPI(t *testing.T) {
	frames := sileroFrames(10)
	ref := runORTRef(t, modelPath(t, testmodel.SileroVAD), frames)
	m := loadSilero(t, 2)
	got := runSilero(t, m, frames)
	require.Equal(t, len(ref), len(got))
	if !bytes.Equal(ref, got) {
		d := maxDiff(t, ref, got)
		t.Fatalf("Go path differs from the C API reference (max abs diff %g)", d)
	}
}

// runORTRef builds testdata/ortref/ortref.c with $OUTPOST_TEST_CC (default
// gcc) against the C API header onnxruntime_go vendors and the fetched
// library, and runs it on frames.
func runORTRef(t testing.TB, model string, frames [][]byte) []byte {
	t.Helper()
	root := repoRoot(t)
	lib := filepath.Join(root, ".deps", "onnxruntime", "linux_"+goruntime.GOARCH)
	hdr, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/yalue/onnxruntime_go").Output()
	if err != nil || len(bytes.TrimSpace(hdr)) == 0 {
		// Under qemu (cross/test-arm64.sh) there is no go tool: the script
		// passes the directory.
		hdr = []byte(os.Getenv("OUTPOST_ORT_HEADERS"))
	}
	require.NotEmpty(t, bytes.TrimSpace(hdr), "cannot find onnxruntime_go's headers (go list failed: %v)", err)
	cc := os.Getenv("OUTPOST_TEST_CC")
	if cc == "" {
		cc = "gcc"
	}
	bin := filepath.Join(t.TempDir(), "ortref")
	cmd := exec.Command(cc, "-O2", "-I", string(bytes.TrimSpace(hdr)), "-o", bin,
		filepath.Join("testdata", "ortref", "ortref.c"),
		"-L", lib, "-l:libonnxruntime.so.1", "-Wl,-rpath,"+lib)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building ortref: %v\n%s", err, b)
	}
	run := exec.Command(bin, model, strconv.Itoa(len(frames)))
	if q := os.Getenv("OUTPOST_TEST_EXEC"); q != "" {
		// A foreign-architecture program goes through the emulator.
		args := strings.Fields(q)
		run = exec.Command(args[0], append(args[1:], bin, model, strconv.Itoa(len(frames)))...)
	}
	run.Stdin = bytes.NewReader(bytes.Join(frames, nil))
	var stderr bytes.Buffer
	run.Stderr = &stderr
	out, err := run.Output()
	if err != nil {
		t.Fatalf("ortref: %v\n%s", err, stderr.Bytes())
	}
	require.Len(t, out, len(frames)*(4+1024))
	return out
}

// TestSileroConcurrent: workers share one session; callers in parallel get
// exactly what a lone caller gets.
func TestSileroConcurrent(t *testing.T) {
	m := loadSilero(t, 2)
	frames := sileroFrames(6)
	want := runSilero(t, m, frames)
	const callers = 4
	got := make([][]byte, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			state := make([]byte, 1024)
			sr := make([]byte, 8)
			binary.LittleEndian.PutUint64(sr, 16000)
			var buf bytes.Buffer
			for _, f := range frames {
				out := outBufs(m)
				if err := m.Invoke(context.Background(), [][]byte{f, state, sr}, out); err != nil {
					errs[c] = err
					return
				}
				buf.Write(out[0])
				buf.Write(out[1])
				state = out[1]
			}
			got[c] = buf.Bytes()
		}()
	}
	wg.Wait()
	for c := range callers {
		require.NoError(t, errs[c])
		assert.True(t, bytes.Equal(want, got[c]), "caller %d differs", c)
	}
}

func TestTinyONNX(t *testing.T) {
	m, err := Load(testmodel.TinyONNX(13), Options{Workers: 1})
	require.NoError(t, err)
	defer m.Close()
	in := make([]byte, 16)
	for i, v := range []float32{1, -2, 0.5, 3} {
		binary.LittleEndian.PutUint32(in[i*4:], math.Float32bits(v))
	}
	out := outBufs(m)
	require.NoError(t, m.Invoke(context.Background(), [][]byte{in}, out))
	assert.Equal(t, []float32{2, -4, 1, 6}, floats(out[0]))
	// Wrong sizes are the caller's error, as for TFLite.
	err = m.Invoke(context.Background(), [][]byte{in[:8]}, out)
	assert.ErrorIs(t, err, ErrInput)
}

// TestTrapONNX: a model that fails on some inputs fails those calls with an
// error (not a crash, not ErrInput: the model's fault), and the next call on
// the same interpreter answers.
func TestTrapONNX(t *testing.T) {
	m, err := Load(testmodel.TrapONNX(), Options{Workers: 1})
	require.NoError(t, err)
	defer m.Close()
	in := func(vs ...float32) [][]byte {
		b := make([]byte, 16)
		for i, v := range vs {
			binary.LittleEndian.PutUint32(b[i*4:], math.Float32bits(v))
		}
		return [][]byte{b}
	}
	out := outBufs(m)
	require.NoError(t, m.Invoke(context.Background(), in(1, 2, 0, 7), out))
	assert.Equal(t, []float32{2, 4, 0, 14}, floats(out[0]))
	for _, bad := range [][]float32{{1, 2, 8, 3}, {100, 0, 0, 0}, {0, 0, 0, -9}} {
		err := m.Invoke(context.Background(), in(bad...), out)
		require.Error(t, err, "input %v", bad)
		assert.NotErrorIs(t, err, ErrInput, "input %v", bad)
	}
	require.NoError(t, m.Invoke(context.Background(), in(3, 3, 3, 3), out))
	assert.Equal(t, []float32{6, 6, 6, 6}, floats(out[0]))
}

func TestBadONNX(t *testing.T) {
	silero := readModel(t, testmodel.SileroVAD)
	garbage := append([]byte{0x08, 0x08}, bytes.Repeat([]byte{0xff, 0x13, 0x7a}, 300)...)
	for _, tc := range []struct {
		name string
		data []byte
		opts Options
		want string
	}{
		{"truncated to 1 KiB", silero[:1024], Options{}, "onnx: not a valid model"},
		{"truncated to half", silero[:len(silero)/2], Options{}, "onnx: not a valid model"},
		{"last byte missing", silero[:len(silero)-1], Options{}, "onnx: not a valid model"},
		{"garbage after the ONNX tag", garbage, Options{}, "onnx: not a valid model"},
		{"unsupported opset", testmodel.TinyONNX(99999), Options{}, "operator set 99999"},
		{"scalar output", testmodel.ScalarONNX(), Options{}, `output "s" is a scalar; scalar outputs are not served yet`},
		{"configured rank wrong", silero, Options{Inputs: map[string]InputSpec{"input": {Shape: []int{512}}}}, "has rank 1"},
		{"fixed dimension contradicted", silero, Options{Inputs: map[string]InputSpec{"state": {Shape: []int{3, 1, 128}}}}, "differs from the model's"},
		{"warm-up run fails", silero, Options{Inputs: map[string]InputSpec{"input": {Shape: []int{1, 1}}, "sr": {Warm: 16000}}}, "first run on the warm-up inputs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Workers = 1
			m, err := Load(tc.data, tc.opts)
			if err == nil {
				m.Close()
				t.Fatal("Load succeeded, want an error")
			}
			assert.ErrorIs(t, err, ErrInvalidModel)
			assert.Contains(t, err.Error(), tc.want)
			t.Log(err)
		})
	}
}

// TestExecutionProviderChain: the library here is CPU only, so CUDA and
// TensorRT are skipped with the reason and CPU (always last) runs the model;
// TFLite delegates in the chain are skipped for ONNX and the other way round.
func TestExecutionProviderChain(t *testing.T) {
	chain := []DelegateSpec{{Kind: TensorRT}, {Kind: CUDA, Options: map[string]string{"device_id": "0"}}, {Kind: XNNPACK}}
	m, err := Load(readModel(t, testmodel.SileroVAD), Options{Workers: 1, Inputs: sileroInputs, Delegates: chain})
	require.NoError(t, err)
	defer m.Close()
	rep := m.Delegate()
	assert.Equal(t, "cpu", rep.Delegate)
	require.Len(t, rep.Fallbacks, 3)
	assert.Equal(t, "tensorrt", rep.Fallbacks[0].Delegate)
	assert.Equal(t, "cuda", rep.Fallbacks[1].Delegate)
	assert.NotEmpty(t, rep.Fallbacks[1].Reason)
	assert.Contains(t, rep.Fallbacks[2].Reason, "does not run ONNX")
	t.Logf("fallbacks: %+v", rep.Fallbacks)

	tf, err := Load(readModel(t, "face_detection_short_range.tflite"), Options{Workers: 1, Delegates: []DelegateSpec{{Kind: CUDA}, {Kind: XNNPACK}}})
	require.NoError(t, err)
	defer tf.Close()
	assert.Equal(t, "xnnpack", tf.Delegate().Delegate)
	require.Len(t, tf.Delegate().Fallbacks, 1)
	assert.Contains(t, tf.Delegate().Fallbacks[0].Reason, "does not run TFLite")
}

// TestSlotSwapsRuntimes: one slot moves from a TFLite model to an ONNX one
// and back; the Model interface is the same for both.
func TestSlotSwapsRuntimes(t *testing.T) {
	var s Slot[string]
	defer s.Close()
	tf, err := Load(readModel(t, "face_detection_short_range.tflite"), Options{Workers: 1})
	require.NoError(t, err)
	s.Swap(tf, "tflite")
	on, err := Load(testmodel.TinyONNX(13), Options{Workers: 1})
	require.NoError(t, err)
	old, ok := s.Swap(on, "onnx")
	assert.True(t, ok)
	assert.Equal(t, "tflite", old)
	err = s.Do(func(m *Model, tag string) error {
		assert.Equal(t, ONNX, m.Format())
		return m.Invoke(context.Background(), [][]byte{make([]byte, 16)}, outBufs(m))
	})
	require.NoError(t, err)
	_, err = tf.InvokeFunc(context.Background(), [][]byte{make([]byte, tf.InputSizes()[0])}, func(int, []byte) error { return nil }, len(tf.Outputs()))
	assert.ErrorIs(t, err, ErrClosed)
}

// RSS stays flat over repeated ONNX load/run/free cycles (session, worker
// mappings, per-run scalars). A leak of the model bytes alone would add
// 2.3 MB per cycle.
func TestONNXNoLeakOverLoadCycles(t *testing.T) {
	cycles := 60
	if testing.Short() {
		cycles = 30
	}
	data := readModel(t, testmodel.SileroVAD)
	frame := sileroFrames(6)[5]
	sr := make([]byte, 8)
	binary.LittleEndian.PutUint64(sr, 16000)
	cycle := func() {
		m, err := Load(data, Options{Workers: 2, Inputs: sileroInputs})
		require.NoError(t, err)
		require.NoError(t, m.Invoke(context.Background(), [][]byte{frame, make([]byte, 1024), sr}, outBufs(m)))
		require.NoError(t, m.Close())
	}
	for range cycles / 2 {
		cycle()
	}
	mid := rssBytes(t)
	for range cycles / 2 {
		cycle()
	}
	grew := rssBytes(t) - mid
	t.Logf("RSS grew %d KB over the last %d of %d ONNX load/unload cycles", grew/1024, cycles/2, cycles)
	require.Less(t, grew, int64(16<<20), "RSS grew %d KB over %d cycles", grew/1024, cycles/2)
}

// BenchmarkSileroFrame: one 32 ms frame (512 samples at 16 kHz) through the
// pool with the state fed back; us/frame against the 32 ms of audio it
// covers says how much of a core a live stream takes.
func BenchmarkSileroFrame(b *testing.B) {
	m := loadSilero(b, 1)
	frames := sileroFrames(32)
	state := make([]byte, 1024)
	sr := make([]byte, 8)
	binary.LittleEndian.PutUint64(sr, 16000)
	out := outBufs(m)
	b.ResetTimer()
	for i := range b.N {
		if err := m.Invoke(context.Background(), [][]byte{frames[i%len(frames)], state, sr}, out); err != nil {
			b.Fatal(err)
		}
		copy(state, out[1])
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "us/frame")
}

// Without the ONNX Runtime library an ONNX load fails with an error that
// names the library, and TFLite models load and run as before. The library
// is opened once per process, so the check runs in a child process.
func TestONNXRuntimeMissing(t *testing.T) {
	if os.Getenv("OUTPOST_TEST_ORT_MISSING") == "1" {
		_, err := Load(testmodel.TinyONNX(13), Options{Workers: 1})
		require.Error(t, err)
		assert.Contains(t, err.Error(), "runtime: onnx runtime /nonexistent/libonnxruntime.so.1")
		_, err = Load(testmodel.TinyONNX(13), Options{Workers: 1})
		assert.Error(t, err, "the second load fails the same way")
		tf, err := Load(readModel(t, "face_detection_short_range.tflite"), Options{Workers: 1})
		require.NoError(t, err)
		defer tf.Close()
		require.NoError(t, tf.Invoke(context.Background(), inputsFor(tf, 0), outBufs(tf)))
		return
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	args := []string{"-test.run", "^TestONNXRuntimeMissing$", "-test.v"}
	cmd := exec.Command(exe, args...)
	if q := os.Getenv("OUTPOST_TEST_EXEC"); q != "" {
		f := strings.Fields(q)
		cmd = exec.Command(f[0], append(append(f[1:], exe), args...)...)
	}
	cmd.Env = append(os.Environ(), "OUTPOST_TEST_ORT_MISSING=1", "OUTPOST_ONNXRUNTIME_LIB=/nonexistent/libonnxruntime.so.1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "child:\n%s", out)
	assert.Contains(t, string(out), "--- PASS: TestONNXRuntimeMissing")
}
