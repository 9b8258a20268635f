package analysis_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/testpg"
	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { os.Exit(testpg.Main(m)) }

// eachEngine runs fn on a fresh SQLite store and a fresh PostgreSQL one.
func eachEngine(t *testing.T, opts registry.Options, fn func(t *testing.T, r *registry.Registry)) {
	for _, eng := range []string{"sqlite", "postgres"} {
		t.Run(eng, func(t *testing.T) {
			o := opts
			if eng == "postgres" {
				o.Store = testpg.Database(t)
			}
			r, err := registry.Open(t.TempDir(), o)
			require.NoError(t, err)
			t.Cleanup(func() { r.Close() })
			fn(t, r)
		})
	}
}

// bounds are the agents' latency bounds in these tests, in µs.
var bounds = []uint64{1000, 2000, 5000, 10000, 20000, 50000}

// traffic is what one device's aggregates of one version say, interval by
// interval: requests and errors each, and a mean latency drawn around
// meanMS (±10 %, the same draw for a given seed).
type traffic struct {
	device           string
	version          int64
	intervals        int
	requests, errors uint64
	meanMS           float64
	seed             uint64
	// shadow: aggregates of a candidate held in shadow of version baseline
	// with its own latency meanMS and the baseline's baseMS on the same
	// requests; top1 agree of every score row, meanDiff the mean
	// absolute difference per request.
	shadow   bool
	baseline int64
	baseMS   float64
	top1     float64
	meanDiff float64
	// features: the candidate's "out:score:max" histogram per interval,
	// over the reference's three bins.
	features []uint64
}

// histogram puts n requests of mean m µs in the bucket holding m.
func histogram(n uint64, m float64) protocol.Histogram {
	h := protocol.Histogram{BoundsMicros: bounds, Counts: make([]uint64, len(bounds)+1), SumMicros: uint64(math.Round(m * float64(n)))}
	i, _ := slices.BinarySearch(bounds, uint64(m))
	h.Counts[i] = n
	return h
}

// send stores tr's aggregates through the registry's ingest, one minute
// apart from t0, and returns the interval means it drew, in ms.
func send(t testing.TB, r *registry.Registry, t0 time.Time, step time.Duration, tr traffic) (means, baseMeans []float64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(tr.seed, 7))
	b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: uint64(time.Now().UnixNano())}}
	for i := range tr.intervals {
		start := t0.Add(time.Duration(i) * step)
		mean := tr.meanMS * (0.9 + 0.2*rng.Float64()) * 1000
		answered := tr.requests - tr.errors
		a := &protocol.Aggregate{Start: start, End: start.Add(step), Requests: tr.requests, Errors: tr.errors,
			Latency: histogram(answered, mean)}
		means = append(means, float64(a.Latency.SumMicros)/float64(answered)/1000)
		if tr.features != nil {
			a.Features = []protocol.FeatureCounts{{Name: "out:score:max", Counts: slices.Clone(tr.features)}}
		}
		if tr.shadow {
			bm := tr.baseMS * (0.9 + 0.2*rng.Float64()) * 1000
			agree := uint64(math.Round(tr.top1 * float64(answered)))
			a.Shadow = &protocol.Shadow{Baseline: strconv.FormatInt(tr.baseline, 10), BaselineLatency: histogram(answered, bm),
				Outputs: []protocol.OutputAgreement{{Name: "score", Compared: answered, MaxAbsDiff: 2 * tr.meanDiff,
					SumMeanAbsDiff: tr.meanDiff * float64(answered), Top1Compared: answered, Top1Agree: agree}}}
			baseMeans = append(baseMeans, float64(a.Shadow.BaselineLatency.SumMicros)/float64(answered)/1000)
		}
		rec := protocol.Record{Kind: protocol.KindAggregate, Time: start.Add(step),
			Model: protocol.ModelRef{Name: "hands", Version: strconv.FormatInt(tr.version, 10), Digest: "sha256:00"}, Aggregate: a}
		body, err := protocol.AppendRecord(nil, &rec)
		require.NoError(t, err)
		b.Entries = append(b.Entries, protocol.Entry{Seq: uint64(i + 1), Body: body})
	}
	n, err := r.RecordBatch(tr.device, b, time.Now())
	require.NoError(t, err)
	require.Equal(t, tr.intervals, n)
	return means, baseMeans
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func metric(t *testing.T, rep analysis.Report, name string) analysis.MetricResult {
	t.Helper()
	for _, m := range rep.Metrics {
		if m.Name == name {
			return m
		}
	}
	t.Fatalf("report has no %s metric: %+v", name, rep.Metrics)
	return analysis.MetricResult{}
}

