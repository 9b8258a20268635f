package analysis

import (
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/protocol"
)

const alpha = 0.02

// TestErrorRatioNeedsBoth: a metric fails only when the candidate is worse
// with the confidence and by more than the tolerance.
func TestErrorRatioNeedsBoth(t *testing.T) {
	m := defaultMetric(MetricErrorRatio) // max_increase 0.01
	for _, tc := range []struct {
		name   string
		b, c   arm
		want   Verdict
		reason string
	}{
		// 0.5 % against 0 on 100,000 each: p tiny, +0.005 within 0.01.
		{"significance without size", arm{requests: 100000}, arm{requests: 100000, errors: 500}, Pass, "within the 0.0100 tolerated"},
		// 2 % against 0 on 200 each: +0.02, but pooled 0.01, se 0.00995,
		// z 2.01, p 0.022 > 0.02.
		{"size without significance", arm{requests: 200}, arm{requests: 200, errors: 4}, Pass, "not significantly higher"},
		// 2.5 %: z 2.25, p 0.012.
		{"both", arm{requests: 200}, arm{requests: 200, errors: 5}, Fail, "above the 0.0100 tolerated"},
		{"short candidate", arm{requests: 200}, arm{requests: 199, errors: 100}, Wait, "candidate 199 requests, want 200 each"},
		{"short baseline", arm{requests: 0}, arm{requests: 500}, Wait, "baseline 0 requests"},
	} {
		r := errorRatio(m, &tc.b, &tc.c, 200, alpha)
		if r.Verdict != tc.want || !strings.Contains(r.Reason, tc.reason) {
			t.Errorf("%s: got %s (%s), want %s (%s)", tc.name, r.Verdict, r.Reason, tc.want, tc.reason)
		}
	}
}

// means returns n interval means of about v, spread by ±spread.
func means(n int, v, spread float64) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v + spread*(float64(i%7)-3)/3
	}
	return out
}

func TestLatencyNeedsBoth(t *testing.T) {
	m := defaultMetric(MetricLatency) // max_ratio 1.2
	for _, tc := range []struct {
		name   string
		b, c   []float64
		want   Verdict
		reason string
	}{
		{"equal", means(50, 5, 0.5), means(50, 5, 0.5), Pass, "not significantly slower"},
		// 10 % slower on 50 intervals: significant, within 1.2.
		{"significance without size", means(50, 5, 0.1), means(50, 5.5, 0.1), Pass, "within 1.20x"},
		// Twice as slow in the median, but 4 against 4 overlapping:
		// nothing proven.
		{"size without significance", []float64{1, 5, 9, 5.5}, []float64{10, 0.5, 11, 12}, Pass, "not significantly slower"},
		{"both", means(20, 5, 0.5), means(20, 10, 0.5), Fail, "above the 1.20x tolerated"},
		// 3 against 3 cannot reach 98 % (min p 1/20): wait, not pass.
		{"too few intervals", means(3, 5, 0.1), means(3, 50, 0.1), Wait, "too few for the test"},
		{"all equal", means(5, 5, 0), means(5, 5, 0), Wait, "same mean latency"},
	} {
		b, c := arm{means: tc.b, latencyN: 1000}, arm{means: tc.c, latencyN: 1000}
		r := latency(m, &b, &c, 200, alpha)
		if r.Verdict != tc.want || !strings.Contains(r.Reason, tc.reason) {
			t.Errorf("%s: got %s (%s), want %s (%s)", tc.name, r.Verdict, r.Reason, tc.want, tc.reason)
		}
		if r.Baseline != median(tc.b) || r.Candidate != median(tc.c) {
			t.Errorf("%s: got medians %g, %g, want %g, %g", tc.name, r.Baseline, r.Candidate, median(tc.b), median(tc.c))
		}
	}
	b, c := arm{means: means(20, 5, 1), latencyN: 199}, arm{means: means(20, 5, 1), latencyN: 5000}
	if r := latency(m, &b, &c, 200, alpha); r.Verdict != Wait {
		t.Errorf("199 baseline requests: got %s, want wait", r.Verdict)
	}
}

