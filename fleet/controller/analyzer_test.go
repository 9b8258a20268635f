package controller_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/protocol"
)

// TestPhasesWithTheRealAnalyzer: the controller's own analyzer
// (fleet/analysis over its store) judges simulated devices' shadow and
// canary aggregates as an agent sends them: a candidate three times slower that disagrees on
// half its answers halts in shadow on agreement, latency failing too (or
// still waiting for intervals, never passing); one failing a fifth of its
// requests halts on the error ratio. An equal candidate passing every phase
// is cmd/outpost-agent's TestRolloutPhasesEndToEnd, with real agents (here
// it once stayed in its first shadow for two minutes on a machine loaded by
// two make tests and a bench: not understood yet, so not in make test).
func TestPhasesWithTheRealAnalyzer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		beh     simdevice.Behaviour
		state   registry.RolloutState
		failing []string // metrics that must fail in the halting analysis
	}{
		{"slow and disagreeing", simdevice.Behaviour{LatencyFactor: 3, Disagree: 0.5}, registry.RolloutHalted, []string{analysis.MetricLatency, analysis.MetricAgreement}},
		{"errors", simdevice.Behaviour{ErrorRatio: 0.2}, registry.RolloutHalted, []string{analysis.MetricErrorRatio}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// One-second drift windows make the store keep the fine
			// buckets that a phase of seconds needs.
			f := startFleet(t, controller.Options{AnalyzeEvery: 200 * time.Millisecond, Drift: controller.DriftOptions{Window: time.Second}})
			mv1 := f.push("face", 1, 32<<10, 16<<10)
			f.push("face", 2, 32<<10, 16<<10)
			const n = 4
			f.devices(n, "", func(i int, o *simdevice.Options) {
				o.Models = []protocol.ModelStatus{{Name: "face", Version: 1, Digest: "sha256:" + mv1.SHA256}}
				o.Trials = true
				o.Traffic = &simdevice.Traffic{Every: 200 * time.Millisecond, Requests: 100, Candidate: func(string, int64) simdevice.Behaviour {
					return tc.beh
				}}
			})
			f.waitDevices(n)
			eventually(t, 30*time.Second, "the devices' features", func() (bool, string) {
				d, err := f.c.Registry().Device(devName(0))
				return err == nil && d.Supports(protocol.FeatureTrial), fmt.Sprint(d, err)
			})
			cfg := analysis.Defaults()
			// max_wait: a phase whose evidence has not arrived pauses
			// the rollout after it; 20 s paused one once on a machine
			// loaded by two make tests and a bench.
			cfg.MinRequests, cfg.MaxWait = 100, time.Minute
			ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MaxFailureRatio: 0.5,
				Shadow: &registry.TrialPhase{Percent: 50, Duration: 3 * time.Second},
				Canary: &registry.TrialPhase{Percent: 50, Duration: 3 * time.Second}, Analysis: &cfg})
			if err != nil {
				t.Fatal(err)
			}
			eventually(t, 240*time.Second, "the rollout ends", func() (bool, string) {
				r, _ := f.c.Registry().Rollout(ro.ID)
				return r.State == registry.RolloutCompleted || r.State == registry.RolloutHalted || r.State == registry.RolloutPaused, string(r.State) + " " + r.Phase
			})
			r, err := f.c.Registry().Rollout(ro.ID)
			if err != nil {
				t.Fatal(err)
			}
			as := rollout.Analyses(r)
			for _, a := range as {
				t.Logf("wave %d %s: %s %.0f %s", a.Wave, a.Phase, a.Verdict, a.Score, a.Reason)
				for _, m := range a.Metrics {
					t.Logf("   %s %s baseline %.4g candidate %.4g %s n=%d/%d p=%.2g %s", m.Name, m.Verdict, m.Baseline, m.Candidate, m.Unit, m.BaselineN, m.CandidateN, m.P, m.Reason)
				}
			}
			if r.State != tc.state {
				t.Fatalf("rollout %s (%s), want %s", r.State, r.Phase, tc.state)
			}
			last := as[len(as)-1]
			if last.Phase != analysis.PhaseShadow || last.Verdict != analysis.Fail {
				t.Fatalf("the halting analysis: %s %s, want a failed shadow", last.Phase, last.Verdict)
			}
			// The critical one fails; a non-critical one may still be
			// waiting for intervals when the critical one ends the phase
			// (seen under load: latency on 1 interval against 1), but
			// never passes.
			for _, name := range tc.failing {
				i := slices.IndexFunc(last.Metrics, func(m analysis.MetricResult) bool { return m.Name == name })
				switch {
				case i < 0:
					t.Errorf("metric %s not in the shadow's analysis: %+v", name, last.Metrics)
				case last.Metrics[i].Critical && last.Metrics[i].Verdict != analysis.Fail,
					!last.Metrics[i].Critical && last.Metrics[i].Verdict == analysis.Pass:
					t.Errorf("metric %s: %s in the halting shadow: %+v", name, last.Metrics[i].Verdict, last.Metrics)
				}
			}
		})
	}
}