var (
	t0      = time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	devices = []string{"gw-0", "gw-1", "gw-2", "gw-3"}
)

func analyzer(t *testing.T, r *registry.Registry, ref func(context.Context, string, int64) (*profile.Profile, error)) *analysis.Analyzer {
	t.Helper()
	a, err := analysis.New(analysis.Options{Store: r, Reference: ref})
	require.NoError(t, err)
	return a
}

// canary sends, on every device, ten minutes of the baseline v1 (270
// requests a minute at 5 ms) and of the candidate v2 (candRequests a
// minute, candErrors of them failing, at candMS), and analyses the canary
// over them.
func canary(t *testing.T, r *registry.Registry, candRequests, candErrors uint64, candMS float64) (analysis.Report, [2][]float64) {
	t.Helper()
	var means [2][]float64
	for i, d := range devices {
		m, _ := send(t, r, t0, time.Minute, traffic{device: d, version: 1, intervals: 10, requests: 270, meanMS: 5, seed: uint64(i)})
		means[0] = append(means[0], m...)
		m, _ = send(t, r, t0, time.Minute, traffic{device: d, version: 2, intervals: 10, requests: candRequests, errors: candErrors, meanMS: candMS, seed: uint64(100 + i)})
		means[1] = append(means[1], m...)
	}
	rep, err := analyzer(t, r, nil).Analyze(t.Context(), analysis.Request{Phase: analysis.PhaseCanary, Model: "hands",
		Baseline: 1, Candidate: 2, Devices: devices, From: t0, To: t0.Add(10 * time.Minute)})
	require.NoError(t, err)
	return rep, means
}

// TestCanaryEqualPasses: the same model behind both arms passes with a
// score of 100, and the numbers are the inputs' own.
func TestCanaryEqualPasses(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		rep, means := canary(t, r, 30, 0, 5)
		assert.Equal(t, analysis.Pass, rep.Verdict, rep.Reason)
		assert.Equal(t, 100.0, rep.Score)
		require.Len(t, rep.Metrics, 2) // no reference: no drift; no agreement outside shadow
		er := metric(t, rep, analysis.MetricErrorRatio)
		assert.Equal(t, analysis.Pass, er.Verdict)
		assert.Equal(t, int64(4*10*270), er.BaselineN)
		assert.Equal(t, int64(4*10*30), er.CandidateN)
		lat := metric(t, rep, analysis.MetricLatency)
		assert.Equal(t, analysis.Pass, lat.Verdict, lat.Reason)
		assert.Equal(t, int64(40), lat.BaselineN)
		assert.Equal(t, int64(40), lat.CandidateN)
		assert.InDelta(t, median(means[0]), lat.Baseline, 1e-9)
		assert.InDelta(t, median(means[1]), lat.Candidate, 1e-9)
		assert.Equal(t, "ms", lat.Unit)
	})
}

// TestCanarySlowerFails: a candidate twice as slow fails latency; latency
// is not critical, but its failure leaves a score of 50, under marginal.
func TestCanarySlowerFails(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		rep, means := canary(t, r, 30, 0, 10)
		assert.Equal(t, analysis.Fail, rep.Verdict, rep.Reason)
		assert.Equal(t, 50.0, rep.Score)
		lat := metric(t, rep, analysis.MetricLatency)
		assert.Equal(t, analysis.Fail, lat.Verdict)
		assert.InDelta(t, median(means[0]), lat.Baseline, 1e-9)
		assert.InDelta(t, median(means[1]), lat.Candidate, 1e-9)
		assert.InDelta(t, 2, lat.Candidate/lat.Baseline, 0.2)
		assert.Less(t, lat.P, 0.02)
		assert.Contains(t, lat.Reason, "above the 1.20x tolerated")
		assert.Contains(t, rep.Reason, "failed: latency")
	})
}

