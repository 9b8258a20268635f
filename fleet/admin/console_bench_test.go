package admin

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
)

// BenchmarkConsoleDevices answers what the web console asks of a fleet of
// 10,000 devices, over HTTP through the auth layer (bootstrap mode, from
// loopback) on the embedded store: the first page of 50 devices, a page
// deep into the list, a search matching one device, a search matching a
// tenth of the fleet, and the overview. Each is one console request; the
// figure is ns/op. The devices are loaded with one SQL transaction into the
// store's file (10,000 UpdateDevice calls would sync 10,000 times).
func BenchmarkConsoleDevices(b *testing.B) {
	const n = 10000
	dir := b.TempDir()
	reg, err := registry.Open(dir, registry.Options{})
	if err != nil {
		b.Fatal(err)
	}
	reg.Close()
	db, err := sql.Open("sqlite", filepath.Join(dir, registry.StoreFile))
	if err != nil {
		b.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if _, err := tx.Exec(`INSERT INTO devices (id, labels, agent_version, online, models, health) VALUES (?, ?, ?, ?, ?, ?)`,
			fmt.Sprintf("gw-%05d", i), fmt.Sprintf(`{"site":"site-%d"}`, i%10), "1.4.0", i%3 != 0,
			fmt.Sprintf(`[{"name":"face","version":%d,"digest":"sha256:00"}]`, 1+i%2), `{"status":"ok","uptime_seconds":3600}`); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	db.Close()
	if reg, err = registry.Open(dir, registry.Options{}); err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	k, err := keyring.Init(filepath.Join(b.TempDir(), "keys"), keyring.Options{})
	if err != nil {
		b.Fatal(err)
	}
	eng, err := rollout.New(rollout.Options{Registry: reg, Sender: noSender{}, Fleet: "default"})
	if err != nil {
		b.Fatal(err)
	}
	s, err := New(Options{Addr: "127.0.0.1:0", Registry: reg, Engine: eng, Root: k.Root()})
	if err != nil {
		b.Fatal(err)
	}
	s.ln.Close()
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	for _, c := range []struct {
		name, path string
		want       int // devices in the answer's total
	}{
		{"first-page", "/v1/devices?limit=50", n},
		{"deep-page", "/v1/devices?limit=50&cursor=" + "Z3ctMDcwMDA", n}, // after gw-07000
		{"search-one", "/v1/devices?limit=50&q=gw-04242", 1},
		{"search-tenth", "/v1/devices?limit=50&q=site-7", n / 10},
		{"overview", "/v1/overview", n},
	} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				resp, err := http.Get(srv.URL + c.path)
				if err != nil {
					b.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					b.Fatalf("%s: %d %v: %s", c.path, resp.StatusCode, err, body)
				}
				var got struct {
					Total   int `json:"total"`
					Devices any `json:"devices"`
				}
				if err := json.Unmarshal(body, &got); err != nil {
					b.Fatal(err)
				}
				if c.name == "overview" {
					var sum registry.FleetSummary
					_ = json.Unmarshal(body, &sum)
					got.Total = sum.Devices
				}
				if got.Total != c.want {
					b.Fatalf("%s: total %d, want %d", c.path, got.Total, c.want)
				}
			}
		})
	}
}
