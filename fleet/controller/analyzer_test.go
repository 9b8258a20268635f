package controller_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
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

// TestRealAnalyzerEdges: the rollout engine and the real analyzer on the
// paths besides a halting trial (docs/ANALYSIS.md, docs/API.md):
//   - no traffic at all: the shadow's analysis waits, never passes, and the
//     rollout pauses for the operator max_wait after the window, having
//     promoted nothing;
//   - trials that fail on the devices: the failure ratio halts the rollout
//     in shadow, nothing promoted;
//   - a candidate that installs fine but fails a fifth of its requests once
//     serving: the wave analysis against the devices still on v1 halts the
//     rollout, and the wave's devices are rolled back to v1.
func TestRealAnalyzerEdges(t *testing.T) {
	const n = 4
	start := func(t *testing.T, tune func(o *simdevice.Options)) (*fleet, string) {
		t.Helper()
		f := startFleet(t, controller.Options{AnalyzeEvery: 200 * time.Millisecond, Drift: controller.DriftOptions{Window: time.Second}})
		mv1 := f.push("face", 1, 32<<10, 16<<10)
		f.push("face", 2, 32<<10, 16<<10)
		f.devices(n, "", func(i int, o *simdevice.Options) {
			o.Models = []protocol.ModelStatus{{Name: "face", Version: 1, Digest: "sha256:" + mv1.SHA256}}
			o.Trials = true
			tune(o)
		})
		f.waitDevices(n)
		eventually(t, 30*time.Second, "the devices' features", func() (bool, string) {
			d, err := f.c.Registry().Device(devName(0))
			return err == nil && d.Supports(protocol.FeatureTrial), fmt.Sprint(d, err)
		})
		return f, "sha256:" + mv1.SHA256
	}
	ended := func(t *testing.T, f *fleet, id string, states ...registry.RolloutState) *registry.Rollout {
		t.Helper()
		var r *registry.Rollout
		eventually(t, 120*time.Second, "the rollout stops", func() (bool, string) {
			r, _ = f.c.Registry().Rollout(id)
			return r != nil && slices.Contains(states, r.State), fmt.Sprintf("%+v", r)
		})
		return r
	}
	committed := func(t *testing.T, f *fleet, id string) int {
		t.Helper()
		as, err := f.c.Registry().Assignments(id)
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for _, a := range as {
			if a.State == protocol.UpdateCommitted || a.Activated {
				k++
			}
		}
		return k
	}
	cfg := analysis.Defaults()
	cfg.MinRequests = 100

	t.Run("no traffic pauses", func(t *testing.T) {
		f, _ := start(t, func(*simdevice.Options) {})
		c := cfg
		// MaxWait also bounds the wait for the trial devices to hold the
		// candidate once the phase began: 2 s was too short for 4
		// simulated devices' downloads under the race detector on a busy
		// machine (stress run s16/1: "0 of 4 trial devices hold the
		// candidate, 4 on their way").
		c.MaxWait = 8 * time.Second
		ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.5,
			Shadow: &registry.TrialPhase{Percent: 50, Duration: 2 * time.Second}, Analysis: &c})
		if err != nil {
			t.Fatal(err)
		}
		r := ended(t, f, ro.ID, registry.RolloutPaused, registry.RolloutCompleted, registry.RolloutHalted)
		if r.State != registry.RolloutPaused || r.Phase != registry.PhaseShadow || !strings.Contains(r.Reason, "too little evidence 8s after its window") {
			t.Fatalf("rollout %s in %s: %s", r.State, r.Phase, r.Reason)
		}
		if as := rollout.Analyses(r); len(as) == 0 || as[len(as)-1].Verdict != analysis.Wait {
			t.Errorf("the analyses: %+v", as)
		}
		if k := committed(t, f, ro.ID); k != 0 {
			t.Errorf("%d devices promoted without evidence", k)
		}
		// The report's phase fields, as docs/API.md names them.
		var rep map[string]any
		getJSON(t, f, "/v1/rollouts/"+ro.ID, &rep)
		for _, k := range []string{"shadow", "analysis", "phase", "phase_started", "phase_ends_at", "analyses", "waiting"} {
			if _, ok := rep[k]; !ok {
				t.Errorf("the report lacks %q: %v", k, rep)
			}
		}
		if w, _ := rep["waiting"].(string); !strings.HasPrefix(w, "wave 1 shadow analysis: wait") {
			t.Errorf("waiting: %q", w)
		}
		if wp, _ := rep["wave_progress"].([]any); len(wp) != 1 {
			t.Errorf("wave_progress: %v", rep["wave_progress"])
		} else if w, _ := wp[0].(map[string]any); w["phase"] != "shadow" || w["trial_devices"] != float64(n) {
			t.Errorf("wave 1's progress: %v", w)
		}
	})

	t.Run("failing trials halt", func(t *testing.T) {
		f, _ := start(t, func(o *simdevice.Options) {
			o.FailTrial = func(string, int64) bool { return true }
		})
		ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1,
			Shadow: &registry.TrialPhase{Percent: 50, Duration: 2 * time.Second}, Analysis: &cfg})
		if err != nil {
			t.Fatal(err)
		}
		r := ended(t, f, ro.ID, registry.RolloutPaused, registry.RolloutCompleted, registry.RolloutHalted)
		if r.State != registry.RolloutHalted || r.Phase != registry.PhaseShadow || !strings.Contains(r.Reason, "gate failed in wave 1") {
			t.Fatalf("rollout %s in %s: %s", r.State, r.Phase, r.Reason)
		}
		if k := committed(t, f, ro.ID); k != 0 {
			t.Errorf("%d devices promoted", k)
		}
	})

	t.Run("wave analysis rolls back", func(t *testing.T) {
		f, _ := start(t, func(o *simdevice.Options) {
			o.Traffic = &simdevice.Traffic{Every: 200 * time.Millisecond, Requests: 100, Serving: func(_ string, v int64) simdevice.Behaviour {
				if v == 2 {
					return simdevice.Behaviour{ErrorRatio: 0.2}
				}
				return simdevice.Behaviour{}
			}}
		})
		ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MaxFailureRatio: 0.5,
			Bake: 2 * time.Second, Analysis: &cfg})
		if err != nil {
			t.Fatal(err)
		}
		r := ended(t, f, ro.ID, registry.RolloutPaused, registry.RolloutCompleted, registry.RolloutHalted)
		as := rollout.Analyses(r)
		if r.State != registry.RolloutHalted || len(as) == 0 || as[len(as)-1].Phase != analysis.PhaseWave || as[len(as)-1].Verdict != analysis.Fail {
			t.Fatalf("rollout %s in %s: %s; analyses %+v", r.State, r.Phase, r.Reason, as)
		}
		if !strings.Contains(r.Reason, "wave 1 wave analysis failed") || !strings.Contains(r.Reason, analysis.MetricErrorRatio) {
			t.Errorf("the halt's reason: %s", r.Reason)
		}
		// The decision as an auditor reads it: GET /v1/audit (bootstrap
		// mode: loopback without a token), verified, with its numbers.
		var audit struct {
			Records  []registry.AuditRecord `json:"records"`
			Verified bool                   `json:"verified"`
		}
		// Written in the transaction that halted the rollout: there now.
		getJSON(t, f, "/v1/audit", &audit)
		i := slices.IndexFunc(audit.Records, func(a registry.AuditRecord) bool { return a.Path == "/v1/rollouts/"+ro.ID+"/wave-fail" })
		if i < 0 || !audit.Verified {
			t.Fatalf("no audit record of the wave's failure (verified %v): %+v", audit.Verified, audit.Records)
		}
		if a := audit.Records[i]; a.Actor != rollout.AuditActor || a.ActorName != rollout.AuditName || a.Method != "DECIDE" ||
			!strings.Contains(a.Detail, "error_ratio fail") || !strings.Contains(a.Detail, "score") {
			t.Errorf("the audit record: %+v", a)
		}
		// The wave's devices activated v2 and get it rolled back: every
		// device serves v1 again.
		eventually(t, 60*time.Second, "every device back on v1", func() (bool, string) {
			var on []string
			for i := range n {
				d, err := f.c.Registry().Device(devName(i))
				if err != nil {
					return false, err.Error()
				}
				on = append(on, fmt.Sprintf("%s v%d", d.ID, d.Running("face")))
				if d.Running("face") != 1 {
					return false, strings.Join(on, ", ")
				}
			}
			return true, ""
		})
	})
}

// getJSON decodes the admin API's 200 answer to GET path (bootstrap mode:
// loopback without a token) into out.
func getJSON(t *testing.T, f *fleet, path string, out any) {
	t.Helper()
	resp, err := http.Get("http://" + f.c.AdminAddr() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}
