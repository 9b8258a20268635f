package controller_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/registry/metricstest"
)

// seedModelTraffic writes minutes of traffic for model "face" from two devices
// and two versions into the controller's embedded store, ending at the
// minute before end; it returns the sums per version.
func seedModelTraffic(t *testing.T, store string, end time.Time, minutes int) map[string][2]uint64 {
	t.Helper()
	var rows metricstest.Rows
	sums := map[string][2]uint64{}
	start := end.Truncate(time.Minute).Add(-time.Duration(minutes) * time.Minute)
	for m := range minutes {
		for _, dev := range []string{"gw-1", "gw-2"} {
			for _, v := range []string{"1", "2"} {
				req, errs := uint64(100+m), uint64(m%5)
				if v == "2" {
					errs *= 3
				}
				rows.Add(metricstest.Aggregate{Model: "face", Version: v, Device: dev, Start: start.Add(time.Duration(m) * time.Minute),
					Requests: req, Errors: errs, ErrorsByCode: map[string]uint64{"internal": errs},
					Latency: registry.LatencyHistogram{BoundsMicros: []uint64{1000, 4000, 16000}, Counts: []uint64{req / 2, req - req/2, 0, 0},
						SumMicros: req * 1500}})
				s := sums[v]
				s[0] += req
				s[1] += errs
				sums[v] = s
			}
		}
	}
	if err := rows.Write(store); err != nil {
		t.Fatal(err)
	}
	return sums
}

