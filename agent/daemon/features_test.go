package daemon

import (
	"context"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/api"
	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/stream"
	"github.com/outpost-edge/outpost/agent/telemetry"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/updater"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/models/tflite"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// faceHook is the face model loaded for real, a reference profile built by
// running it over generated inputs, and the telemetry hook that counts the
// features of the requests it answers.
type faceHook struct {
	m        *runtime.Model
	hook     inferenceTelemetry
	inf      api.Inference
	in, out  [][]byte
	features int
}

func newFaceHook(tb testing.TB) *faceHook {
	dir := os.Getenv("OUTPOST_MODELS")
	if dir == "" {
		dir = filepath.Join("..", "..", ".deps", "models")
	}
	data, err := os.ReadFile(filepath.Join(dir, "face_detection_short_range.tflite"))
	if err != nil {
		tb.Skipf("test model missing (make setup): %v", err)
	}
	sig, err := tflite.Read(data)
	if err != nil {
		tb.Fatal(err)
	}
	man := manifest.Manifest{Inputs: sig.Inputs, Outputs: sig.Outputs}
	x, err := man.Extractor()
	if err != nil {
		tb.Fatal(err)
	}
	m, err := runtime.Load(data, runtime.Options{Workers: 1, Threads: 1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	h := &faceHook{m: m}
	for _, n := range m.InputSizes() {
		h.in = append(h.in, make([]byte, n))
	}
	for _, n := range m.OutputSizes() {
		h.out = append(h.out, make([]byte, n))
	}
	b := profile.NewBuilder(x.Names())
	vals := make([]float64, x.Len())
	for i := range 25 {
		fill(h.in[0], float32(i)/25)
		if err := m.Invoke(context.Background(), h.in, h.out); err != nil {
			tb.Fatal(err)
		}
		if err := x.Extract(h.in, h.out, vals); err != nil {
			tb.Fatal(err)
		}
		if err := b.Add(vals); err != nil {
			tb.Fatal(err)
		}
	}
	p, err := b.Build(profile.DefaultBins)
	if err != nil {
		tb.Fatal(err)
	}
	q, err := telemetry.New(telemetry.Options{Path: filepath.Join(tb.TempDir(), "t.db"), SampleRate: -1})
	if err != nil {
		tb.Fatal(err)
	}
	refs := newReferences(nil)
	ref := &reference{p: p, x: x}
	ref.bufs.New = func() any { return &featureBuf{vals: make([]float64, x.Len())} }
	e := catalog.Entry{Name: "face", Version: 1, Digest: "sha256:ab", Inputs: m.Inputs(), Outputs: m.Outputs()}
	refs.byDigest[e.Digest] = ref
	h.hook = inferenceTelemetry{q: q, refs: refs}
	h.features = x.Len()
	h.inf = api.Inference{Model: e, Code: 200, Latency: time.Millisecond}
	for i, info := range m.Inputs() {
		h.inf.Inputs = append(h.inf.Inputs, tensor.Tensor{Name: info.Name, DataType: info.DataType, Shape: info.Shape, Data: h.in[i]})
	}
	for i, info := range m.Outputs() {
		h.inf.Outputs = append(h.inf.Outputs, tensor.Tensor{Name: info.Name, DataType: info.DataType, Shape: info.Shape, Data: h.out[i]})
	}
	return h
}

func fill(b []byte, level float32) {
	for i := 0; i+4 <= len(b); i += 4 {
		binary.LittleEndian.PutUint32(b[i:], math.Float32bits(level+0.1*float32(math.Sin(float64(i)*0.01))))
	}
}

func (h *faceHook) invoke(tb testing.TB) {
	if err := h.m.Invoke(context.Background(), h.in, h.out); err != nil {
		tb.Fatal(err)
	}
}

// The feature hook costs no allocation per request (the aggregate's
// counting is tested in agent/telemetry, from the outside in
// cmd/outpost-agent's TestPushReferenceFeaturesCounted).
func TestFeatureHookDoesNotAllocate(t *testing.T) {
	h := newFaceHook(t)
	h.invoke(t)
	lookup := h.hook.refs.lookup
	if lookup(h.inf.Model) == nil {
		t.Fatal("no reference for the face model")
	}
	h.hook.ObserveInference(&h.inf)
	if n := testing.AllocsPerRun(200, func() { h.hook.ObserveInference(&h.inf) }); n != 0 && !raceEnabled {
		t.Errorf("the hook allocates %v times per request", n)
	}
	// The features of the face model's requests vary with the input.
	r := h.hook.refs.lookup(h.inf.Model)
	var first, second []float64
	r.features(h.inf.Inputs, h.inf.Outputs, func(v []float64) { first = append(first, v...) })
	fill(h.in[0], 0.7)
	h.invoke(t)
	r.features(h.inf.Inputs, h.inf.Outputs, func(v []float64) { second = append(second, v...) })
	if len(first) != h.features || first[0] == second[0] {
		t.Errorf("features %v then %v", first, second)
	}
}

// BenchmarkFeatureCostVsInvoke is the cost of counting a request's features
// (the telemetry hook with a reference profile: extraction, binning, the
// aggregate update) against the invoke of face_detection_short_range,
// measured back to back in pairs (alternating which goes first) so both
// see the same machine. feature/invoke-% is the ratio of the medians; the
// goal is at most 2.
func BenchmarkFeatureCostVsInvoke(b *testing.B) {
	h := newFaceHook(b)
	for range 20 {
		h.invoke(b)
		h.hook.ObserveInference(&h.inf)
	}
	const pairs = 400
	b.ResetTimer()
	for range b.N {
		inv := make([]float64, 0, pairs)
		feat := make([]float64, 0, pairs)
		for i := range pairs {
			var ti, tf time.Duration
			if i%2 == 0 {
				ti = timeIt(func() { h.invoke(b) })
				tf = timeIt(func() { h.hook.ObserveInference(&h.inf) })
			} else {
				tf = timeIt(func() { h.hook.ObserveInference(&h.inf) })
				ti = timeIt(func() { h.invoke(b) })
			}
			inv = append(inv, float64(ti))
			feat = append(feat, float64(tf))
		}
		mi, mf := median(inv), median(feat)
		b.ReportMetric(mi/1e3, "invoke-µs")
		b.ReportMetric(mf/1e3, "feature-µs")
		b.ReportMetric(100*mf/mi, "feature/invoke-%")
	}
}

func timeIt(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// TestStreamFeatures: a stream's answered inferences count in the
// aggregate's feature histograms as the API's requests do, through the real
// queue, fleet link and Mosquitto; its failed ones count in none.
func TestStreamFeatures(t *testing.T) {
	h := newFaceHook(t)
	h.invoke(t)
	q, aggs := uplink(t, 100*time.Millisecond)

	obs := streamTelemetry{traffic: updater.NewTrafficCounter(), q: q, refs: h.hook.refs}
	const answered = 3
	for range answered {
		obs.ObserveStream(stream.Observation{Stream: "cam", Model: h.inf.Model, Latency: time.Millisecond, Inputs: h.inf.Inputs, Outputs: h.inf.Outputs})
	}
	obs.ObserveStream(stream.Observation{Stream: "cam", Model: h.inf.Model, Latency: time.Millisecond, Code: "bad_input"})

	counted := func() (requests uint64, perFeature map[string]uint64) {
		perFeature = map[string]uint64{}
		aggs.mu.Lock()
		defer aggs.mu.Unlock()
		for _, r := range aggs.recs {
			requests += r.Aggregate.Requests
			for _, f := range r.Aggregate.Features {
				perFeature[f.Name] += f.NaNs
				for _, c := range f.Counts {
					perFeature[f.Name] += c
				}
			}
		}
		return requests, perFeature
	}
	require.Eventually(t, func() bool {
		n, _ := counted()
		return n == answered+1
	}, 20*time.Second, 20*time.Millisecond, "the aggregates never counted the stream's inferences")
	_, perFeature := counted()
	assert.Len(t, perFeature, h.features)
	for name, n := range perFeature {
		assert.Equal(t, uint64(answered), n, name)
	}
}
