package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
)

// TestControllerKilledMidDrain: devices drain a telemetry backlog through
// Mosquitto while serve is SIGKILLed amid it and started again on the
// same data dir. The controller acknowledges a message only once stored,
// so what it had received and not stored comes again from its persistent
// session: every record the broker acknowledged to a device is in the
// store exactly once, buckets included.
func TestControllerKilledMidDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("subprocesses and 200 MQTT clients")
	}
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	url := testbroker.StartMosquitto(t, "").URL()
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	if _, err := keyring.Init(keys, keyring.Options{}); err != nil {
		t.Fatal(err)
	}
	dataDir, adminAddr := filepath.Join(dir, "data"), testbroker.FreeAddr(t)
	start := func() (*exec.Cmd, chan error, *lockedBuffer) {
		logs := &lockedBuffer{}
		cmd := exec.Command(bin, "serve", "--keys", keys, "--data-dir", dataDir, "--broker", url, "--admin", adminAddr, "--fleet", "acme")
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
			exited <- nil
			if t.Failed() {
				t.Logf("serve output:\n%s", logs.String())
			}
		})
		waitHTTP(t, "http://"+adminAddr+"/v1/health")
		return cmd, exited, logs
	}
	stored := func() (uint64, map[string]uint64) {
		resp, err := http.Get("http://" + adminAddr + "/v1/devices")
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		var ds []registry.Device
		if json.NewDecoder(resp.Body).Decode(&ds) != nil {
			return 0, nil
		}
		var n uint64
		per := map[string]uint64{}
		for _, d := range ds {
			n += d.Telemetry.Records
			per[d.ID] = d.Telemetry.Records
		}
		return n, per
	}

	first, exited, _ := start()
	const devices, batches, records = 200, 5, 10
	t0 := time.Now().Add(-48 * time.Hour).Truncate(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	acked := make([]atomic.Int64, devices)
	errs := make(chan error, devices)
	var wg sync.WaitGroup
	for d := range devices {
		wg.Go(func() {
			id := fmt.Sprintf("gw-%03d", d)
			topics, _ := protocol.DeviceTopics("acme", id)
			cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetAutoReconnect(false))
			if tok := cl.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				errs <- fmt.Errorf("%s: connect: %v", id, tok.Error())
				return
			}
			defer cl.Disconnect(100)
			for b := range batches {
				p := protocol.AppendBatchHeader(nil, protocol.BatchHeader{Epoch: 1, Count: records})
				for i := range records {
					n := b*records + i
					at := t0.Add(time.Duration(n) * time.Minute)
					body, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindAggregate, Time: at,
						Model: protocol.ModelRef{Name: "m", Version: "1"}, Aggregate: &protocol.Aggregate{Start: at, End: at.Add(time.Minute), Requests: 3}})
					if err != nil {
						errs <- err
						return
					}
					p = protocol.AppendBatchEntry(p, uint64(n+1), body)
				}
				tok := cl.Publish(topics.Events, 1, false, p)
				if !tok.WaitTimeout(60*time.Second) || tok.Error() != nil {
					errs <- fmt.Errorf("%s: batch %d not acknowledged: %v", id, b, tok.Error())
					return
				}
				acked[d].Add(records)
				if ctx.Err() != nil {
					return
				}
			}
		})
	}
	// Kill serve once it stored some of the backlog, well before all.
	total := uint64(devices * batches * records)
	waitFor(t, 2*time.Minute, "a part of the backlog stored", func() (bool, string) {
		n, _ := stored()
		return n >= total/10, fmt.Sprintf("%d of %d stored", n, total)
	})
	before, _ := stored()
	if err := first.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited
	exited <- nil
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	start()
	var per map[string]uint64
	waitFor(t, 2*time.Minute, "every acknowledged record stored", func() (bool, string) {
		var n uint64
		n, per = stored()
		return n >= total, fmt.Sprintf("%d of %d stored", n, total)
	})
	for d := range devices {
		id := fmt.Sprintf("gw-%03d", d)
		if got, want := per[id], uint64(acked[d].Load()); got != want {
			t.Errorf("%s: %d records stored, %d acknowledged", id, got, want)
		}
	}
	t.Logf("serve killed with %d of %d records stored; after the restart %d stored", before, total, total)
	// Bucket totals: every aggregate once.
	reg, err := registry.Open(dataDir, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	tot, err := reg.Totals("m", "1")
	if err != nil {
		t.Fatal(err)
	}
	if tot.Requests != 3*total {
		t.Errorf("totals: %d requests, want %d", tot.Requests, 3*total)
	}
}
