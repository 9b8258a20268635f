package runtime

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	tflite "github.com/mattn/go-tflite"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// The bridges in capi.go rely on go-tflite v1.0.5 wrapping exactly one C
// pointer in Model and InterpreterOptions.
func TestGoTFLiteLayout(t *testing.T) {
	ptr := unsafe.Sizeof(uintptr(0))
	assert.Equal(t, ptr, unsafe.Sizeof(tflite.Model{}), "tflite.Model layout changed")
	assert.Equal(t, ptr, unsafe.Sizeof(tflite.InterpreterOptions{}), "tflite.InterpreterOptions layout changed")
}

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		model   string
		inputs  []tensor.Info
		outputs []string
		shapes  [][]int
	}{
		{
			model:   "face_detection_short_range.tflite",
			inputs:  []tensor.Info{{Name: "input", DataType: tensor.FP32, Shape: []int{1, 128, 128, 3}}},
			outputs: []string{"regressors", "classificators"},
			shapes:  [][]int{{1, 896, 16}, {1, 896, 1}},
		},
		{
			model:   "hand_landmark_lite.tflite",
			inputs:  []tensor.Info{{Name: "input_1", DataType: tensor.FP32, Shape: []int{1, 224, 224, 3}}},
			outputs: []string{"Identity", "Identity_1", "Identity_2", "Identity_3"},
			shapes:  [][]int{{1, 63}, {1, 1}, {1, 1}, {1, 63}},
		},
	} {
		t.Run(tc.model, func(t *testing.T) {
			m, err := LoadFile(modelPath(t, tc.model), Options{Workers: 1})
			require.NoError(t, err)
			defer m.Close()
			assert.Equal(t, tc.inputs, m.Inputs())
			require.Len(t, m.Outputs(), len(tc.outputs))
			for i, o := range m.Outputs() {
				assert.Equal(t, tc.outputs[i], o.Name)
				assert.Equal(t, tensor.FP32, o.DataType)
				assert.Equal(t, tc.shapes[i], o.Shape)
				size, err := o.ByteSize()
				require.NoError(t, err)
				assert.Equal(t, size, m.OutputSizes()[i], "output %d byte size", i)
			}
			rep := m.Delegate()
			assert.Equal(t, "xnnpack", rep.Delegate)
			assert.Greater(t, rep.DelegatedNodes, 0)
			assert.LessOrEqual(t, rep.DelegatedNodes, rep.TotalNodes)
			assert.GreaterOrEqual(t, rep.Partitions, 1)
		})
	}
}

