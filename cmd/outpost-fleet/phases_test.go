package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/models/testmodel"
)

// TestRolloutPhaseFlagErrors: the real binary refuses --shadow, --canary
// and --analysis values that cannot work, before it calls the controller,
// and serve refuses a fleet.yaml whose rollouts.analysis file is missing.
func TestRolloutPhaseFlagErrors(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	badKey := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badKey, []byte("pass: 95\nmax_wiat: 10m\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Nothing listens there: a flag error must come first.
	base := []string{"rollout", "create", "--admin", "127.0.0.1:9", "--model", "face", "--version", "2"}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--shadow", "10"}, 2, `--shadow "10": no percent and duration (want PERCENT%/DURATION, like 10%/15m)`},
		{[]string{"--shadow", "10/15m"}, 2, `--shadow "10/15m": no percent and duration`},
		{[]string{"--canary", "150%/1m"}, 2, `--canary "150%/1m": the percent must be above 0 and at most 100`},
		{[]string{"--canary", "0%/1m"}, 2, "the percent must be above 0"},
		{[]string{"--shadow", "ten%/1m"}, 2, "the percent is not a number"},
		{[]string{"--shadow", "10%/soon"}, 2, "the duration is not a duration"},
		{[]string{"--canary", "5%/10ms"}, 2, "the duration must be at least a second"},
		{[]string{"--analysis", filepath.Join(dir, "missing.yaml")}, 1, "--analysis: open " + filepath.Join(dir, "missing.yaml") + ": no such file"},
		{[]string{"--shadow", "10%/1m", "--analysis", badKey}, 1, `--analysis: ` + badKey + `:2: unknown key "max_wiat"`},
	} {
		_, stderr := cliEnv(t, bin, nil, tc.code, append(append([]string(nil), base...), tc.args...)...)
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: stderr %q, want %q", tc.args, stderr, tc.want)
		}
	}
	cfg := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(cfg, []byte("rollouts:\n  analysis: "+filepath.Join(dir, "nope.yaml")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr := cliEnv(t, bin, nil, 1, "serve", "--config", cfg, "--keys", filepath.Join(dir, "keys"), "--data-dir", filepath.Join(dir, "data"),
		"--listen-mqtt", testbroker.FreeAddr(t), "--admin", testbroker.FreeAddr(t))
	if want := "rollouts.analysis: open " + filepath.Join(dir, "nope.yaml"); !strings.Contains(stderr, want) {
		t.Errorf("serve with a missing rollouts.analysis: stderr %q, want %q", stderr, want)
	}
}

// TestPrintAnalyses: rollout status shows each wave's phase and, per
// analysed phase, its line (phase, window, score, verdict, reason) and a
// table of its metrics.
func TestPrintAnalyses(t *testing.T) {
	from := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	rep := rollout.Report{Rollout: registry.Rollout{ID: "r-1", Model: "hands", Version: 2, Waves: []int{10, 100}, State: registry.RolloutHalted,
		Reason: "wave 1 shadow analysis failed: latency", Shadow: &registry.TrialPhase{Percent: 10, Duration: 15 * time.Minute},
		Analysis: []byte(`{}`)},
		Waves: []rollout.WaveReport{{Percent: 10, Devices: 3, Gate: rollout.GateWaiting, Phase: registry.PhaseShadow, TrialDevices: 2}, {Percent: 100}},
		Analyses: []analysis.Report{{Phase: analysis.PhaseShadow, Baseline: 1, Candidate: 2, From: from, To: from.Add(15 * time.Minute),
			Score: 0, Verdict: analysis.Fail, Reason: "critical metric latency failed", Metrics: []analysis.MetricResult{
				{Name: analysis.MetricLatency, Critical: true, Baseline: 2.5, Candidate: 5.25, Unit: "ms", BaselineN: 40, CandidateN: 38, Verdict: analysis.Fail, Reason: "p < 0.001"},
				{Name: analysis.MetricAgreement, Baseline: 1, Candidate: 0.62, Unit: "top-1", BaselineN: 400, CandidateN: 400, Verdict: analysis.Fail},
			}}}}
	var b strings.Builder
	printReports(&b, []rollout.Report{rep})
	out := b.String()
	for _, want := range []string{
		"phases: shadow 10% for 15m0s, analysis",
		"SUCCESSES  PHASE   TRIAL DEVICES",
		"shadow  2",
		"wave 1 shadow analysis 2026-11-30T08:00:00Z..2026-11-30T08:15:00Z: score 0, fail (critical metric latency failed)",
		"METRIC              BASELINE v1  CANDIDATE v2  N        VERDICT  WHY",
		"latency (critical)  2.5 ms       5.25 ms       40/38    fail     p < 0.001",
		"agreement           1 top-1      0.62 top-1    400/400  fail",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	// --watch's line names the phase and its last analysis.
	rep.State, rep.Phase = registry.RolloutRunning, registry.PhaseShadow
	rep.Analyses[0].Verdict = analysis.Wait
	if got, want := summary(rep), "r-1 hands v2 running wave 1/2 committed 0/0 phase shadow (analysis: wait, score 0)"; !strings.HasPrefix(got, want) {
		t.Errorf("summary %q, want %q...", got, want)
	}
}

// FuzzParsePhase: whatever --shadow or --canary is given, parsePhase
// either refuses it or returns a share above 0 and at most 100 and a
// duration of at least a second, which reads back the same.
func FuzzParsePhase(f *testing.F) {
	for _, s := range []string{"10%/15m", "10", "10/15m", "150%/1m", "0%/1m", "ten%/1m", "10%/soon", "5%/10ms", "100%/1h30m", "0.5%/2s", "NaN%/1m", "%/", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := parsePhase("shadow", s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "--shadow ") {
				t.Fatalf("error %q does not name the flag", err)
			}
			return
		}
		d, derr := time.ParseDuration(p.Duration)
		if !(p.Percent > 0 && p.Percent <= 100) || derr != nil || d < time.Second {
			t.Fatalf("%q: accepted %+v", s, p)
		}
		again, err := parsePhase("shadow", fmt.Sprintf("%v%%/%s", p.Percent, p.Duration))
		if err != nil || *again != *p {
			t.Fatalf("%q: %+v reads back as %+v, %v", s, p, again, err)
		}
	})
}

