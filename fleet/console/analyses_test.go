package console_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/protocol"
)

// TestConsoleRolloutAnalyses: a rollout with shadow and canary phases on
// a real controller and its own analyzer, simulated devices that take
// trials and send traffic, and a candidate failing a fifth of its
// requests. The rollout page shows the phase while the shadow runs, then
// the halt: the failed shadow's analysis with its metrics (the error ratio
// critical and failing, the counts the API reports), the shadow-fail
// decision marked bad, and no page error.
func TestConsoleRolloutAnalyses(t *testing.T) {
	chromium(t) // before the set-up: skips without a browser
	// One-second drift windows make the store keep the fine buckets a
	// phase of seconds is judged on.
	f := startController(t, controller.Options{AnalyzeEvery: 200 * time.Millisecond, Drift: controller.DriftOptions{Window: time.Second}})
	v1 := f.pushVersions(t, 2)
	const n = 4
	for i := range n {
		f.device(t, simdevice.Options{Device: fmt.Sprintf("gw-%03d", i), RetryAfter: time.Second, Trials: true,
			Models: []protocol.ModelStatus{{Name: model, Version: 1, Digest: v1}},
			Traffic: &simdevice.Traffic{Every: 200 * time.Millisecond, Requests: 100, Candidate: func(string, int64) simdevice.Behaviour {
				return simdevice.Behaviour{ErrorRatio: 0.2}
			}}})
	}
	waitFor(t, 60*time.Second, "devices online, taking trials", func() bool {
		s, err := f.c.Registry().Summary()
		if err != nil || s.Online != n {
			return false
		}
		d, err := f.c.Registry().Device("gw-000")
		return err == nil && d.Supports(protocol.FeatureTrial)
	})

	base := "http://" + f.c.AdminAddr()
	call := func(token, method, path, body string, want int, out any) {
		t.Helper()
		f.call(t, token, method, path, body, want, out)
	}
	var op struct{ Token string }
	call("", "POST", "/v1/tokens", `{"role":"operator","name":"olga"}`, http.StatusCreated, &op)
	logged := &consoleLog{}
	b := openTab(t, 60*time.Second, logged)
	b.do("log in", chromedp.Navigate(base+"/console/#/rollouts"), chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), op.Token), chromedp.Click(chromedp.CSS("#login")))
	b.until("the rollouts page", `document.querySelector('h1') && document.querySelector('h1').textContent === 'Rollouts'`)

	// The shadow lasts 10 s: the page, polling every second, sees it even
	// on a loaded machine.
	var ro rolloutRep
	call(op.Token, "POST", "/v1/rollouts", fmt.Sprintf(`{"model":%q,"version":2,"waves":[50,100],"max_failure_ratio":0.5,
		"shadow":{"percent":50,"duration":"10s"},"canary":{"percent":50,"duration":"3s"},
		"analysis":{"min_requests":100,"max_wait":%d}}`, model, time.Minute), http.StatusCreated, &ro)
	b.do("open the rollout", chromedp.Navigate(base+"/console/#/rollouts/"+ro.ID))
	b.until("the shadow phase", `(document.getElementById('rollout-phase') || {}).textContent?.startsWith('wave 1 shadow')`)
	if got := b.eval(`document.querySelector('#main dl.kv').textContent`); !strings.Contains(got, "shadow 50% for 10s, canary 50% for 3s, analysis") {
		t.Errorf("the phases are not shown: %q", got)
	}
	b.until("the halt and its analysis", `document.getElementById('rollout-state').textContent === 'halted' &&
		document.querySelector('#analyses article[data-phase="shadow"][data-verdict="fail"]') !== null`)

	// The page against the API.
	var rep struct {
		Analyses []analysis.Report `json:"analyses"`
	}
	call(op.Token, "GET", "/v1/rollouts/"+ro.ID, "", http.StatusOK, &rep)
	last := rep.Analyses[len(rep.Analyses)-1]
	var er *analysis.MetricResult
	for i := range last.Metrics {
		if last.Metrics[i].Name == analysis.MetricErrorRatio {
			er = &last.Metrics[i]
		}
	}
	if last.Phase != analysis.PhaseShadow || last.Verdict != analysis.Fail || er == nil || er.Verdict != analysis.Fail {
		t.Fatalf("the API's last analysis: %+v", last)
	}
	// The newest analysis comes first; its error ratio row, cell by cell.
	row := b.eval(`Array.from(document.querySelectorAll('#analyses article')[0].querySelectorAll('tbody tr'))
		.find((tr) => tr.cells[0].textContent.startsWith('error_ratio')).innerText`)
	cells := strings.Split(row, "\t")
	if len(cells) < 6 || cells[0] != "error_ratio (critical)" || cells[3] != fmt.Sprintf("%d / %d", er.BaselineN, er.CandidateN) || cells[5] != "fail" {
		t.Errorf("the error ratio's row: %q, the API's %+v", cells, *er)
	}
	if got := b.eval(`document.querySelectorAll('#analyses article')[0].querySelector('h3').textContent`); got != fmt.Sprintf("Wave 1 shadow fail score %.0f", last.Score) {
		t.Errorf("the analysis's heading: %q, score %.0f", got, last.Score)
	}
	if got := b.eval(`Array.from(document.querySelectorAll('table[aria-label="Gate decisions"] .badge.bad')).map((e) => e.textContent).join()`); got != "shadow-fail" {
		t.Errorf("the decisions marked bad: %q, want shadow-fail", got)
	}
	if got := b.eval(`document.getElementById('rollout-phase') ? 'shown' : ''`); got != "" {
		t.Errorf("a halted rollout still shows its phase")
	}
	if bad := b.eval(unlabelled); bad != "" {
		t.Errorf("rollout page: %s", bad)
	}
	b.shot("rollout-analyses-1280", "#analyses")
	if errs := logged.errors(); len(errs) > 0 {
		t.Errorf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}
}