// TestCanaryErrorsFail: 5 % errors against none fails error_ratio, which
// is critical: the whole analysis fails whatever the score.
func TestCanaryErrorsFail(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		rep, _ := canary(t, r, 40, 2, 5) // 2 of 40 a minute
		assert.Equal(t, analysis.Fail, rep.Verdict, rep.Reason)
		er := metric(t, rep, analysis.MetricErrorRatio)
		assert.Equal(t, analysis.Fail, er.Verdict)
		assert.True(t, er.Critical)
		assert.Equal(t, 0.05, er.Candidate) // 80 of 1,600
		assert.Equal(t, 0.0, er.Baseline)   // 0 of 10,800
		assert.Equal(t, "ratio", er.Unit)
		assert.Less(t, er.P, 1e-6)
		assert.Equal(t, analysis.Pass, metric(t, rep, analysis.MetricLatency).Verdict)
		assert.Equal(t, 50.0, rep.Score)
		assert.True(t, strings.HasPrefix(rep.Reason, "critical metric failed: error_ratio"), rep.Reason)
	})
}

// TestCanaryTooFewWaits: 120 candidate requests, under min_requests (200):
// the critical error ratio waits, so the analysis waits, never passes.
func TestCanaryTooFewWaits(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		rep, _ := canary(t, r, 3, 0, 5)
		assert.Equal(t, analysis.Wait, rep.Verdict, rep.Reason)
		er := metric(t, rep, analysis.MetricErrorRatio)
		assert.Equal(t, analysis.Wait, er.Verdict)
		assert.Equal(t, int64(120), er.CandidateN)
		assert.Contains(t, er.Reason, "candidate 120 requests, want 200 each")
		assert.Equal(t, analysis.Wait, metric(t, rep, analysis.MetricLatency).Verdict)
	})
}

// shadow sends ten minutes on every device: the serving version v1's
// traffic (300 a minute at 5 ms) and candidate v2's shadow sections (30
// copies a minute, at candMS against the serving version's 5 ms on the
// same requests, top-1 agreement top1, mean difference diff), and
// analyses the shadow phase.
func shadow(t *testing.T, r *registry.Registry, candMS, top1, diff float64) analysis.Report {
	t.Helper()
	for i, d := range devices {
		send(t, r, t0, time.Minute, traffic{device: d, version: 1, intervals: 10, requests: 300, meanMS: 5, seed: uint64(i)})
		send(t, r, t0, time.Minute, traffic{device: d, version: 2, intervals: 10, requests: 30, meanMS: candMS, seed: uint64(50 + i),
			shadow: true, baseline: 1, baseMS: 5, top1: top1, meanDiff: diff})
	}
	rep, err := analyzer(t, r, nil).Analyze(t.Context(), analysis.Request{Phase: analysis.PhaseShadow, Model: "hands",
		Baseline: 1, Candidate: 2, Devices: devices, From: t0, To: t0.Add(10 * time.Minute)})
	require.NoError(t, err)
	return rep
}

// TestShadowEqualPasses: a candidate that answers as the serving version
// does passes every metric.
func TestShadowEqualPasses(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		rep := shadow(t, r, 5, 1, 0)
		assert.Equal(t, analysis.Pass, rep.Verdict, rep.Reason)
		assert.Equal(t, 100.0, rep.Score)
		ag := metric(t, rep, analysis.MetricAgreement)
		assert.Equal(t, analysis.Pass, ag.Verdict, ag.Reason)
		assert.Equal(t, 1.0, ag.Candidate)
		assert.Equal(t, int64(4*10*30), ag.CandidateN)
		er := metric(t, rep, analysis.MetricErrorRatio)
		assert.Equal(t, int64(4*10*30), er.CandidateN, "the copies are the candidate's arm")
		assert.Equal(t, int64(4*10*300), er.BaselineN, "the served traffic is the baseline's arm")
	})
}

// TestShadowDisagreementFails: top-1 agreement 0.5 fails agreement,
// critical; a candidate twice as slow on the same requests fails latency
// (paired: the serving version's latency on the copies).
func TestShadowDisagreementFails(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		rep := shadow(t, r, 10, 0.5, 0)
		assert.Equal(t, analysis.Fail, rep.Verdict, rep.Reason)
		ag := metric(t, rep, analysis.MetricAgreement)
		assert.Equal(t, analysis.Fail, ag.Verdict)
		assert.Equal(t, "top1", ag.Unit)
		assert.Equal(t, 1.0, ag.Baseline)
		assert.Equal(t, 0.5, ag.Candidate) // 600 of 1,200 rows
		assert.Contains(t, ag.Reason, "score: top-1 agreement 0.500 of 1200 rows, under 0.95")
		lat := metric(t, rep, analysis.MetricLatency)
		assert.Equal(t, analysis.Fail, lat.Verdict)
		assert.Equal(t, int64(40), lat.BaselineN)
		assert.InDelta(t, 2, lat.Candidate/lat.Baseline, 0.2)
		assert.Contains(t, rep.Reason, "agreement")
	})
}