// TestRolloutsAnalysisFromConfig: serve's rollouts.analysis file is the
// analysis of every rollout with phases that names none: rollout create
// --shadow without --analysis stores it, with the defaults for what the
// file leaves out; --analysis still wins.
func TestRolloutsAnalysisFromConfig(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "analysis.yaml")
	own := filepath.Join(dir, "own.yaml")
	cfg := filepath.Join(dir, "fleet.yaml")
	for p, body := range map[string]string{file: "pass: 90\nmarginal: 70\nmax_wait: 7m\n", own: "pass: 99\n",
		cfg: "rollouts:\n  analysis: " + file + "\n"} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := startServe(t, bin, serveOptions{Args: []string{"--config", cfg}})
	admin := s.adminAddr()
	for v := range 2 {
		cli(t, bin, 0, "models", "push", "--admin", admin, "--keys", s.keys.Dir(), "--name", "face", "--version", fmt.Sprint(v+1),
			testmodel.Path(t, testmodel.FaceShort))
	}
	create := func(extra ...string) analysis.Config {
		t.Helper()
		out := cli(t, bin, 0, append([]string{"rollout", "create", "--admin", admin, "--model", "face", "--version", "2",
			"--shadow", "10%/1m"}, extra...)...)
		id := regexp.MustCompile(`r-[0-9a-f]+`).FindString(out)
		resp, err := http.Get(s.admin + "/v1/rollouts/" + id)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rep struct {
			Analysis analysis.Config `json:"analysis"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /v1/rollouts/%s (from %q): %d %v", id, out, resp.StatusCode, err)
		}
		return rep.Analysis
	}
	got := create()
	def := analysis.Defaults()
	if got.Pass != 90 || got.Marginal != 70 || got.MaxWait != 7*time.Minute || got.Confidence != def.Confidence || got.MinRequests != def.MinRequests {
		t.Errorf("the config's analysis: got %+v", got)
	}
	if got := create("--analysis", own); got.Pass != 99 || got.MaxWait != def.MaxWait {
		t.Errorf("--analysis: got %+v", got)
	}
}