func TestBadModels(t *testing.T) {
	face := readModel(t, "face_detection_short_range.tflite")
	flipped := append([]byte(nil), face...)
	copy(flipped[4:8], "XXXX")
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "not a TFLite flatbuffer"},
		{"text", []byte("module github.com/outpost-edge/outpost\n"), "not a TFLite flatbuffer"},
		{"wrong identifier", flipped, "not a TFLite flatbuffer"},
		{"header only", face[:8], "verification failed"},
		{"truncated to 1 KiB", face[:1024], "verification failed"},
		{"truncated to half", face[:len(face)/2], "verification failed"},
		{"last byte missing", face[:len(face)-1], "verification failed"},
		{"unresolved custom op", readModel(t, "selfie_segmentation.tflite"), "Convolution2DTransposeBias"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Load(tc.data, Options{Workers: 1})
			if err == nil {
				m.Close()
				t.Fatal("Load succeeded, want an error")
			}
			assert.ErrorIs(t, err, ErrInvalidModel)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
	_, err := LoadFile(filepath.Join(t.TempDir(), "missing.tflite"), Options{})
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// The pool's outputs must equal a bare C API run of the same model on the
// same input, with and without XNNPACK.
func TestMatchesBareCAPI(t *testing.T) {
	for _, model := range []string{"face_detection_short_range.tflite", "hand_landmark_lite.tflite"} {
		for _, xnn := range []bool{true, false} {
			name := model + "/cpu"
			chain := []DelegateSpec{}
			if xnn {
				name = model + "/xnnpack"
				chain = nil
			}
			t.Run(name, func(t *testing.T) {
				path := modelPath(t, model)
				m, err := LoadFile(path, Options{Workers: 2, Delegates: chain})
				require.NoError(t, err)
				defer m.Close()
				if xnn {
					require.Equal(t, "xnnpack", m.Delegate().Delegate)
				} else {
					require.Equal(t, "cpu", m.Delegate().Delegate)
				}
				for seed := 0.0; seed < 3; seed++ {
					in := inputsFor(m, seed)
					out := outBufs(m)
					require.NoError(t, m.Invoke(context.Background(), in, out))
					want := runBare(t, path, xnn, in, m.OutputSizes())
					for i := range out {
						d := maxDiff(t, want[i], out[i])
						assert.LessOrEqual(t, d, 1e-5, "output %d (%s) differs from the bare C API run", i, m.Outputs()[i].Name)
					}
				}
			})
		}
	}
}

func TestDelegatePlugins(t *testing.T) {
	path := modelPath(t, "face_detection_short_range.tflite")
	good := buildPlugin(t, "xnnpack_plugin")
	for _, tc := range []struct {
		name     string
		chain    []DelegateSpec
		want     string
		fallback string // substring of the recorded reason, if any
	}{
		{"plugin runs", []DelegateSpec{{Kind: External, Path: good, Options: map[string]string{"num_threads": "1"}}}, "external(" + good + ")", ""},
		{"missing file", []DelegateSpec{{Kind: External, Path: "/nonexistent/libdelegate.so"}, {Kind: XNNPACK}}, "xnnpack", "No such file"},
		{"not a plugin", []DelegateSpec{{Kind: External, Path: buildPlugin(t, "no_symbols")}, {Kind: XNNPACK}}, "xnnpack", "does not export tflite_plugin_create_delegate"},
		{"plugin returns no delegate", []DelegateSpec{{Kind: External, Path: buildPlugin(t, "null_plugin")}, {Kind: XNNPACK}}, "xnnpack", "no accelerator found"},
		{"delegate fails to prepare", []DelegateSpec{{Kind: External, Path: buildPlugin(t, "failing_plugin")}, {Kind: XNNPACK}}, "xnnpack", "cannot prepare this graph"},
		{"bad plugin option", []DelegateSpec{{Kind: External, Path: good, Options: map[string]string{"bogus": "1"}}}, "cpu", "unknown option"},
		{"unknown kind", []DelegateSpec{{Kind: "gpu"}}, "cpu", "unknown delegate kind"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := LoadFile(path, Options{Workers: 2, Delegates: tc.chain})
			require.NoError(t, err)
			defer m.Close()
			rep := m.Delegate()
			assert.Equal(t, tc.want, rep.Delegate)
			if tc.want != "cpu" {
				assert.Greater(t, rep.DelegatedNodes, 100, "nodes taken by %s", rep.Delegate)
			}
			if tc.fallback != "" {
				require.NotEmpty(t, rep.Fallbacks)
				assert.Contains(t, rep.Fallbacks[0].Reason, tc.fallback)
			} else {
				assert.Empty(t, rep.Fallbacks)
			}
			// Whatever ran, the answer is the model's.
			in := inputsFor(m, 1)
			out := outBufs(m)
			require.NoError(t, m.Invoke(context.Background(), in, out))
			want := runBare(t, path, true, in, m.OutputSizes())
			for i := range out {
				assert.LessOrEqual(t, maxDiff(t, want[i], out[i]), 1e-4)
			}
		})
	}
}

func TestParseDelegate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want DelegateSpec
		err  bool
	}{
		{"xnnpack", DelegateSpec{Kind: XNNPACK}, false},
		{"CPU", DelegateSpec{Kind: CPU}, false},
		{"external:/usr/lib/libedgetpu.so.1,device=usb", DelegateSpec{Kind: External, Path: "/usr/lib/libedgetpu.so.1", Options: map[string]string{"device": "usb"}}, false},
		{"external:", DelegateSpec{}, true},
		{"external:/x.so,novalue", DelegateSpec{}, true},
		{"xnnpack:4", DelegateSpec{}, true},
		{"gpu", DelegateSpec{}, true},
	} {
		got, err := ParseDelegate(tc.in)
		if tc.err {
			assert.Error(t, err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, got, tc.in)
	}
}

func TestInvokeChecksInputs(t *testing.T) {
	m, err := LoadFile(modelPath(t, "face_detection_short_range.tflite"), Options{Workers: 1})
	require.NoError(t, err)
	defer m.Close()
	ctx := context.Background()
	in := inputsFor(m, 0)
	out := outBufs(m)
	for _, tc := range []struct {
		name    string
		in, out [][]byte
	}{
		{"no inputs", nil, out},
		{"two inputs", [][]byte{in[0], in[0]}, out},
		{"short input", [][]byte{in[0][:100]}, out},
		{"long input", [][]byte{append(append([]byte(nil), in[0]...), 0)}, out},
		{"one output buffer", in, out[:1]},
		{"short output buffer", in, [][]byte{out[0][:8], out[1]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.ErrorIs(t, m.Invoke(ctx, tc.in, tc.out), ErrInput)
		})
	}
	require.NoError(t, m.Invoke(ctx, in, out), "a good call after bad ones")
}

