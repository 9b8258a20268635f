package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/outpost-edge/outpost/fleet/console"
)

// contractFixtures answer the monitoring endpoints of issue 12 in the
// shapes the admin API's contract gives them (docs/CONSOLE.md), as the
// controller cannot serve them yet: a stand-in until they land, after
// which TestConsoleInBrowser sees the real ones. The rest is the minimum
// the pages read.
// lastQuery returns the query string of the last request for a path.
func contractFixtures(t *testing.T) (h http.Handler, lastQuery func(path string) url.Values) {
	now := time.Now().UTC().Truncate(time.Minute)
	var series []map[string]any
	for i := range 12 {
		series = append(series, map[string]any{"start": now.Add(time.Duration(i-12) * 5 * time.Minute).Format(time.RFC3339),
			"requests": 1000 + 37*i, "errors": i % 3, "p50_ms": 4.5 + float64(i%4)/2, "p90_ms": 9.1 + float64(i%5), "p99_ms": 20.3 + float64(i), "throughput_rps": 3.3})
	}
	var points []map[string]any
	for i := range 8 {
		points = append(points, map[string]any{"time": now.Add(time.Duration(i-8) * 10 * time.Minute).Format(time.RFC3339),
			"cpu_percent": 20 + 5*i, "load1": 0.4 + 0.1*float64(i), "mem_used_bytes": 300e6 + 1e6*i, "mem_total_bytes": 1e9,
			"disk_used_bytes": 5e9, "disk_total_bytes": 16e9, "temperature_c": 48 + i, "uptime_seconds": 3600 * (i + 1)})
	}
	feature := func(name string, psi float64, drifting bool) map[string]any {
		return map[string]any{"name": name, "psi": psi, "js": psi / 4, "count": 5000, "reference_count": 2000, "drifting": drifting}
	}
	answers := map[string]any{
		"/v1/whoami":   map[string]string{"id": "0123456789abcdef", "name": "fixture", "role": "viewer"},
		"/v1/overview": map[string]any{"devices": 1, "online": 1, "versions": []any{map[string]any{"model": "m", "version": 4, "devices": 1}}, "health": map[string]int{"ok": 1}, "updates": map[string]int{}, "rollouts": map[string]int{}},
		"/v1/rollouts": []any{},
		"/v1/models": []any{
			map[string]any{"name": "m", "version": 4, "sha256": strings.Repeat("ab", 32), "length": 123456, "chunk_size": 65536, "serial": 4, "created": now, "expires": now.Add(time.Hour)},
			map[string]any{"name": "m", "version": 3, "sha256": strings.Repeat("cd", 32), "length": 123000, "chunk_size": 65536, "serial": 3, "created": now, "expires": now.Add(time.Hour)},
		},
		"/v1/models/m/metrics": map[string]any{"model": "m", "version": "", "device": "", "since": now.Add(-time.Hour), "until": now, "step_seconds": 300,
			"totals":   map[string]any{"requests": 13000, "errors": 11, "errors_by_code": map[string]int{"503": 8, "400": 3}, "p50_ms": 5.1, "p90_ms": 11.2, "p99_ms": 29.8, "throughput_rps": 3.6},
			"series":   series,
			"versions": []string{"3", "4"}},
		"/v1/models/m/drift": map[string]any{"model": "m", "version": "4", "since": now.Add(-time.Hour), "state": "drifting",
			"features": []any{feature("input/mean[0]", 0.31, true), feature("input/std[0]", 0.05, false), feature("output/max", 0.12, false)},
			"devices":  []any{map[string]any{"device": "gw-1", "state": "drifting", "features": []any{feature("input/mean[0]", 0.4, true)}}}},
		"/v1/devices/gw-1": map[string]any{"id": "gw-1", "online": true, "last_seen": now, "labels": map[string]string{"site": "north"}, "agent_version": "1.2.3",
			"models": []any{map[string]any{"name": "m", "version": 4, "digest": "sha256:" + strings.Repeat("ab", 32)}}, "health": map[string]any{"status": "ok"}, "telemetry": map[string]any{}},
		"/v1/devices/gw-1/updates": map[string]any{"device": "gw-1", "updates": []any{}},
		"/v1/devices/gw-1/health":  map[string]any{"device": "gw-1", "points": points},
		"/v1/devices/gw-1/audit": map[string]any{"device": "gw-1", "records": []any{
			map[string]any{"seq": 2, "time": now, "model": "m", "actor": "agent", "action": "model.activate", "outcome": "ok", "detail": "v4", "chain": "ok"},
			map[string]any{"seq": 1, "time": now.Add(-time.Hour), "model": "m", "actor": "agent", "action": "model.stage", "outcome": "ok", "detail": "", "chain": "broken"}}},
	}
	var mu sync.Mutex // guards queries
	queries := map[string]url.Values{}
	mux := http.NewServeMux()
	mux.Handle("GET "+console.Prefix, console.Handler())
	for path, v := range answers {
		mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			queries[path] = r.URL.Query()
			mu.Unlock()
			if r.Header.Get("Authorization") != "Bearer fixture-token" {
				http.Error(w, `{"error":"missing or invalid token"}`, http.StatusUnauthorized)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			if err := json.NewEncoder(w).Encode(v); err != nil {
				t.Errorf("%s: %v", path, err)
			}
		})
	}
	return mux, func(path string) url.Values {
		mu.Lock()
		defer mu.Unlock()
		return queries[path]
	}
}

