package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
)

// verdicts is an analyzer that gives each phase one verdict and counts
// its analyses. The engine's reaction is what these tests judge over a real
// broker with simulated devices; the analyzer's own judgement on real
// telemetry is fleet/analysis's and the end-to-end tests'.
type verdicts struct {
	mu    sync.Mutex
	by    map[analysis.Phase]analysis.Verdict
	n     map[analysis.Phase]int
	first []analysis.Request // the first request of each phase and wave
}

func (v *verdicts) Analyze(_ context.Context, req analysis.Request) (analysis.Report, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.n[req.Phase] == 0 || req.Phase == analysis.PhaseWave || v.first[len(v.first)-1].Phase != req.Phase {
		v.first = append(v.first, req)
	}
	v.n[req.Phase]++
	verdict := v.by[req.Phase]
	m := analysis.MetricResult{Name: analysis.MetricAgreement, Critical: true, Weight: 1, Baseline: 1, Candidate: 1, Unit: "top-1", Verdict: verdict}
	if verdict == analysis.Fail {
		m.Candidate = 0.4
	}
	return analysis.Report{Verdict: verdict, Score: map[analysis.Verdict]float64{analysis.Pass: 100}[verdict], Reason: "test",
		Metrics: []analysis.MetricResult{m}}, nil
}

func (v *verdicts) count(p analysis.Phase) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.n[p]
}

// phaseFleet runs a controller with analyzer an and n devices serving
// face v1, all but every fourth taking trials, and pushes face v2.
func phaseFleet(t *testing.T, n int, an rollout.Analyzer) (*fleet, *devices) {
	f := startFleet(t, controller.Options{Analyzer: an, AnalyzeEvery: 100 * time.Millisecond})
	mv1 := f.push("face", 1, 32<<10, 16<<10)
	f.push("face", 2, 32<<10, 16<<10)
	ds := f.devices(n, "", func(i int, o *simdevice.Options) {
		o.Models = []protocol.ModelStatus{{Name: "face", Version: 1, Digest: "sha256:" + mv1.SHA256}}
		o.Trials = i%4 != 0
	})
	f.waitDevices(n)
	eventually(t, 30*time.Second, "the devices' features", func() (bool, string) {
		d, err := f.c.Registry().Device(devName(1))
		return err == nil && d.Supports(protocol.FeatureTrial), fmt.Sprint(d, err)
	})
	return f, ds
}

var phaseSpec = rollout.Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MaxFailureRatio: 0.1,
	Shadow: &registry.TrialPhase{Percent: 10, Duration: time.Second}, Canary: &registry.TrialPhase{Percent: 20, Duration: time.Second},
	Analysis: &analysis.Config{Confidence: 0.98, Pass: 95, Marginal: 75, MaxWait: time.Minute}}

// TestPhasesThroughBroker: with every analysis passing, each wave's trial
// devices hold v2 in shadow, then canary, then everyone is promoted: the
// rollout completes with every device on v2, and no device refused a
// command (the devices without trials never got one with a trial).
func TestPhasesThroughBroker(t *testing.T) {
	const n = 8
	an := &verdicts{by: map[analysis.Phase]analysis.Verdict{analysis.PhaseShadow: analysis.Pass, analysis.PhaseCanary: analysis.Pass,
		analysis.PhaseWave: analysis.Pass}, n: map[analysis.Phase]int{}}
	f, ds := phaseFleet(t, n, an)
	ro, err := f.c.Engine().Create(phaseSpec)
	if err != nil {
		t.Fatal(err)
	}
	f.waitRollout(ro.ID, registry.RolloutCompleted, 120*time.Second)
	if got, off := running(ds, n, "face", 2); got != n {
		t.Fatalf("got %d of %d devices on face v2; not: %s", got, n, off)
	}
	for i := range n {
		if c := ds.get(i).Counters(); c.Rejected != 0 {
			t.Errorf("%s refused %d commands", devName(i), c.Rejected)
		}
		if m, v, mode := ds.get(i).Trial(); v != 0 {
			t.Errorf("%s still holds %s v%d in %s", devName(i), m, v, mode)
		}
	}
	if an.count(analysis.PhaseShadow) != 2 || an.count(analysis.PhaseCanary) != 2 || an.count(analysis.PhaseWave) != 1 {
		t.Fatalf("analyses: %d shadow, %d canary, %d wave; want 2, 2, 1", an.count(analysis.PhaseShadow), an.count(analysis.PhaseCanary),
			an.count(analysis.PhaseWave))
	}
	rep, err := f.c.Engine().Status(ro.ID)
	if err != nil || len(rep.Analyses) != 5 || rep.Committed != n {
		t.Fatalf("report: %d analyses, %d committed, %v", len(rep.Analyses), rep.Committed, err)
	}
}