// Many callers share a small pool; every answer must be the one for its own
// input. Run with -race.
func TestConcurrentInvoke(t *testing.T) {
	path := modelPath(t, "face_detection_short_range.tflite")
	m, err := LoadFile(path, Options{Workers: 2})
	require.NoError(t, err)
	defer m.Close()
	const seeds = 3
	var in, want [seeds][][]byte
	for s := range seeds {
		in[s] = inputsFor(m, float64(s))
		want[s] = runBare(t, path, true, in[s], m.OutputSizes())
	}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := outBufs(m)
			for i := range 15 {
				s := (g + i) % seeds
				if err := m.Invoke(context.Background(), in[s], out); err != nil {
					t.Error(err)
					return
				}
				for o := range out {
					d, err := diff(want[s][o], out[o])
					if err != nil {
						t.Error(err)
						return
					}
					if d > 1e-5 {
						bad.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	assert.Zero(t, bad.Load(), "answers mixed up between callers")
}

// The wait in front of the pool is bounded and follows the context.
func TestPoolQueue(t *testing.T) {
	m, err := LoadFile(modelPath(t, "face_detection_short_range.tflite"), Options{Workers: 1, MaxQueue: 1})
	require.NoError(t, err)
	defer m.Close()
	in := inputsFor(m, 0)

	// Hold the only interpreter inside the output callback.
	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := m.InvokeFunc(context.Background(), in, func(i int, _ []byte) error {
			if i == 0 {
				close(held)
				<-release
			}
			return nil
		}, 2)
		done <- err
	}()
	<-held

	// On failure, let the held call finish so the deferred Close returns.
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()

	// One caller may wait; it gives up when its context ends. The context
	// is cancelled only once the caller is seen waiting, so a slow machine
	// cannot make it give up first.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiter := make(chan error, 1)
	go func() { waiter <- m.Invoke(ctx, in, outBufs(m)) }()
	require.Eventually(t, func() bool { return m.Waiting() == 1 }, 30*time.Second, time.Millisecond)

	// A second waiter is over the bound and fails at once.
	assert.ErrorIs(t, m.Invoke(context.Background(), in, outBufs(m)), ErrOverloaded)
	cancel()
	assert.ErrorIs(t, <-waiter, context.Canceled)

	released = true
	close(release)
	require.NoError(t, <-done)
	assert.NoError(t, m.Invoke(context.Background(), in, outBufs(m)), "pool usable after the queue drained")
}

func TestClose(t *testing.T) {
	m, err := LoadFile(modelPath(t, "face_detection_short_range.tflite"), Options{Workers: 1})
	require.NoError(t, err)
	require.NoError(t, m.Close())
	require.NoError(t, m.Close(), "second Close")
	assert.ErrorIs(t, m.Invoke(context.Background(), inputsFor(m, 0), outBufs2(m)), ErrClosed)
}

func outBufs2(m *Model) [][]byte { return make([][]byte, len(m.Outputs())) }

// Swapping models under concurrent load fails no call, and every answer comes
// from a model that was current while the call ran.
func TestSlotSwapUnderLoad(t *testing.T) {
	face := readModel(t, "face_detection_short_range.tflite")
	var slot Slot[int]
	first, err := Load(face, Options{Workers: 2})
	require.NoError(t, err)
	slot.Swap(first, 1)
	in := inputsFor(first, 0)
	want := runBare(t, modelPath(t, "face_detection_short_range.tflite"), true, in, first.OutputSizes())

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var calls, failures atomic.Int64
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := [][]byte{make([]byte, len(want[0])), make([]byte, len(want[1]))}
			for ctx.Err() == nil {
				err := slot.Do(func(m *Model, _ int) error { return m.Invoke(context.Background(), in, out) })
				calls.Add(1)
				if err != nil {
					failures.Add(1)
					continue
				}
				if d, err := diff(want[0], out[0]); err != nil || d > 1e-5 {
					failures.Add(1)
				}
			}
		}()
	}
	const swaps = 15
	for v := 2; v <= swaps+1; v++ {
		next, err := Load(face, Options{Workers: 2})
		require.NoError(t, err)
		old, ok := slot.Swap(next, v)
		require.True(t, ok)
		require.Equal(t, v-1, old)
	}
	stop()
	wg.Wait()
	_, tag, _ := slot.Current()
	assert.Equal(t, swaps+1, tag)
	assert.Zero(t, failures.Load(), "failed calls out of %d", calls.Load())
	assert.Greater(t, calls.Load(), int64(swaps), "load ran during the swaps")
	require.NoError(t, slot.Close())
	assert.ErrorIs(t, slot.Do(func(*Model, int) error { return nil }), ErrEmpty)
}

func TestErrorsAreSentinels(t *testing.T) {
	_, err := Load([]byte("nope"), Options{})
	assert.True(t, errors.Is(err, ErrInvalidModel))
	assert.True(t, strings.HasPrefix(err.Error(), "runtime: "), err.Error())
}