// TestConsoleCharts renders the model page's metrics and drift charts and
// the device page's health charts and audit trail from answers in the
// contract's shapes, in headless Chromium, without a page error.
func TestConsoleCharts(t *testing.T) {
	browser := chromium(t)
	shots := artifacts(t)
	fixtures, lastQuery := contractFixtures(t)
	srv := httptest.NewServer(fixtures)
	defer srv.Close()

	actx, acancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 800))...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	if err := chromedp.Do(bctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	logged := consoleLog{missing: regexp.MustCompile(`/v1/devices/gw-404$`)}
	if err := chromedp.Listen(bctx, logged.listen); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bctx, 20*time.Second)
	defer cancel()
	count := func(what, sel string) int {
		t.Helper()
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, sel)))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return n
	}
	text := func() string {
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('main').textContent`))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	wait := func(what, cond string) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Poll[bool](cond, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(0))); err != nil {
			main, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`location.href + ' ' + document.body.textContent`))
			t.Fatalf("waiting for %s: %v (page errors %q; page %q)", what, err, logged.errors(), main)
		}
	}
	// shot captures the element sel (the page's sections are below the
	// fold at 800 px).
	shot := func(name, sel string) {
		t.Helper()
		b, err := chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS(sel)))
		if err == nil {
			err = os.WriteFile(filepath.Join(shots, name+".png"), b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/console/#/models/m"), chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), "fixture-token"), chromedp.Click(chromedp.CSS("#login"))); err != nil {
		t.Fatal(err)
	}
	wait("the model's charts", `document.querySelectorAll('section[aria-labelledby="h-drift"] svg.chart rect').length === 3`)
	// Two line charts: requests and errors (2 series), latency (3).
	if n := count("lines", "#main figure svg.chart polyline"); n != 5 {
		t.Errorf("metrics: got %d lines, want 5", n)
	}
	if n := count("drifting bars", "#main svg.chart rect.bad"); n != 1 {
		t.Errorf("drift: got %d drifting bars, want 1", n)
	}
	if n := count("start form", "#start-rollout-panel, #ro-start"); n != 0 {
		t.Errorf("viewer sees the start form (%d)", n)
	}
	for _, want := range []string{"13,000", "29.8", "drifting", "input/mean[0]", "v3, v4", "503"} {
		if s := text(); !strings.Contains(s, want) {
			t.Errorf("model page lacks %q", want)
		}
	}
	if bad, err := chromedp.Run(ctx, chromedp.Evaluate[string](unlabelled)); err != nil || bad != "" {
		t.Errorf("model page: %s %v", bad, err)
	}
	shot("model-metrics-1280", `section[aria-labelledby="h-metrics"]`)
	shot("model-drift-1280", `section[aria-labelledby="h-drift"]`)

	// Another range asks the API for it and keeps the focus on the field.
	if err := chromedp.Do(ctx, chromedp.Focus(chromedp.CSS("#m-since")), chromedp.Evaluate[chromedp.Void](
		`(() => { const s = document.getElementById('m-since'); s.dataset.old = 'yes'; s.value = '6h'; s.dispatchEvent(new Event('change')); })()`)); err != nil {
		t.Fatal(err)
	}
	// (The old field is marked: the page made anew has a new one.)
	wait("the 6-hour range", `location.hash.includes('since=6h') && document.activeElement.id === 'm-since' && !document.activeElement.dataset.old &&
		document.querySelectorAll('#main svg.chart polyline').length === 5`)
	if q := lastQuery("/v1/models/m/metrics"); q.Get("since") != "6h" {
		t.Errorf("metrics asked with %v, want since=6h", q)
	}

	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/console/#/devices/gw-1")); err != nil {
		t.Fatal(err)
	}
	wait("the device's charts", `document.querySelectorAll('#main figure svg.chart').length === 2 && document.querySelector('[aria-label="Audit trail"]') !== null`)
	if n := count("health lines", "#main figure svg.chart polyline"); n != 5 {
		t.Errorf("health: got %d lines, want 5", n)
	}
	if n := count("audit rows", `table[aria-label="Audit trail"] tbody tr`); n != 2 {
		t.Errorf("audit: got %d rows, want 2", n)
	}
	if s := text(); !strings.Contains(s, "broken") {
		t.Errorf("the broken chain is not shown")
	}
	if bad, err := chromedp.Run(ctx, chromedp.Evaluate[string](unlabelled)); err != nil || bad != "" {
		t.Errorf("device page: %s %v", bad, err)
	}
	shot("device-health-1280", `section[aria-labelledby="h-health"]`)
	shot("device-audit-1280", `section[aria-labelledby="h-audit"]`)
	// A device that does not exist: a page that says so.
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/console/#/devices/gw-404")); err != nil {
		t.Fatal(err)
	}
	wait("the not-found page", `document.querySelector('h1') && document.querySelector('h1').textContent === 'Not found' && document.activeElement.tagName === 'H1'`)

	if errs := logged.errors(); len(errs) > 0 {
		t.Errorf("the page logged errors:\n%s", strings.Join(errs, "\n"))
	}
}
