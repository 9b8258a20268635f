package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/protocol"
)

// TestDevicesHealthAndAudit: the two commands show what a controller
// (in this process, its store fed by the ingest path) keeps of a device.
func TestDevicesHealthAndAudit(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if _, err := keyring.Init(keys, keyring.Options{}); err != nil {
		t.Fatal(err)
	}
	c, err := controller.New(controller.Options{Fleet: "acme", DataDir: t.TempDir(), Keys: keys, ListenMQTT: "127.0.0.1:0", Admin: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("controller: %v", err)
		}
	}()
	b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: 1}}
	now := time.Now().Add(-time.Minute)
	for i, r := range []protocol.Record{
		{Kind: protocol.KindHealth, Time: now, Health: &protocol.Health{CPUPercent: 37.5, Load1: 1.25, MemUsedBytes: 1, MemTotalBytes: 4, TemperatureC: 51}},
		{Kind: protocol.KindAudit, Time: now, Model: protocol.ModelRef{Name: "face", Version: "2"},
			Audit: &protocol.Audit{Actor: "updater", Action: "update.committed", Outcome: "ok", Seq: 1, Hash: "aa"}},
		{Kind: protocol.KindAudit, Time: now, Model: protocol.ModelRef{Name: "face", Version: "2"},
			Audit: &protocol.Audit{Actor: "updater", Action: "update.rolled_back", Outcome: "ok", Seq: 2, Prev: "bb", Hash: "cc"}},
	} {
		body, err := protocol.AppendRecord(nil, &r)
		if err != nil {
			t.Fatal(err)
		}
		b.Entries = append(b.Entries, protocol.Entry{Seq: uint64(i + 1), Body: body})
	}
	if _, err := c.Registry().RecordBatch("gw-7", b, time.Now()); err != nil {
		t.Fatal(err)
	}
	api := "http://" + c.AdminAddr()
	run := func(code int, args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if got := program.Dispatch(context.Background(), args, &stdout, &stderr); got != code {
			t.Fatalf("%v: got exit %d, want %d\n%s%s", args, got, code, stdout.String(), stderr.String())
		}
		return stdout.String() + stderr.String()
	}
	out := run(0, "devices", "health", "--admin", api, "gw-7")
	if !strings.Contains(out, "37.5") || !strings.Contains(out, "25%") || !strings.Contains(out, "51.0") {
		t.Errorf("devices health: got\n%s\nwant CPU 37.5, memory 25%%, 51.0 degrees", out)
	}
	out = run(0, "devices", "audit", "--admin", api, "gw-7")
	if !strings.Contains(out, "update.rolled_back") || !strings.Contains(out, "broken (") || !strings.Contains(out, "1 break(s)") {
		t.Errorf("devices audit: got\n%s\nwant the rollback record flagged broken and 1 break", out)
	}
	var a admin.DeviceAudit
	if err := json.Unmarshal([]byte(run(0, "devices", "audit", "--admin", api, "-o", "json", "--limit", "1", "gw-7")), &a); err != nil {
		t.Fatal(err)
	}
	if len(a.Records) != 1 || a.Records[0].Chain != "broken" || a.Breaks != 1 {
		t.Errorf("devices audit -o json: got %+v", a)
	}
	run(2, "devices", "health", "--admin", api)
	if out := run(1, "devices", "audit", "--admin", api, "nobody"); !strings.Contains(out, "not found") {
		t.Errorf("unknown device: got %q", out)
	}
}