// TestModelMetricsAPI reads seeded traffic through GET
// /v1/models/{name}/metrics and GET /metrics over real HTTP, with the
// viewer role and without a token.
func TestModelMetricsAPI(t *testing.T) {
	dir := t.TempDir()
	f := startFleet(t, controller.Options{DataDir: dir})
	sums := seedModelTraffic(t, filepath.Join(dir, registry.StoreFile), time.Now(), 30)
	c := authClient{t: t, base: "http://" + f.c.AdminAddr()}
	root := c.mint("", "admin", "root")
	viewer := c.mint(root.Token, "viewer", "grafana")

	var m registry.ModelMetrics
	c.call(viewer.Token, "GET", "/v1/models/face/metrics?since=1h", "", nil, 200, &m)
	wantReq, wantErr := sums["1"][0]+sums["2"][0], sums["1"][1]+sums["2"][1]
	if m.Totals.Requests != wantReq || m.Totals.Errors != wantErr || m.Totals.ErrorsByCode["internal"] != wantErr {
		t.Errorf("fleet: got %d requests %d errors %v, want %d %d", m.Totals.Requests, m.Totals.Errors, m.Totals.ErrorsByCode, wantReq, wantErr)
	}
	if m.StepSeconds != 60 || len(m.Series) < 60 || len(m.Series) > 61 || strings.Join(m.Versions, ",") != "1,2" {
		t.Errorf("got step %d, %d points, versions %v; want 60, 60 or 61, [1 2]", m.StepSeconds, len(m.Series), m.Versions)
	}
	if m.Totals.P50MS < 1 || m.Totals.P50MS > 1.05 {
		t.Errorf("got p50 %v ms, want just over 1 (a little under half the requests in (0, 1 ms], the rest in (1, 4 ms])", m.Totals.P50MS)
	}

	var dev registry.ModelMetrics
	c.call(viewer.Token, "GET", "/v1/models/face/metrics?since=2h&device=gw-1&version=2&step=10m", "", nil, 200, &dev)
	if dev.Totals.Requests != sums["2"][0]/2 || dev.Totals.Errors != sums["2"][1]/2 || dev.StepSeconds != 600 || dev.Device != "gw-1" {
		t.Errorf("gw-1 v2: got %d requests %d errors step %d device %q, want %d %d 600 gw-1", dev.Totals.Requests, dev.Totals.Errors,
			dev.StepSeconds, dev.Device, sums["2"][0]/2, sums["2"][1]/2)
	}
	until := time.Now().Add(-24 * time.Hour).UTC().Format(time.RFC3339)
	var old registry.ModelMetrics
	c.call(viewer.Token, "GET", "/v1/models/face/metrics?since=48h&until="+url.QueryEscape(until), "", nil, 200, &old)
	if old.Totals.Requests != 0 || old.StepSeconds != 3600 || len(old.Versions) != 0 {
		t.Errorf("a day ago: got %d requests, step %d, versions %v; want 0, 3600, none", old.Totals.Requests, old.StepSeconds, old.Versions)
	}

	c.call(viewer.Token, "GET", "/v1/models/nope/metrics", "", nil, 404, nil)
	c.call(viewer.Token, "GET", "/v1/models/face/metrics?step=90s", "", nil, 400, nil)
	c.call(viewer.Token, "GET", "/v1/models/face/metrics?since=yesterday", "", nil, 400, nil)
	c.call(viewer.Token, "GET", "/v1/models/face/metrics?since=1h&until=2h", "", nil, 400, nil)
	c.call(viewer.Token, "GET", "/v1/models/face/metrics?since=10000h&step=1m", "", nil, 400, nil)
	c.call("", "GET", "/v1/models/face/metrics", "", nil, 401, nil)

	// /metrics: the totals as counters, the histogram cumulative in
	// seconds, devices and rollouts; viewer may read it, nobody without a
	// token.
	c.call("", "GET", "/metrics", "", nil, 401, nil)
	text := scrapeMetrics(t, c.base, viewer.Token)
	for _, want := range []string{
		`outpost_build_info{commit="`,
		fmt.Sprintf(`outpost_fleet_model_requests_total{model="face",version="1"} %d`, sums["1"][0]),
		fmt.Sprintf(`outpost_fleet_model_errors_total{model="face",version="2"} %d`, sums["2"][1]),
		fmt.Sprintf(`outpost_fleet_model_errors_by_code_total{code="internal",model="face",version="2"} %d`, sums["2"][1]),
		fmt.Sprintf(`outpost_fleet_model_latency_seconds_bucket{model="face",version="1",le="0.004"} %d`, sums["1"][0]),
		fmt.Sprintf(`outpost_fleet_model_latency_seconds_bucket{model="face",version="1",le="+Inf"} %d`, sums["1"][0]),
		fmt.Sprintf(`outpost_fleet_model_latency_seconds_count{model="face",version="1"} %d`, sums["1"][0]),
		`outpost_fleet_devices 0`,
		`outpost_fleet_devices_online 0`,
		`outpost_fleet_rollouts{state="running"} 0`,
		`outpost_fleet_controller_leader 1`,
		`outpost_fleet_controller_messages_in_total `,
		`go_goroutines `,
	} {
		if !strings.Contains(text, want+"") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Half of every minute's requests are at most 1 ms.
	re := regexp.MustCompile(`outpost_fleet_model_latency_seconds_bucket\{model="face",version="1",le="0.001"\} (\d+)`)
	if mm := re.FindStringSubmatch(text); mm == nil {
		t.Error("no 1 ms bucket")
	} else if n, _ := strconv.ParseUint(mm[1], 10, 64); n >= sums["1"][0] || n < sums["1"][0]/2-30 {
		t.Errorf("1 ms bucket: got %d, want about half of %d", n, sums["1"][0])
	}
	if strings.Contains(text, "outpost_fleet_drift_psi{") {
		t.Error("drift series before drift detection exists")
	}
}

// scrapeMetrics reads /metrics with a token ("": none, bootstrap from loopback).
func scrapeMetrics(t *testing.T, base, token string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/metrics", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: got %d %s: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return string(b)
}

// dashboardExprs reads docs/grafana-dashboard.json (failing on invalid
// JSON, duplicate panel ids or a panel without a query) and returns its
// PromQL expressions with Grafana's variables replaced: $__rate_interval
// by 1m, $model by .* (every model).
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "grafana-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			ID      int    `json:"id"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana-dashboard.json: %v", err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("grafana-dashboard.json: no title, uid or panels")
	}
	ids := map[int]bool{}
	var exprs []string
	for _, p := range d.Panels {
		if ids[p.ID] || len(p.Targets) == 0 {
			t.Errorf("panel %d %q: duplicate id or no targets", p.ID, p.Title)
		}
		ids[p.ID] = true
		for _, tg := range p.Targets {
			if tg.Expr == "" {
				t.Errorf("panel %q: empty expr", p.Title)
			}
			exprs = append(exprs, strings.NewReplacer("$__rate_interval", "1m", "$model", ".*").Replace(tg.Expr))
		}
	}
	return exprs
}

// TestGrafanaDashboard: the dashboard reads only series the controller
// serves (the drift gauge excepted: it comes with drift detection).
func TestGrafanaDashboard(t *testing.T) {
	dir := t.TempDir()
	f := startFleet(t, controller.Options{DataDir: dir})
	seedModelTraffic(t, filepath.Join(dir, registry.StoreFile), time.Now(), 2)
	text := scrapeMetrics(t, "http://"+f.c.AdminAddr(), "")
	names := regexp.MustCompile(`outpost_[a-z_]+`)
	for _, e := range dashboardExprs(t) {
		for _, n := range names.FindAllString(e, -1) {
			if n == "outpost_fleet_drift_psi" {
				continue
			}
			if !strings.Contains(text, "\n"+n+"{") && !strings.Contains(text, "\n"+n+" ") {
				t.Errorf("dashboard query %q reads %s, which /metrics does not serve", e, n)
			}
		}
	}
}
