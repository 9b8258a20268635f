package registry

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// TestRolloutPhasesStored: a rollout's phases, analysis config, current
// phase and analyses, an assignment's trial and baseline, and a device's
// features come back as written, on both engines; a rollout without them
// reads as none (nil, not JSON null).
func TestRolloutPhasesStored(t *testing.T) { eachEngine(t, testRolloutPhasesStored) }

func testRolloutPhasesStored(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	defer r.Close()
	now := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	plain := &Rollout{ID: "r-plain", Model: "face", Version: 2, Waves: []int{100}, State: RolloutRunning, Created: now, Updated: now}
	ro := &Rollout{ID: "r-phases", Model: "face", Version: 3, Waves: []int{10, 100}, State: RolloutRunning, Created: now, Updated: now,
		Shadow: &TrialPhase{Percent: 10, Duration: 15 * time.Minute}, Canary: &TrialPhase{Percent: 5.5, Duration: time.Minute},
		Analysis: json.RawMessage(`{"pass": 95, "max_wait": 60000000000}`), Phase: PhaseCanary, PhaseStarted: now.Add(time.Minute),
		Analyses: json.RawMessage(`[{"phase": "shadow", "verdict": "pass", "score": 100}]`)}
	for _, x := range []*Rollout{plain, ro} {
		if err := r.PutRollout(x); err != nil {
			t.Fatal(err)
		}
	}
	got, err := r.Rollout("r-phases")
	if err != nil {
		t.Fatal(err)
	}
	if *got.Shadow != *ro.Shadow || *got.Canary != *ro.Canary || got.Phase != PhaseCanary || !got.PhaseStarted.Equal(ro.PhaseStarted) {
		t.Fatalf("got %+v, want %+v", got, ro)
	}
	var cfg struct {
		Pass    float64 `json:"pass"`
		MaxWait int64   `json:"max_wait"`
	}
	var reps []struct {
		Phase string `json:"phase"`
	}
	if err := json.Unmarshal(got.Analysis, &cfg); err != nil || cfg.Pass != 95 || cfg.MaxWait != int64(time.Minute) {
		t.Fatalf("analysis config %s: %+v, %v", got.Analysis, cfg, err)
	}
	if err := json.Unmarshal(got.Analyses, &reps); err != nil || len(reps) != 1 || reps[0].Phase != "shadow" {
		t.Fatalf("analyses %s: %+v, %v", got.Analyses, reps, err)
	}
	p, err := r.Rollout("r-plain")
	if err != nil || p.Shadow != nil || p.Canary != nil || p.Analysis != nil || p.Analyses != nil || p.Phase != "" || !p.PhaseStarted.IsZero() {
		t.Fatalf("plain rollout: %+v, %v", p, err)
	}
	if _, err := r.UpdateAssignment("r-phases", "gw-1", true, func(a *Assignment) bool {
		a.Trial, a.Baseline = protocol.TrialCanary, 2
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if a, err := r.Assignment("r-phases", "gw-1"); err != nil || a.Trial != protocol.TrialCanary || a.Baseline != 2 {
		t.Fatalf("assignment %+v, %v", a, err)
	}
	if _, err := r.UpdateDevice("gw-1", func(d *Device) { d.Features = []string{protocol.FeatureTrial} }); err != nil {
		t.Fatal(err)
	}
	if d, err := r.Device("gw-1"); err != nil || !d.Supports(protocol.FeatureTrial) || d.Supports("other") {
		t.Fatalf("device %+v, %v", d, err)
	}
}

func TestUpdateRolloutAudited(t *testing.T) { eachEngine(t, testUpdateRolloutAudited) }

// testUpdateRolloutAudited: the decisions an update adds are in the audit
// log when it returns, one record each, chained; an update that fails adds
// neither decisions nor records.
func testUpdateRolloutAudited(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	defer r.Close()
	now := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	if err := r.PutRollout(&Rollout{ID: "r-1", Model: "face", Version: 2, Waves: []int{100}, State: RolloutRunning, Created: now, Updated: now,
		Decisions: []Decision{{Time: now, Action: "old"}}}); err != nil {
		t.Fatal(err)
	}
	audit := func(ro *Rollout, d *Decision) AuditRecord {
		return AuditRecord{Time: d.Time, Actor: "system", ActorName: "rollout", Method: "DECIDE", Path: "/v1/rollouts/" + ro.ID + "/" + d.Action}
	}
	if _, err := r.UpdateRolloutAudited("r-1", func(ro *Rollout) error {
		ro.Decisions = append(ro.Decisions, Decision{Time: now.Add(time.Second), Action: "a"}, Decision{Time: now.Add(2 * time.Second), Action: "b"})
		return nil
	}, audit); err != nil {
		t.Fatal(err)
	}
	if _, err := r.UpdateRolloutAudited("r-1", func(ro *Rollout) error {
		ro.Decisions = append(ro.Decisions, Decision{Time: now.Add(3 * time.Second), Action: "c"})
		return errors.New("changed my mind")
	}, audit); err == nil {
		t.Fatal("a failing update succeeded")
	}
	recs, err := r.Audit(time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, rec := range recs {
		paths = append(paths, rec.Path)
	}
	if want := []string{"/v1/rollouts/r-1/a", "/v1/rollouts/r-1/b"}; !slices.Equal(paths, want) {
		t.Errorf("audit log: %v, want %v", paths, want)
	}
	if n, err := r.VerifyAudit(); err != nil || n != 2 {
		t.Errorf("VerifyAudit: %d, %v", n, err)
	}
	ro, err := r.Rollout("r-1")
	if err != nil || len(ro.Decisions) != 3 {
		t.Fatalf("decisions: %+v, %v", ro, err)
	}
}
