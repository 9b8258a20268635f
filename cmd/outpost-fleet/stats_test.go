package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/registry/metricstest"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/internal/testpg"
)

// TestModelsStats runs models stats of the real binary against a real
// serve whose store holds seeded traffic: the table, -o json, a device and
// version, and the usage errors.
func TestModelsStats(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, bin, serveOptions{})
	var rows metricstest.Rows
	start := time.Now().Truncate(time.Minute).Add(-20 * time.Minute)
	var reqs, errs, gw2 uint64
	for m := range 20 {
		for _, dev := range []string{"gw-1", "gw-2"} {
			a := metricstest.Aggregate{Model: "face", Version: "3", Device: dev, Start: start.Add(time.Duration(m) * time.Minute),
				Requests: 50, Errors: uint64(m % 2), ErrorsByCode: map[string]uint64{"overload": uint64(m % 2)},
				Latency: registry.LatencyHistogram{BoundsMicros: []uint64{2000, 8000}, Counts: []uint64{0, 50, 0}}}
			rows.Add(a)
			reqs += a.Requests
			errs += a.Errors
			if dev == "gw-2" {
				gw2 += a.Requests
			}
		}
	}
	if err := rows.Write(filepath.Join(srv.dir, "data", registry.StoreFile)); err != nil {
		t.Fatal(err)
	}

	var m registry.ModelMetrics
	out, _ := cliEnv(t, bin, nil, 0, "models", "stats", "face", "--admin", srv.admin, "-o", "json")
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("-o json: %v: %s", err, out)
	}
	if m.Totals.Requests != reqs || m.Totals.Errors != errs || m.Totals.ErrorsByCode["overload"] != errs || m.StepSeconds != 60 {
		t.Errorf("-o json: got %+v, want %d requests, %d errors, step 60", m.Totals, reqs, errs)
	}
	if m.Totals.P50MS != 5 {
		t.Errorf("-o json: got p50 %v ms, want 5 (every request in (2, 8 ms])", m.Totals.P50MS)
	}

	table := cli(t, bin, 0, "models", "stats", "face", "--admin", srv.admin, "--since", "30m", "--step", "10m")
	for _, want := range []string{"face, fleet, versions 3", "REQUESTS  ERRORS  ERROR %", "errors by code: overload 20", "START"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	// Six lines of heading and totals, then the steps the 30 minutes
	// touch: 3, or 4 when now is not on a 10 minute boundary.
	if n := strings.Count(table, "\n"); n < 9 || n > 10 {
		t.Errorf("table of 30 minutes in 10 minute steps: got %d lines, want 9 or 10:\n%s", n, table)
	}

	out, _ = cliEnv(t, bin, nil, 0, "models", "stats", "face", "--admin", srv.admin, "--device", "gw-2", "--version", "3", "-o", "json")
	m = registry.ModelMetrics{}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatal(err)
	}
	if m.Totals.Requests != gw2 || m.Device != "gw-2" || m.Version != "3" {
		t.Errorf("gw-2: got %d requests, device %q version %q; want %d, gw-2, 3", m.Totals.Requests, m.Device, m.Version, gw2)
	}

	cli(t, bin, 2, "models", "stats", "--admin", srv.admin)
	cli(t, bin, 2, "models", "stats", "face", "--admin", srv.admin, "--step", "30s")
	if out := cli(t, bin, 1, "models", "stats", "nope", "--admin", srv.admin); !strings.Contains(out, "404") {
		t.Errorf("unknown model: %q", out)
	}
}

// TestMetricsOnReplicas: two replicas of the real binary on one
// PostgreSQL serve the same fleet series on /metrics (the store's totals:
// aggregate them across instances with max, docs/MONITORING.md), and
// exactly one says it leads; models stats answers the same on both.
func TestMetricsOnReplicas(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	store := testpg.Database(t)
	mq := testbroker.StartMosquitto(t, "")
	k, err := keyring.Init(filepath.Join(t.TempDir(), "keys"), keyring.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ro := replicaOptions{Fleet: "rep", Store: store, Brokers: []string{mq.URL()}, Keys: k}
	reps := []*replica{startReplica(t, bin, "a", ro), startReplica(t, bin, "b", ro)}
	var rows metricstest.Rows
	for m := range 10 {
		rows.Add(metricstest.Aggregate{Model: "face", Version: "1", Device: "gw-1", Start: time.Now().Add(-time.Duration(m) * time.Minute),
			Requests: 40, Errors: 2, ErrorsByCode: map[string]uint64{"internal": 2},
			Latency: registry.LatencyHistogram{BoundsMicros: []uint64{1000}, Counts: []uint64{40, 0}}})
	}
	if err := rows.Write(store); err != nil {
		t.Fatal(err)
	}
	fleetLines := func(r *replica) (lines []string, leader bool) {
		resp, err := http.Get(r.admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("replica %s /metrics: %d %s", r.id, resp.StatusCode, b)
		}
		for _, l := range strings.Split(string(b), "\n") {
			switch {
			case l == "outpost_fleet_controller_leader 1":
				leader = true
			case strings.HasPrefix(l, "outpost_fleet_model_") || strings.HasPrefix(l, "outpost_fleet_devices") ||
				strings.HasPrefix(l, "outpost_fleet_rollouts"):
				lines = append(lines, l)
			}
		}
		return lines, leader
	}
	waitFor(t, 30*time.Second, "one leader", func() (bool, string) {
		_, la := fleetLines(reps[0])
		_, lb := fleetLines(reps[1])
		return la != lb, fmt.Sprintf("a leads %v, b leads %v", la, lb)
	})
	a, _ := fleetLines(reps[0])
	b, _ := fleetLines(reps[1])
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Errorf("the replicas' fleet series differ:\na:\n%s\nb:\n%s", strings.Join(a, "\n"), strings.Join(b, "\n"))
	}
	if !slices.Contains(a, `outpost_fleet_model_requests_total{model="face",version="1"} 400`) ||
		!slices.Contains(a, `outpost_fleet_model_errors_total{model="face",version="1"} 20`) {
		t.Errorf("replica a's model series:\n%s", strings.Join(a, "\n"))
	}
	for _, r := range reps {
		out, _ := cliEnv(t, bin, nil, 0, "models", "stats", "face", "--admin", r.admin, "-o", "json")
		var m registry.ModelMetrics
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatal(err)
		}
		if m.Totals.Requests != 400 || m.Totals.Errors != 20 {
			t.Errorf("replica %s: models stats says %d requests %d errors, want 400 and 20", r.id, m.Totals.Requests, m.Totals.Errors)
		}
	}
}
