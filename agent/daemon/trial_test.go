package daemon

import (
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/models/tflite"
	"github.com/outpost-edge/outpost/protocol"
)

// TestShadowAggregates: the copies a candidate in shadow answers reach the
// fleet as the candidate's shadow aggregates (real registry and models, real
// queue, fleet link and Mosquitto), and their sums add up: every copy is an
// answer or a drop (whether any is dropped depends on the machine's load), the paired baseline latencies and every output's
// comparisons count the answered ones, and the full hand model is slower
// than the lite one and answers differently.
func TestShadowAggregates(t *testing.T) {
	q, aggs := uplink(t, 200*time.Millisecond)
	ctx := t.Context()

	reg := serving.New(serving.Options{Runtime: runtime.Options{Workers: 2, Threads: 1}, ShadowQueue: 2,
		ShadowObserver: trialTelemetry{q: q, refs: newReferences(nil)}})
	defer reg.Close()
	_, err := reg.Load(ctx, "hand", 1, testmodel.Read(t, testmodel.Hand), "test")
	require.NoError(t, err)
	cand, err := reg.StartTrial(ctx, "hand", 2, testmodel.Read(t, testmodel.HandFull), serving.Trial{Mode: serving.Shadow, Percent: 100})
	require.NoError(t, err)

	// Two clients against a queue of two: some copies are dropped.
	const clients, each = 2, 20
	var cwg sync.WaitGroup
	failed := make(chan error, clients*each)
	for c := range clients {
		cwg.Go(func() {
			for i := range each {
				_, _, err := reg.Infer(ctx, "hand", 0, func(e catalog.Entry) ([][]byte, error) {
					n, _ := e.Inputs[0].ByteSize()
					b := make([]byte, n)
					fill(b, float32(c*each+i)/float32(clients*each))
					return [][]byte{b}, nil
				}, func(int, []byte) error { return nil })
				if err != nil {
					failed <- err
				}
			}
		})
	}
	cwg.Wait()
	close(failed)
	for err := range failed {
		require.NoError(t, err)
	}

	type sums struct {
		requests, errors, dropped, latency, baseline uint64
		candMicros, baseMicros                       uint64
		outputs                                      map[string]protocol.OutputAgreement
	}
	total := func() (s sums) {
		s.outputs = map[string]protocol.OutputAgreement{}
		aggs.mu.Lock()
		defer aggs.mu.Unlock()
		for _, r := range aggs.recs {
			a := r.Aggregate
			if r.Model.Name != "hand" || a.Shadow == nil {
				t.Errorf("a record that is no shadow aggregate of hand: %+v %+v", r.Model, a)
				continue
			}
			assert.Equal(t, "2", r.Model.Version)
			assert.Equal(t, cand.Digest, r.Model.Digest)
			assert.Equal(t, "1", a.Shadow.Baseline)
			s.requests += a.Requests
			s.errors += a.Errors
			s.dropped += a.Shadow.Dropped
			for _, c := range a.Latency.Counts {
				s.latency += c
			}
			for _, c := range a.Shadow.BaselineLatency.Counts {
				s.baseline += c
			}
			s.candMicros += a.Latency.SumMicros
			s.baseMicros += a.Shadow.BaselineLatency.SumMicros
			for _, o := range a.Shadow.Outputs {
				g := s.outputs[o.Name]
				g.Compared += o.Compared
				g.MaxAbsDiff = max(g.MaxAbsDiff, o.MaxAbsDiff)
				g.SumMeanAbsDiff += o.SumMeanAbsDiff
				g.Top1Compared += o.Top1Compared
				g.Top1Agree += o.Top1Agree
				s.outputs[o.Name] = g
			}
		}
		return s
	}
	deadline := time.Now().Add(60 * time.Second)
	var s sums
	for s = total(); s.requests+s.dropped < clients*each && time.Now().Before(deadline); s = total() {
		time.Sleep(50 * time.Millisecond)
	}
	require.EqualValues(t, clients*each, s.requests+s.dropped, "every copy is answered or dropped")
	t.Logf("%d copies answered, %d dropped; mean invoke: lite %dµs, full %dµs", s.requests, s.dropped, s.baseMicros/max(s.baseline, 1), s.candMicros/max(s.requests, 1))
	// Whether the queue of two fills depends on how the two models' runs
	// interleave on the machine (under load every copy may be answered):
	// the drops' own test is serving's TestShadowFullQueueDrops; here they
	// only have to add up, above.
	require.Positive(t, s.requests)
	assert.Zero(t, s.errors)
	assert.Equal(t, s.requests, s.latency, "the candidate's latency counts its answers")
	assert.Equal(t, s.requests-s.errors, s.baseline, "the paired baseline latency counts the copies both answered")
	require.Len(t, s.outputs, 4)
	for name, o := range s.outputs {
		assert.Equal(t, s.requests-s.errors, o.Compared, name)
		assert.Positive(t, o.MaxAbsDiff, name)
		assert.Positive(t, o.SumMeanAbsDiff, name)
	}
	assert.Equal(t, s.outputs["Identity"].Compared, s.outputs["Identity"].Top1Compared, "landmarks [1 63]: one row per answer")
	assert.Zero(t, s.outputs["Identity_1"].Top1Compared, "[1 1] is no score vector")
	assert.Greater(t, s.candMicros/s.requests, s.baseMicros/s.baseline, "the full model is slower on the same requests")
}

// TestCandidateReference: a candidate on trial is not in the store yet; its
// reference profile comes from the update under way (the staged manifest),
// found by the instance's digest, so its answers (canary or shadow) count
// in feature histograms as the serving version's do.
func TestCandidateReference(t *testing.T) {
	h := newFaceHook(t)
	served := h.hook.refs.byDigest["sha256:ab"]
	require.NotNil(t, served)
	sig, err := tflite.Read(testmodel.Read(t, testmodel.FaceShort))
	require.NoError(t, err)
	asked := 0
	refs := newReferences(nil)
	refs.staged = func(sha string) (*manifest.Manifest, bool) {
		asked++
		if sha != "cd" {
			return nil, false
		}
		return &manifest.Manifest{Name: "face", Version: 2, SHA256: "cd", Inputs: sig.Inputs, Outputs: sig.Outputs, Reference: served.p}, true
	}
	cand := h.inf.Model
	cand.Version, cand.Digest = 2, "sha256:cd"
	ref := refs.lookup(cand)
	require.NotNil(t, ref, "the candidate's reference was not found")
	assert.Same(t, served.p, ref.p)
	assert.Same(t, ref, refs.lookup(cand), "found once per digest")
	other := cand
	other.Digest = "sha256:ef"
	assert.Nil(t, refs.lookup(other))
	assert.Equal(t, 2, asked)
}