// TestShadowLatencyNotScored: a candidate twice as slow on the copies that
// answers alike passes shadow: latency fails but is not scored there (the
// copies share the cores with live traffic), and is shown with weight 0;
// with score_in_shadow it counts, and the shadow fails.
func TestShadowLatencyNotScored(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		rep := shadow(t, r, 10, 1, 0)
		assert.Equal(t, analysis.Pass, rep.Verdict, rep.Reason)
		assert.Equal(t, 100.0, rep.Score)
		lat := metric(t, rep, analysis.MetricLatency)
		assert.Equal(t, analysis.Fail, lat.Verdict)
		assert.Zero(t, lat.Weight)
		assert.Contains(t, lat.Reason, "not scored in shadow")

		cfg := analysis.Defaults()
		cfg.Metrics[1].ScoreInShadow = true // latency
		rep, err := analyzer(t, r, nil).Analyze(t.Context(), analysis.Request{Phase: analysis.PhaseShadow, Model: "hands",
			Baseline: 1, Candidate: 2, Devices: devices, From: t0, To: t0.Add(10 * time.Minute), Config: cfg})
		require.NoError(t, err)
		assert.Equal(t, analysis.Fail, rep.Verdict, rep.Reason)
		assert.Equal(t, 1.0, metric(t, rep, analysis.MetricLatency).Weight)
	})
}

// TestShadowOutputDifferenceFails: every top class agrees but the values
// are 0.2 apart on average, above max_mean_abs_diff 0.05.
func TestShadowOutputDifferenceFails(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		rep := shadow(t, r, 5, 1, 0.2)
		assert.Equal(t, analysis.Fail, rep.Verdict, rep.Reason)
		ag := metric(t, rep, analysis.MetricAgreement)
		assert.Equal(t, analysis.Fail, ag.Verdict)
		assert.Equal(t, "mean_abs_diff", ag.Unit)
		assert.InDelta(t, 0.2, ag.Candidate, 1e-9)
		assert.Contains(t, ag.Reason, "above 0.05")
	})
}

// TestWave: the wave's devices on the candidate against the devices still
// on the baseline: named, or every other device.
func TestWave(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		// gw-0 and gw-1 promoted to v2 (twice as slow); gw-2 and gw-3 on
		// v1; gw-9 on v1 too, but not named as the baseline below.
		for i, d := range devices {
			v, ms := int64(1), 5.0
			if i < 2 {
				v, ms = 2, 10
			}
			send(t, r, t0, time.Minute, traffic{device: d, version: v, intervals: 10, requests: 100, meanMS: ms, seed: uint64(i)})
		}
		send(t, r, t0, time.Minute, traffic{device: "gw-9", version: 1, intervals: 10, requests: 100, errors: 50, meanMS: 5, seed: 9})
		a := analyzer(t, r, nil)
		req := analysis.Request{Phase: analysis.PhaseWave, Model: "hands", Baseline: 1, Candidate: 2, Devices: devices[:2],
			BaselineDevices: devices[2:], From: t0, To: t0.Add(10 * time.Minute)}
		rep, err := a.Analyze(t.Context(), req)
		require.NoError(t, err)
		assert.Equal(t, analysis.Pass, rep.Verdict, rep.Reason)
		assert.Contains(t, rep.Reason, "not judged yet: latency")
		er := metric(t, rep, analysis.MetricErrorRatio)
		assert.Equal(t, int64(2000), er.BaselineN)
		assert.Equal(t, int64(2000), er.CandidateN)
		// Latency counts devices in a wave: two against two cannot reach
		// 98% confidence (the smallest p is 1/6), however slow.
		lat := metric(t, rep, analysis.MetricLatency)
		assert.Equal(t, analysis.Wait, lat.Verdict, lat.Reason)
		assert.Equal(t, int64(2), lat.BaselineN)
		assert.Contains(t, lat.Reason, "2 devices against 2")

		// Without BaselineDevices, the rest: gw-2, gw-3 and gw-9, whose
		// errors make the candidate look better, not worse.
		req.BaselineDevices = nil
		rep, err = a.Analyze(t.Context(), req)
		require.NoError(t, err)
		er = metric(t, rep, analysis.MetricErrorRatio)
		assert.Equal(t, int64(3000), er.BaselineN)
		assert.InDelta(t, 500.0/3000, er.Baseline, 1e-12)
		assert.Equal(t, analysis.Pass, er.Verdict)
	})
}

