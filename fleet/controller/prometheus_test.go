package controller_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/registry/metricstest"
	"github.com/outpost-edge/outpost/internal/testbroker"
)

// prometheusPath finds the Prometheus server (Debian package prometheus,
// which make setup installs). Without it the test fails under CI=true and
// is skipped elsewhere, as the Mosquitto and PostgreSQL tests are.
func prometheusPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("prometheus not installed; make setup installs it")
	}
	t.Skip("prometheus not installed; run make setup (or apt-get install prometheus) to run this test")
	return ""
}

// TestPrometheusScrapesController runs a real Prometheus that scrapes a
// real controller's /metrics on loopback every second with a viewer token,
// and asks it over its HTTP API for the fleet's error ratio: over all time
// from the counters, then over the last minutes after more traffic was
// written, each compared with the rows written.
func TestPrometheusScrapesController(t *testing.T) {
	bin := prometheusPath(t)
	dir := t.TempDir()
	f := startFleet(t, controller.Options{DataDir: dir})
	store := filepath.Join(dir, registry.StoreFile)
	sums := seedModelTraffic(t, store, time.Now(), 30)
	req0, err0 := sums["1"][0]+sums["2"][0], sums["1"][1]+sums["2"][1]
	c := authClient{t: t, base: "http://" + f.c.AdminAddr()}
	viewer := c.mint(c.mint("", "admin", "root").Token, "viewer", "prometheus")

	work := t.TempDir()
	tokenFile := filepath.Join(work, "token")
	if err := os.WriteFile(tokenFile, []byte(viewer.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: outpost-fleet
    authorization:
      type: Bearer
      credentials_file: %s
    static_configs:
      - targets: ['%s']
`, tokenFile, f.c.AdminAddr())
	if err := os.WriteFile(filepath.Join(work, "prometheus.yml"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testbroker.FreeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "--config.file="+filepath.Join(work, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(work, "data"), "--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", logs.String())
		}
	})

	prom := "http://" + addr
	// query answers a PromQL instant query with one value, or ok false
	// while it has none.
	query := func(q string) (float64, bool) {
		t.Helper()
		resp, err := http.Get(prom + "/api/v1/query?query=" + url.QueryEscape(q))
		if err != nil {
			return 0, false // not listening yet
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusServiceUnavailable {
			return 0, false // starting: the TSDB is not ready yet
		}
		var r struct {
			Status string `json:"status"`
			Data   struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		if err := json.Unmarshal(b, &r); err != nil || r.Status != "success" {
			t.Fatalf("query %s: %d %s", q, resp.StatusCode, b)
		}
		if len(r.Data.Result) != 1 {
			return 0, false
		}
		s, _ := r.Data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return v, err == nil
	}
	// waitFor polls until q answers want (bounded: a minute).
	waitFor := func(q string, want float64) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		var got float64
		var ok bool
		for time.Now().Before(deadline) {
			if got, ok = query(q); ok && got == want {
				return
			}
			if cmd.ProcessState != nil {
				break
			}
			time.Sleep(200 * time.Millisecond) // polling an outside server: nothing to wait on
		}
		t.Fatalf("%s: got %v (answered %v), want %v within a minute", q, got, ok, want)
	}

	waitFor(`sum(outpost_fleet_model_requests_total)`, float64(req0))
	ratio, ok := query(`sum(outpost_fleet_model_errors_total) / sum(outpost_fleet_model_requests_total)`)
	if want := float64(err0) / float64(req0); !ok || math.Abs(ratio-want) > 1e-12 {
		t.Errorf("error ratio over all time: got %v (answered %v), want %v", ratio, ok, want)
	}
	if v, ok := query(`outpost_fleet_devices`); !ok || v != 0 {
		t.Errorf("outpost_fleet_devices: got %v (answered %v), want 0", v, ok)
	}

	// More traffic, with another error ratio: the windowed ratio is that
	// of the new traffic alone (both counters change in the same scrape,
	// so rate's extrapolation cancels out).
	var more metricstest.Rows
	// (in an hour of its own: metricstest only inserts buckets, and the
	// fleet's hour bucket of the first traffic is taken)
	later := time.Now().Truncate(time.Hour).Add(2 * time.Hour)
	var req1, err1 uint64
	for i, v := range []string{"1", "2"} {
		a := metricstest.Aggregate{Model: "face", Version: v, Device: "gw-3", Start: later, Requests: 1000, Errors: uint64(70 + 30*i),
			Latency: registry.LatencyHistogram{BoundsMicros: []uint64{1000}, Counts: []uint64{1000, 0}}}
		more.Add(a)
		req1 += a.Requests
		err1 += a.Errors
	}
	if err := more.Write(store); err != nil {
		t.Fatal(err)
	}
	waitFor(`sum(outpost_fleet_model_requests_total)`, float64(req0+req1))
	q := `sum(increase(outpost_fleet_model_errors_total[5m])) / sum(increase(outpost_fleet_model_requests_total[5m]))`
	ratio, ok = query(q)
	if want := float64(err1) / float64(req1); !ok || math.Abs(ratio-want) > 1e-9 {
		t.Errorf("%s: got %v (answered %v), want %v", q, ratio, ok, want)
	}
	// The latency histogram works with histogram_quantile: every new
	// request took at most 1 ms.
	if p, ok := query(`histogram_quantile(0.5, sum by (le) (increase(outpost_fleet_model_latency_seconds_bucket[5m])))`); !ok || p <= 0 || p > 0.001 {
		t.Errorf("p50 of the new traffic: got %v s (answered %v), want in (0, 0.001]", p, ok)
	}

	// Every query of the Grafana dashboard parses and runs.
	for _, e := range dashboardExprs(t) {
		query(e)
	}
	if v, ok := query(`sum(rate(outpost_fleet_model_requests_total[1m]))`); !ok || v <= 0 {
		t.Errorf("requests per second: got %v (answered %v), want more than 0", v, ok)
	}
}
