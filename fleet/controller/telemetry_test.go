package controller_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
)

// publishBatch sends recs as one telemetry batch of device from sequence
// number first, and waits for the broker's PUBACK.
func publishBatch(t *testing.T, cl mqtt.Client, device string, first uint64, recs ...protocol.Record) {
	t.Helper()
	b := protocol.AppendBatchHeader(nil, protocol.BatchHeader{Epoch: 1, Count: len(recs)})
	for i := range recs {
		body, err := protocol.AppendRecord(nil, &recs[i])
		if err != nil {
			t.Fatal(err)
		}
		b = protocol.AppendBatchEntry(b, first+uint64(i), body)
	}
	topics, err := protocol.DeviceTopics(fleetName, device)
	if err != nil {
		t.Fatal(err)
	}
	tok := cl.Publish(topics.Events, 1, false, b)
	if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
}

// TestDeviceTelemetryAPI: health and audit records a device sends come out
// of GET /v1/devices/{id}/health and /audit, a break of the device's audit
// chain flagged there and reported to OnAuditChainBroken.
func TestDeviceTelemetryAPI(t *testing.T) {
	var mu sync.Mutex
	var breaks []registry.ChainBreak
	f := startFleet(t, controller.Options{OnAuditChainBroken: func(b registry.ChainBreak) {
		mu.Lock()
		defer mu.Unlock()
		breaks = append(breaks, b)
	}})
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(f.c.BrokerURL()).SetClientID("gw-1").SetCleanSession(true))
	if tok := cl.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer cl.Disconnect(100)

	t0 := time.Now().Add(-10 * time.Minute).Truncate(time.Second).UTC()
	health := func(i int) protocol.Record {
		return protocol.Record{Kind: protocol.KindHealth, Time: t0.Add(time.Duration(i) * time.Minute), Health: &protocol.Health{
			CPUPercent: float64(10 + i), Load1: 0.5, MemUsedBytes: 100, MemTotalBytes: 1000, TemperatureC: 40}}
	}
	audit := func(seq uint64, prev, hash string) protocol.Record {
		return protocol.Record{Kind: protocol.KindAudit, Time: t0, Model: protocol.ModelRef{Name: "face", Version: "2"},
			Audit: &protocol.Audit{Actor: "updater", Action: fmt.Sprint("step.", seq), Outcome: "ok", Seq: seq, Prev: prev, Hash: hash}}
	}
	publishBatch(t, cl, "gw-1", 1, health(0), health(1), audit(1, "", "h1"), audit(2, "h1", "h2"))
	// The same batch again (a redelivery), then one whose record 3 does
	// not name record 2's hash.
	publishBatch(t, cl, "gw-1", 1, health(0), health(1), audit(1, "", "h1"), audit(2, "h1", "h2"))
	publishBatch(t, cl, "gw-1", 5, health(2), audit(3, "forged", "h3"))

	base := "http://" + f.c.AdminAddr()
	get := func(path string, want int, out any) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("GET %s: got %d, want %d: %s", path, resp.StatusCode, want, b)
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("GET %s: %v: %s", path, err, b)
			}
		}
	}
	eventually(t, 30*time.Second, "telemetry stored", func() (bool, string) {
		d, err := f.c.Registry().Device("gw-1")
		if err != nil {
			return false, err.Error()
		}
		return d.Telemetry.Records == 6, fmt.Sprintf("%+v", d.Telemetry)
	})
	var h admin.DeviceHealth
	get("/v1/devices/gw-1/health?since=1h", 200, &h)
	if len(h.Points) != 3 || h.Device != "gw-1" || h.Points[2].CPUPercent != 12 || !h.Points[0].Time.Equal(t0) {
		t.Fatalf("health: got %+v, want 3 points from %v", h, t0)
	}
	get("/v1/devices/gw-1/health?since="+t0.Add(90*time.Second).Format(time.RFC3339), 200, &h)
	if len(h.Points) != 1 {
		t.Fatalf("health since t0+90s: got %d points, want 1", len(h.Points))
	}
	var a admin.DeviceAudit
	get("/v1/devices/gw-1/audit", 200, &a)
	var got []string
	for _, r := range a.Records {
		got = append(got, fmt.Sprintf("%d:%s:%s", r.Seq, r.Action, r.Chain))
	}
	if fmt.Sprint(got) != "[3:step.3:broken 2:step.2:ok 1:step.1:ok]" || a.Breaks != 1 {
		t.Fatalf("audit: got %v and %d breaks, want 3 records, the newest broken, 1 break", got, a.Breaks)
	}
	get("/v1/devices/gw-1/audit?limit=1&before=3", 200, &a)
	if len(a.Records) != 1 || a.Records[0].Seq != 2 {
		t.Fatalf("audit page: got %+v, want record 2", a.Records)
	}
	mu.Lock()
	if len(breaks) != 1 || breaks[0].Device != "gw-1" || breaks[0].Seq != 3 {
		t.Errorf("breaks reported: got %+v, want record 3 of gw-1", breaks)
	}
	mu.Unlock()
	get("/v1/devices/nobody/health", 404, nil)
	get("/v1/devices/nobody/audit", 404, nil)
	get("/v1/devices/gw-1/health?since=yesterday", 400, nil)
	get("/v1/devices/gw-1/audit?limit=0", 400, nil)
}
