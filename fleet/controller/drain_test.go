package controller_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
)

// TestBacklogDrain: 1,000 devices come back at once with a backlog of
// telemetry and publish it as fast as the broker takes it, through the
// embedded broker and through Mosquitto (the shipped configuration). A
// device, like the agent, forgets a batch only once the broker
// acknowledged it (PUBACK) and publishes it again otherwise, after
// reconnecting. Every acknowledged record must end up in the store exactly
// once: each device's count of new records equals what it had
// acknowledged, and the fleet's time buckets add up to every aggregate
// once. The controller falls behind (its store is far slower than the
// devices' publishing); the brokers must slow delivery, not drop.
//
// OUTPOST_DRAIN_BATCHES (default 3) batches of 10 records per device;
// make test-drain runs a backlog of 200 records a device. Under the race
// detector the default is one batch of 2 records per device.
func TestBacklogDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("1,000 MQTT clients")
	}
	batches, records := 3, 10
	if raceEnabled {
		batches, records = 1, 2
	}
	if v := os.Getenv("OUTPOST_DRAIN_BATCHES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			t.Fatalf("OUTPOST_DRAIN_BATCHES=%q: want a positive count", v)
		}
		batches = n
	}
	t.Run("embedded", func(t *testing.T) {
		f := startFleet(t, controller.Options{})
		drain(t, f, f.c.BrokerURL(), 1000, batches, records)
	})
	t.Run("mosquitto", func(t *testing.T) {
		url := testbroker.StartMosquitto(t, "").URL()
		f := startFleet(t, controller.Options{Broker: url})
		drain(t, f, url, 1000, batches, records)
	})
}

// drain has devices publish batches of drainRecords records each; every
// record an aggregate of 3 requests over its own minute, so the fleet's
// minute buckets count each record once.
func drain(t *testing.T, f *fleet, url string, devices, batches, drainRecords int) {
	t0 := time.Now().Add(-48 * time.Hour).Truncate(time.Hour)
	model := protocol.ModelRef{Name: "drain", Version: "1"}
	batch := func(device string, b int) []byte {
		p := protocol.AppendBatchHeader(nil, protocol.BatchHeader{Epoch: 1, Count: drainRecords})
		for i := range drainRecords {
			n := b*drainRecords + i
			start := t0.Add(time.Duration(n) * time.Minute)
			body, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindAggregate, Time: start.Add(time.Minute), Model: model,
				Aggregate: &protocol.Aggregate{Start: start, End: start.Add(time.Minute), Requests: 3,
					Latency: protocol.Histogram{BoundsMicros: []uint64{1000}, Counts: []uint64{2, 1}, SumMicros: 3000}}})
			if err != nil {
				panic(err)
			}
			p = protocol.AppendBatchEntry(p, uint64(n+1), body)
		}
		return p
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var (
		acked      = make([]atomic.Int64, devices) // records each device had acknowledged
		republish  atomic.Int64
		reconnects atomic.Int64
		wg         sync.WaitGroup
		errs       = make(chan error, devices)
	)
	start := time.Now()
	for d := range devices {
		wg.Go(func() {
			id := fmt.Sprintf("drain-%04d", d)
			topics, err := protocol.DeviceTopics(fleetName, id)
			if err != nil {
				errs <- err
				return
			}
			var cl mqtt.Client
			connect := func() error {
				for ctx.Err() == nil {
					cl = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(true).
						SetAutoReconnect(false).SetConnectTimeout(30 * time.Second).SetWriteTimeout(30 * time.Second))
					tok := cl.Connect()
					if tok.WaitTimeout(40*time.Second) && tok.Error() == nil {
						return nil
					}
					cl.Disconnect(0)
					reconnects.Add(1)
					select {
					case <-time.After(200 * time.Millisecond):
					case <-ctx.Done():
					}
				}
				return ctx.Err()
			}
			if err := connect(); err != nil {
				errs <- fmt.Errorf("%s: connect: %w", id, err)
				return
			}
			defer func() { cl.Disconnect(100) }()
			for b := 0; b < batches; {
				tok := cl.Publish(topics.Events, 1, false, batch(id, b))
				if tok.WaitTimeout(90*time.Second) && tok.Error() == nil {
					acked[d].Add(int64(drainRecords))
					b++
					continue
				}
				// Not acknowledged: the device keeps the batch and sends it
				// again on a new connection.
				republish.Add(1)
				cl.Disconnect(0)
				if err := connect(); err != nil {
					errs <- fmt.Errorf("%s: batch %d: %w", id, b, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	published := time.Since(start)
	var want int64
	for d := range acked {
		want += acked[d].Load()
	}
	if want != int64(devices*batches*drainRecords) {
		t.Fatalf("devices had %d records acknowledged, want %d", want, devices*batches*drainRecords)
	}
	reg := f.c.Registry()
	var stored, dups uint64
	// Polled twice a second: reading 1,000 devices is not free, and the
	// controller needs the CPU.
	waitFor(t, 5*time.Minute, 500*time.Millisecond, "every acknowledged record stored", func() (bool, string) {
		ds, err := reg.Devices()
		if err != nil {
			return false, err.Error()
		}
		stored, dups = 0, 0
		short := 0
		for _, d := range ds {
			stored += d.Telemetry.Records
			dups += d.Telemetry.Duplicates
		}
		if len(ds) < devices {
			short = devices - len(ds)
		}
		return stored >= uint64(want), fmt.Sprintf("%d of %d records stored; %d devices not seen yet", stored, want, short)
	})
	drained := time.Since(start)
	ds, err := reg.Devices()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		var i int
		if _, err := fmt.Sscanf(d.ID, "drain-%04d", &i); err != nil || i >= devices {
			continue
		}
		if got := int64(d.Telemetry.Records); got != acked[i].Load() {
			t.Errorf("%s: %d records stored, %d acknowledged", d.ID, got, acked[i].Load())
		}
	}
	bs, err := reg.Buckets("drain", "", registry.MinuteBucket)
	if err != nil {
		t.Fatal(err)
	}
	var requests, records uint64
	for _, b := range bs {
		requests += b.Requests
		records += b.Records
	}
	if records != uint64(want) || requests != 3*uint64(want) {
		t.Errorf("fleet minute buckets: %d aggregates and %d requests, want %d and %d", records, requests, want, 3*want)
	}
	tot, err := reg.Totals("drain", "1")
	if err != nil {
		t.Fatal(err)
	}
	if tot.Requests != 3*uint64(want) {
		t.Errorf("totals: %d requests, want %d", tot.Requests, 3*want)
	}
	t.Logf("%d devices, %d records: published in %v, stored in %v (%.0f records/s); %d duplicates dropped, %d batches sent again, %d reconnects",
		devices, want, published.Round(time.Millisecond), drained.Round(time.Millisecond), float64(want)/drained.Seconds(), dups,
		republish.Load(), reconnects.Load())
}

// waitFor is eventually with its own polling interval.
func waitFor(t testing.TB, wait, every time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(wait)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(every)
	}
	t.Fatalf("timed out after %s waiting for %s: %s", wait, what, last)
}