// TestPhaseFailAbortsTrialsThroughBroker: a failed shadow analysis halts
// the rollout; every device that held v2 in shadow discards it, and no
// device ever serves v2.
func TestPhaseFailAbortsTrialsThroughBroker(t *testing.T) {
	const n = 8
	an := &verdicts{by: map[analysis.Phase]analysis.Verdict{analysis.PhaseShadow: analysis.Fail}, n: map[analysis.Phase]int{}}
	f, ds := phaseFleet(t, n, an)
	// Through the admin API, as rollout create sends it.
	req := `{"model": "face", "version": 2, "waves": [50, 100], "shadow": {"percent": 10, "duration": "1s"},
		"canary": {"percent": 20, "duration": "1s"}, "analysis": {"pass": 95, "marginal": 75, "max_wait": 60000000000}}`
	var ro rollout.Report
	adminCall(t, f, "POST", "/v1/rollouts", `{"model": "face", "version": 2, "shadow": {"percent": 10, "duration": "soon"}}`, 400, nil)
	adminCall(t, f, "POST", "/v1/rollouts", req, 201, &ro)
	if ro.Phase != registry.PhaseShadow || ro.Shadow == nil || ro.Shadow.Percent != 10 || ro.Canary.Duration != time.Second {
		t.Fatalf("created %+v", ro.Rollout)
	}
	f.waitRollout(ro.ID, registry.RolloutHalted, 120*time.Second)
	var got rollout.Report
	adminCall(t, f, "GET", "/v1/rollouts/"+ro.ID, "", 200, &got)
	if len(got.Analyses) != 1 || got.Analyses[0].Verdict != analysis.Fail || got.Analyses[0].Phase != analysis.PhaseShadow ||
		len(got.Analyses[0].Metrics) != 1 || got.Analyses[0].Metrics[0].Candidate != 0.4 || got.Waves[0].Phase != registry.PhaseShadow {
		t.Fatalf("GET /v1/rollouts/%s: analyses %+v, waves %+v", ro.ID, got.Analyses, got.Waves)
	}
	eventually(t, 60*time.Second, "no device holds or serves v2", func() (bool, string) {
		for i := range n {
			if _, v, mode := ds.get(i).Trial(); v != 0 {
				return false, fmt.Sprintf("%s holds v%d in %s", devName(i), v, mode)
			}
		}
		got, off := running(ds, n, "face", 1)
		return got == n, off
	})
	as, err := f.c.Registry().Assignments(ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	aborted := 0
	for _, a := range as {
		if a.Undo == protocol.CommandAbort {
			aborted++
		}
		if a.Activated {
			t.Errorf("%s activated v2 of a rollout halted in shadow", a.Device)
		}
	}
	if aborted == 0 {
		t.Fatal("no device got an abort")
	}
}

// TestPhaseSurvivesControllerRestart: the controller stops in the middle
// of a shadow window and starts again on the same store: the phase goes on
// from where it was (the window is not started again), and the rollout
// completes.
func TestPhaseSurvivesControllerRestart(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if _, err := keyring.Init(keys, keyring.Options{}); err != nil {
		t.Fatal(err)
	}
	addr := testbroker.FreeAddr(t)
	an := &verdicts{by: map[analysis.Phase]analysis.Verdict{analysis.PhaseShadow: analysis.Pass}, n: map[analysis.Phase]int{}}
	opts := controller.Options{Keys: keys, DataDir: t.TempDir(), ListenMQTT: addr, Analyzer: an, AnalyzeEvery: 100 * time.Millisecond}
	f := startFleet(t, opts)
	mv1 := f.push("face", 1, 32<<10, 16<<10)
	f.push("face", 2, 32<<10, 16<<10)
	const n = 4
	ds := f.devices(n, "tcp://"+addr, func(i int, o *simdevice.Options) {
		o.Models = []protocol.ModelStatus{{Name: "face", Version: 1, Digest: "sha256:" + mv1.SHA256}}
		o.Trials = true
	})
	f.waitDevices(n)
	eventually(t, 30*time.Second, "the devices' features", func() (bool, string) {
		d, err := f.c.Registry().Device(devName(0))
		return err == nil && d.Supports(protocol.FeatureTrial), fmt.Sprint(d, err)
	})
	ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: 5 * time.Second}, Analysis: &analysis.Config{MaxWait: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	var started time.Time
	eventually(t, 60*time.Second, "the shadow window started", func() (bool, string) {
		r, _ := f.c.Registry().Rollout(ro.ID)
		started = r.PhaseStarted
		return !started.IsZero(), r.Phase
	})
	f.stop()
	if an.count(analysis.PhaseShadow) != 0 {
		t.Skip("the window ended before the controller stopped (a very slow machine): nothing to carry over")
	}
	f2 := startFleet(t, opts)
	f2.waitRollout(ro.ID, registry.RolloutCompleted, 120*time.Second)
	if got, off := running(ds, n, "face", 2); got != n {
		t.Fatalf("%d of %d on v2 after the restart; not: %s", got, n, off)
	}
	an.mu.Lock()
	first := an.first[0]
	an.mu.Unlock()
	if !first.From.Equal(started) {
		t.Fatalf("shadow judged from %s, the window started at %s", first.From, started)
	}
	r, _ := f2.c.Registry().Rollout(ro.ID)
	n0 := 0
	for _, d := range r.Decisions {
		if d.Action == "shadow-started" {
			n0++
		}
	}
	if n0 != 1 {
		t.Fatalf("the shadow window started %d times: %+v", n0, r.Decisions)
	}
}

// adminCall calls f's admin API with a JSON body and decodes the answer.
func adminCall(t *testing.T, f *fleet, method, path, body string, want int, out any) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+f.c.AdminAddr()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: got %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

// TestPhasesTakeTheDefaultAnalysis: a controller judges phases with
// fleet/analysis unless told otherwise: a rollout with a shadow phase and no
// analysis config gets analysis.Defaults(), one with a partial config the
// defaults for what it leaves out, and an analysis config that does not
// check is refused, naming what is wrong.
func TestPhasesTakeTheDefaultAnalysis(t *testing.T) {
	f := startFleet(t, controller.Options{})
	f.push("face", 1, 1000, 1000)
	var e struct{ Error string }
	adminCall(t, f, "POST", "/v1/rollouts", `{"model": "face", "version": 1, "analysis": {"confidence": 1.5}}`, 400, &e)
	if !strings.Contains(e.Error, "confidence 1.5") {
		t.Fatalf("an analysis config with confidence 1.5: error %q", e.Error)
	}
	config := func(body string) analysis.Config {
		t.Helper()
		var ro struct{ ID string }
		adminCall(t, f, "POST", "/v1/rollouts", body, 201, &ro)
		got, err := f.c.Registry().Rollout(ro.ID)
		if err != nil {
			t.Fatal(err)
		}
		var c analysis.Config
		if err := json.Unmarshal(got.Analysis, &c); err != nil {
			t.Fatal(err)
		}
		if _, err := f.c.Engine().Abort(ro.ID, "next"); err != nil {
			t.Fatal(err)
		}
		return c
	}
	want := analysis.Defaults()
	if c := config(`{"model": "face", "version": 1, "shadow": {"percent": 10, "duration": "1m"}}`); !reflect.DeepEqual(c, want) {
		t.Errorf("the rollout's analysis config:\n%+v\nwant the defaults:\n%+v", c, want)
	}
	want.MinRequests = 50
	if c := config(`{"model": "face", "version": 1, "analysis": {"min_requests": 50}}`); !reflect.DeepEqual(c, want) {
		t.Errorf("a partial analysis config:\n%+v\nwant the defaults but min_requests:\n%+v", c, want)
	}
}

// TestSimTrafficInCanary: simulated devices with traffic report both arms
// of a canary as the agent does (docs/PROTOCOL.md, Trials): the serving
// version's aggregate and the candidate's, the candidate here slower and
// failing a fifth of its requests; the controller's metrics show each
// version's own latency and errors. (An analyzer reading them is the lead's
// end-to-end test; this one holds the phase with wait verdicts.)
func TestSimTrafficInCanary(t *testing.T) {
	an := &verdicts{by: map[analysis.Phase]analysis.Verdict{analysis.PhaseCanary: analysis.Wait}, n: map[analysis.Phase]int{}}
	f := startFleet(t, controller.Options{Analyzer: an, AnalyzeEvery: 100 * time.Millisecond})
	mv1 := f.push("face", 1, 32<<10, 16<<10)
	f.push("face", 2, 32<<10, 16<<10)
	const n = 4
	ds := f.devices(n, "", func(i int, o *simdevice.Options) {
		o.Models = []protocol.ModelStatus{{Name: "face", Version: 1, Digest: "sha256:" + mv1.SHA256}}
		o.Trials = true
		o.Traffic = &simdevice.Traffic{Every: 200 * time.Millisecond, Requests: 100, Candidate: func(string, int64) simdevice.Behaviour {
			return simdevice.Behaviour{LatencyFactor: 3, ErrorRatio: 0.2}
		}}
	})
	f.waitDevices(n)
	eventually(t, 30*time.Second, "the devices' features", func() (bool, string) {
		d, err := f.c.Registry().Device(devName(0))
		return err == nil && d.Supports(protocol.FeatureTrial), fmt.Sprint(d, err)
	})
	ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1,
		Canary: &registry.TrialPhase{Percent: 50, Duration: time.Minute}, Analysis: &analysis.Config{MaxWait: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "every device holds v2 in canary", func() (bool, string) {
		for i := range n {
			if _, v, mode := ds.get(i).Trial(); v != 2 || mode != protocol.TrialCanary {
				return false, fmt.Sprintf("%s: v%d %s", devName(i), v, mode)
			}
		}
		return true, ""
	})
	since := time.Now().Add(-time.Minute)
	eventually(t, 60*time.Second, "both arms in the metrics", func() (bool, string) {
		m1, err1 := f.c.Registry().Metrics(registry.MetricsQuery{Model: "face", Version: "1", Since: since})
		m2, err2 := f.c.Registry().Metrics(registry.MetricsQuery{Model: "face", Version: "2", Since: since})
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		a, b := m1.Totals, m2.Totals
		ok := a.Requests > 500 && b.Requests > 500 && a.Errors == 0 && b.Errors > b.Requests/10 && b.Errors < b.Requests/3 && b.P50MS > 2*a.P50MS
		return ok, fmt.Sprintf("v1 %+v; v2 %+v", a, b)
	})
	if r, _ := f.c.Registry().Rollout(ro.ID); r.State != registry.RolloutRunning || r.Phase != registry.PhaseCanary {
		t.Fatalf("rollout %s in %s, want running in canary", r.State, r.Phase)
	}
	if c := ds.get(0).Counters(); c.Aggregates == 0 {
		t.Fatalf("counters %+v", c)
	}
}