// TestWaveLatencyCountsDevices: in a wave the arms are different devices,
// so the latency test's unit is the device. Two devices promoted to a
// candidate that are 1.3x slower than the one left on the baseline in
// every interval (a device's own speed: what TestRolloutPhasesEndToEnd
// once met with three agents on two cores and identical versions) do not
// fail the candidate, where ten intervals each would have (p 1e-6); four
// devices twice as slow as four others do.
func TestWaveLatencyCountsDevices(t *testing.T) {
	eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
		a := analyzer(t, r, nil)
		for i, d := range devices[:3] {
			v, ms := int64(2), 6.5
			if i == 2 {
				v, ms = 1, 5
			}
			send(t, r, t0, time.Minute, traffic{device: d, version: v, intervals: 10, requests: 100, meanMS: ms, seed: uint64(i)})
		}
		rep, err := a.Analyze(t.Context(), analysis.Request{Phase: analysis.PhaseWave, Model: "hands", Baseline: 1, Candidate: 2,
			Devices: devices[:2], BaselineDevices: devices[2:3], From: t0, To: t0.Add(10 * time.Minute)})
		require.NoError(t, err)
		lat := metric(t, rep, analysis.MetricLatency)
		assert.Equal(t, analysis.Wait, lat.Verdict, lat.Reason)
		assert.Equal(t, int64(2), lat.CandidateN)
		assert.Equal(t, int64(1), lat.BaselineN)
		assert.InDelta(t, 1.3, lat.Candidate/lat.Baseline, 0.1)
		assert.Equal(t, analysis.Pass, rep.Verdict, "an equal error ratio and a latency that cannot be judged: %s", rep.Reason)

		var cand, base []string
		for i := range 8 {
			d, v, ms := fmt.Sprintf("w-%d", i), int64(1), 5.0
			if i < 4 {
				v, ms = 2, 10
				cand = append(cand, d)
			} else {
				base = append(base, d)
			}
			send(t, r, t0, time.Minute, traffic{device: d, version: v, intervals: 3, requests: 100, meanMS: ms, seed: uint64(10 + i)})
		}
		rep, err = a.Analyze(t.Context(), analysis.Request{Phase: analysis.PhaseWave, Model: "hands", Baseline: 1, Candidate: 2,
			Devices: cand, BaselineDevices: base, From: t0, To: t0.Add(10 * time.Minute)})
		require.NoError(t, err)
		lat = metric(t, rep, analysis.MetricLatency)
		assert.Equal(t, analysis.Fail, lat.Verdict, lat.Reason)
		assert.Equal(t, int64(4), lat.CandidateN)
		assert.InDelta(t, 1.0/70, lat.P, 1e-9, "four devices all slower than four: p = 1/C(8,4)")
		assert.Contains(t, lat.Reason, "median device latency")
	})
}

// reference is a profile with one output feature in three bins.
func reference() *profile.Profile {
	return &profile.Profile{Version: profile.FormatVersion, Requests: 3000, Features: []profile.Feature{
		{Name: "in:image:mean", Edges: []float64{1, 2}, Counts: []uint64{1000, 1000, 1000}, Count: 3000},
		{Name: "out:score:max", Edges: []float64{0.3, 0.6}, Counts: []uint64{1000, 1000, 1000}, Count: 3000},
	}}
}

