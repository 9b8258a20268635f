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
// canary aggregates as an agent sends them: an equal candidate passes every
// phase and the rollout completes; one three times slower that disagrees on
// half its answers halts in shadow on latency and agreement; one failing a
// fifth of its requests halts on the error ratio. The agents' own end to end
// is cmd/outpost-agent's TestRolloutPhasesEndToEnd.
func TestPhasesWithTheRealAnalyzer(t *testing.T) {
	for _, tc := range []struct {
		name    string
		beh     simdevice.Behaviour
		state   registry.RolloutState
		failing []string // metrics that must fail in the halting analysis
	}{
		{"equal", simdevice.Behaviour{}, registry.RolloutCompleted, nil},
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
			cfg.MinRequests, cfg.MaxWait = 100, 20*time.Second
			ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MaxFailureRatio: 0.5,
				Shadow: &registry.TrialPhase{Percent: 50, Duration: 3 * time.Second},
				Canary: &registry.TrialPhase{Percent: 50, Duration: 3 * time.Second}, Analysis: &cfg})
			if err != nil {
				t.Fatal(err)
			}
			eventually(t, 120*time.Second, "the rollout ends", func() (bool, string) {
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
			if tc.state == registry.RolloutCompleted {
				phases := map[analysis.Phase]int{}
				for _, a := range as {
					if a.Verdict != analysis.Pass {
						continue
					}
					phases[a.Phase]++
				}
				if phases[analysis.PhaseShadow] < 2 || phases[analysis.PhaseCanary] < 2 {
					t.Errorf("passed analyses by phase %v: want shadow and canary in both waves", phases)
				}
				return
			}
			last := as[len(as)-1]
			if last.Phase != analysis.PhaseShadow || last.Verdict != analysis.Fail {
				t.Fatalf("the halting analysis: %s %s, want a failed shadow", last.Phase, last.Verdict)
			}
			for _, name := range tc.failing {
				i := slices.IndexFunc(last.Metrics, func(m analysis.MetricResult) bool { return m.Name == name })
				if i < 0 || last.Metrics[i].Verdict != analysis.Fail {
					t.Errorf("metric %s does not fail the shadow: %+v", name, last.Metrics)
				}
			}
		})
	}
}