func TestAgreement(t *testing.T) {
	m := defaultMetric(MetricAgreement) // min_top1 0.95, max_mean_abs_diff 0.05
	out := func(name string, compared, top1c, agree uint64, meanDiff float64) protocol.OutputAgreement {
		return protocol.OutputAgreement{Name: name, Compared: compared, Top1Compared: top1c, Top1Agree: agree,
			SumMeanAbsDiff: meanDiff * float64(compared), MaxAbsDiff: 3 * meanDiff}
	}
	for _, tc := range []struct {
		name      string
		outs      []protocol.OutputAgreement
		want      Verdict
		unit      string
		candidate float64
	}{
		{"identical", []protocol.OutputAgreement{out("score", 300, 300, 300, 0)}, Pass, "top1", 1},
		// 0.94 of 300 rows: under 0.95, but p = Φ(-0.79) = 0.21.
		{"slightly under, not proven", []protocol.OutputAgreement{out("score", 300, 300, 282, 0)}, Pass, "top1", 0.94},
		{"half", []protocol.OutputAgreement{out("score", 300, 300, 150, 0)}, Fail, "top1", 0.5},
		{"values apart", []protocol.OutputAgreement{out("score", 300, 300, 300, 0.1)}, Fail, "mean_abs_diff", 0.1},
		{"no score vector", []protocol.OutputAgreement{out("flag", 300, 0, 0, 0.01)}, Pass, "mean_abs_diff", 0.01},
		// The worst output decides.
		{"two outputs", []protocol.OutputAgreement{out("flag", 300, 0, 0, 0.01), out("score", 300, 300, 100, 0.01)}, Fail, "top1", 1.0 / 3},
		{"too few", []protocol.OutputAgreement{out("score", 199, 199, 0, 0)}, Wait, "top1", 1},
		{"none", nil, Wait, "top1", 1},
	} {
		r := agreement(m, tc.outs, 200, alpha)
		if r.Verdict != tc.want || r.Unit != tc.unit || r.Candidate != tc.candidate {
			t.Errorf("%s: got %s %g %s (%s), want %s %g %s", tc.name, r.Verdict, r.Candidate, r.Unit, r.Reason, tc.want, tc.candidate, tc.unit)
		}
	}
}

// TestCombine: Kayenta's score and the critical rules.
func TestCombine(t *testing.T) {
	cfg := Defaults()
	res := func(name string, critical bool, w float64, v Verdict) MetricResult {
		return MetricResult{Name: name, Critical: critical, Weight: w, Verdict: v, Reason: string(v)}
	}
	for _, tc := range []struct {
		name    string
		ms      []MetricResult
		score   float64
		verdict Verdict
		reason  string
	}{
		{"all pass", []MetricResult{res("a", true, 1, Pass), res("b", false, 1, Pass)}, 100, Pass, "score 100 at or above pass 95"},
		{"one of four fails", []MetricResult{res("a", false, 1, Pass), res("b", false, 1, Pass), res("c", false, 1, Pass), res("d", false, 1, Fail)},
			75, Marginal, "at or above marginal 75, failed: d"},
		{"weighted", []MetricResult{res("a", false, 19, Pass), res("b", false, 1, Fail)}, 95, Pass, "failed: b"},
		{"critical fails, score high", []MetricResult{res("a", false, 99, Pass), res("b", true, 1, Fail)}, 99, Fail, "critical metric failed: b"},
		{"critical fails beats critical wait", []MetricResult{res("a", true, 1, Wait), res("b", true, 1, Fail)}, 0, Fail, "critical metric failed: b"},
		{"critical waits", []MetricResult{res("a", true, 1, Wait), res("b", false, 1, Pass)}, 100, Wait, "waiting for evidence: a"},
		{"non-critical waits: not judged", []MetricResult{res("a", false, 1, Wait), res("b", false, 1, Pass)}, 100, Pass, "not judged yet: a"},
		{"nothing judged", []MetricResult{res("a", false, 1, Wait)}, 0, Wait, "no metric has enough evidence"},
		{"nothing at all", nil, 0, Wait, "no metric"},
		{"two of three fail", []MetricResult{res("a", false, 1, Pass), res("b", false, 1, Fail), res("c", false, 1, Fail)}, 100.0 / 3, Fail, "below marginal 75"},
	} {
		score, v, reason := combine(tc.ms, cfg)
		if score != tc.score || v != tc.verdict || !strings.Contains(reason, tc.reason) {
			t.Errorf("%s: got %g %s (%s), want %g %s (%s)", tc.name, score, v, reason, tc.score, tc.verdict, tc.reason)
		}
	}
}