// TestDrift: the candidate's output features against its reference: the
// reference's own shape passes, a shift fails (drift is not critical, so
// the analysis passes, fails or is marginal on the score).
func TestDrift(t *testing.T) {
	refs := func(_ context.Context, model string, v int64) (*profile.Profile, error) {
		if model != "hands" {
			return nil, fmt.Errorf("unknown model %s", model)
		}
		return reference(), nil
	}
	for _, tc := range []struct {
		name     string
		features []uint64
		verdict  analysis.Verdict
		psi      float64
	}{
		{"as the reference", []uint64{10, 10, 10}, analysis.Pass, 0},
		// 720, 240, 240 of 1,200 against thirds of 3,000: with the half
		// count models/profile adds to every bin, o = 720.5/1201.5 = 0.59967
		// and 240.5/1201.5 = 0.20017, r = 1/3: PSI = Σ (o - r) ln(o/r) =
		// 0.15640 + 2 × 0.06791 = 0.29223 (without smoothing 0.29296); far
		// above the noise bound, 13.8 × (1/3000 + 1/1200) = 0.016.
		{"shifted", []uint64{18, 6, 6}, analysis.Fail, 0.29223},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachEngine(t, registry.Options{}, func(t *testing.T, r *registry.Registry) {
				for i, d := range devices {
					send(t, r, t0, time.Minute, traffic{device: d, version: 1, intervals: 10, requests: 270, meanMS: 5, seed: uint64(i),
						features: []uint64{90, 90, 90}})
					send(t, r, t0, time.Minute, traffic{device: d, version: 2, intervals: 10, requests: 30, meanMS: 5, seed: uint64(100 + i),
						features: tc.features})
				}
				rep, err := analyzer(t, r, refs).Analyze(t.Context(), analysis.Request{Phase: analysis.PhaseCanary, Model: "hands",
					Baseline: 1, Candidate: 2, Devices: devices, From: t0, To: t0.Add(10 * time.Minute)})
				require.NoError(t, err)
				d := metric(t, rep, analysis.MetricDrift)
				assert.Equal(t, tc.verdict, d.Verdict, d.Reason)
				assert.InDelta(t, tc.psi, d.Candidate, 1e-4)
				assert.Equal(t, 0.0, d.Baseline) // the baseline's thirds
				assert.Equal(t, int64(1200), d.CandidateN)
				if tc.verdict == analysis.Fail {
					assert.Equal(t, 66.67, rep.Score) // 2 of 3 metrics, to 0.01
					assert.Equal(t, analysis.Fail, rep.Verdict, "67 is under marginal 75")
				}
			})
		})
	}
}

// TestFineBuckets: with the store keeping 1 s buckets, a window of a few
// seconds just past (as the end-to-end tests run) is read per second.
func TestFineBuckets(t *testing.T) {
	eachEngine(t, registry.Options{FineStep: 1}, func(t *testing.T, r *registry.Registry) {
		now := time.Now().Truncate(time.Second)
		from := now.Add(-20 * time.Second)
		for i, d := range devices[:2] {
			send(t, r, from, time.Second, traffic{device: d, version: 1, intervals: 20, requests: 30, meanMS: 5, seed: uint64(i)})
			send(t, r, from, time.Second, traffic{device: d, version: 2, intervals: 20, requests: 10, meanMS: 15, seed: uint64(10 + i)})
		}
		cfg := analysis.Defaults()
		cfg.MinRequests = 100
		rep, err := analyzer(t, r, nil).Analyze(t.Context(), analysis.Request{Phase: analysis.PhaseCanary, Model: "hands",
			Baseline: 1, Candidate: 2, Devices: devices[:2], From: from, To: now, Config: cfg})
		require.NoError(t, err)
		lat := metric(t, rep, analysis.MetricLatency)
		assert.Equal(t, int64(40), lat.CandidateN, "one interval per device and second")
		assert.Equal(t, analysis.Fail, lat.Verdict, lat.Reason)
	})
}

// TestAnalyzeRefuses: requests it cannot judge are errors, not verdicts.
func TestAnalyzeRefuses(t *testing.T) {
	r, err := registry.Open(t.TempDir(), registry.Options{})
	require.NoError(t, err)
	defer r.Close()
	a := analyzer(t, r, nil)
	ok := analysis.Request{Phase: analysis.PhaseCanary, Model: "hands", Baseline: 1, Candidate: 2, Devices: devices, From: t0, To: t0.Add(time.Minute)}
	bad := analysis.Defaults()
	bad.Confidence = 2
	for name, mod := range map[string]func(*analysis.Request){
		"no model":    func(q *analysis.Request) { q.Model = "" },
		"no devices":  func(q *analysis.Request) { q.Devices = nil },
		"empty range": func(q *analysis.Request) { q.To = q.From },
		"bad phase":   func(q *analysis.Request) { q.Phase = "bake" },
		"bad config":  func(q *analysis.Request) { q.Config = bad },
	} {
		q := ok
		mod(&q)
		_, err := a.Analyze(t.Context(), q)
		assert.ErrorIs(t, err, analysis.ErrInvalidRequest, name)
	}
	// Nothing in the store: every metric waits.
	rep, err := a.Analyze(t.Context(), ok)
	require.NoError(t, err)
	assert.Equal(t, analysis.Wait, rep.Verdict)
	assert.Equal(t, 0.0, rep.Score)
	_, err = analysis.New(analysis.Options{})
	assert.Error(t, err)
}
