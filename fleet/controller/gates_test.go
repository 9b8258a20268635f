package controller_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/broker"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
)

// These tests are the evidence gates' (make test-gates runs them 50 times).

// canaryCommitted counts the wave-1 devices of a rollout that committed.
func canaryCommitted(f *fleet, id string) int {
	as, _ := f.c.Registry().Assignments(id)
	n := 0
	for _, a := range as {
		if a.Wave == 0 && a.State == protocol.UpdateCommitted {
			n++
		}
	}
	return n
}

// waitCompletedHoldingCanary waits for a 34/100 rollout to complete and
// checks, at every look, that it never stood in wave 2 without a committed
// canary device.
func waitCompletedHoldingCanary(t *testing.T, f *fleet, id string) {
	t.Helper()
	eventually(t, 120*time.Second, "rollout completed", func() (bool, string) {
		r, err := f.c.Registry().Rollout(id)
		if err != nil {
			return false, err.Error()
		}
		if r.Wave > 0 || r.State == registry.RolloutCompleted {
			as, _ := f.c.Registry().Assignments(id)
			if canaryCommitted(f, id) == 0 {
				t.Fatalf("rollout %s in wave %d with no canary device committed: %+v", r.State, r.Wave+1, as)
			}
		}
		return r.State == registry.RolloutCompleted, fmt.Sprintf("%s wave %d", r.State, r.Wave+1)
	})
	checkEvidence(t, f, id)
}

// startCanary starts a 34%/100% rollout over 3 devices with a paced
// transfer and waits until the canary's download is under way.
func startCanary(t *testing.T, f *fleet, url string) (*devices, string) {
	t.Helper()
	f.push("face", 1, 256<<10, 8<<10) // 2 canary devices, 512 KiB at 96 KiB/s: over 5 s
	const n = 3
	ds := f.devices(n, url, nil)
	f.waitDevices(n)
	ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 1, Waves: []int{34, 100}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "canary transfer under way", func() (bool, string) {
		var c uint64
		for i := range n {
			c += ds.get(i).Counters().Chunks
		}
		return c >= 4, fmt.Sprintf("%d chunks", c)
	})
	if c := canaryCommitted(f, ro.ID); c != 0 {
		t.Fatalf("%d canary devices committed before the outage; slow the transfer down", c)
	}
	return ds, ro.ID
}

func allDisconnected(t *testing.T, ds *devices, n int) {
	t.Helper()
	eventually(t, 30*time.Second, "devices disconnected", func() (bool, string) {
		for i := range n {
			if ds.get(i).Connected() {
				return false, devName(i) + " connected"
			}
		}
		return true, ""
	})
}

func allOn(t *testing.T, ds *devices, n int, version int64) {
	t.Helper()
	eventually(t, 60*time.Second, fmt.Sprintf("every device on v%d", version), func() (bool, string) {
		got, off := running(ds, n, "face", version)
		return got == n, off
	})
}

// TestBrokerRestartHoldsCanary: the broker goes away while the canary
// downloads and comes back; the rollout stays in wave 1 until a canary
// device committed. Mosquitto publishes every client's last will as it
// shuts down, so the controller sees the whole wave offline.
func TestBrokerRestartHoldsCanary(t *testing.T) {
	t.Run("embedded", func(t *testing.T) {
		b, err := broker.New(broker.Options{Addr: "127.0.0.1:0"})
		if err != nil {
			t.Fatal(err)
		}
		addr := b.Addr()
		bctx, bstop := context.WithCancel(context.Background())
		bdone := make(chan error, 1)
		go func() { bdone <- b.Run(bctx) }()
		f := startFleet(t, controller.Options{Broker: b.URL(), BytesPerSecond: 96 << 10})
		ds, id := startCanary(t, f, b.URL())
		bstop()
		<-bdone
		allDisconnected(t, ds, 3)
		if r, _ := f.c.Registry().Rollout(id); r.Wave != 0 || r.State != registry.RolloutRunning {
			t.Fatalf("during the outage: %s wave %d", r.State, r.Wave+1)
		}
		b2, err := broker.New(broker.Options{Addr: addr})
		if err != nil {
			t.Fatal(err)
		}
		b2ctx, b2stop := context.WithCancel(context.Background())
		b2done := make(chan error, 1)
		go func() { b2done <- b2.Run(b2ctx) }()
		defer func() {
			ds.stopAll()
			f.stop()
			b2stop()
			<-b2done
		}()
		waitCompletedHoldingCanary(t, f, id)
		allOn(t, ds, 3, 1)
	})
	t.Run("mosquitto", func(t *testing.T) {
		m := testbroker.StartMosquitto(t, "")
		// An observer with a persistent session counts the wills.
		var wills atomic.Int64
		filter, _ := protocol.FleetFilter(fleetName, protocol.LeafState)
		obs := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID("observer").SetCleanSession(false).
			SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
			SetOnConnectHandler(func(c mqtt.Client) {
				c.Subscribe(filter, 1, func(_ mqtt.Client, msg mqtt.Message) {
					if string(msg.Payload()) == protocol.StateOffline && !msg.Retained() {
						wills.Add(1)
					}
				})
			}))
		if tok := obs.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("observer: %v", tok.Error())
		}
		defer obs.Disconnect(100)
		f := startFleet(t, controller.Options{Broker: m.URL(), BytesPerSecond: 96 << 10})
		ds, id := startCanary(t, f, m.URL())
		m.Stop()
		allDisconnected(t, ds, 3)
		if r, _ := f.c.Registry().Rollout(id); r.Wave != 0 || r.State != registry.RolloutRunning {
			t.Fatalf("during the outage: %s wave %d", r.State, r.Wave+1)
		}
		m.Start()
		waitCompletedHoldingCanary(t, f, id)
		allOn(t, ds, 3, 1)
		if wills.Load() == 0 {
			t.Fatal("Mosquitto published no last will on shutdown: the test did not see the whole wave go offline")
		}
		ds.stopAll()
		f.stop()
	})
}

// TestControllerRestartHoldsCanary: the controller (with its embedded
// broker) restarts while the canary downloads; the restarted controller
// carries on in wave 1 and passes it only on a canary commit.
func TestControllerRestartHoldsCanary(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if _, err := keyring.Init(keys, keyring.Options{}); err != nil {
		t.Fatal(err)
	}
	addr := testbroker.FreeAddr(t)
	opts := controller.Options{Keys: keys, DataDir: t.TempDir(), ListenMQTT: addr, BytesPerSecond: 96 << 10}
	f := startFleet(t, opts)
	ds, id := startCanary(t, f, "tcp://"+addr)
	f.stop()
	f2 := startFleet(t, opts)
	if r, _ := f2.c.Registry().Rollout(id); r.Wave != 0 || r.State != registry.RolloutRunning {
		t.Fatalf("after the restart: %s wave %d", r.State, r.Wave+1)
	}
	waitCompletedHoldingCanary(t, f2, id)
	allOn(t, ds, 3, 1)
}

// TestRequireVerifiedThroughBroker: with --require-verified an unverified
// commit holds the wave and the report says so; the probation policy reaches
// the devices and their verified commits pass the gates.
func TestRequireVerifiedThroughBroker(t *testing.T) {
	f := startFleet(t, controller.Options{})
	f.push("face", 1, 32<<10, 8<<10)
	f.push("face", 2, 32<<10, 8<<10)
	const n = 2
	ds := f.devices(n, "", func(i int, o *simdevice.Options) {
		o.Unverified = func(m string, v int64) bool { return v == 1 }
	})
	f.waitDevices(n)
	ro1, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 1, Waves: []int{50, 100}, RequireVerified: true})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "wave 1 waiting on an unverified commit", func() (bool, string) {
		rep, err := f.c.Engine().Status(ro1.ID)
		if err != nil {
			return false, err.Error()
		}
		return rep.Waves[0].Unverified == 1 && strings.Contains(rep.Waiting, "1 committed (unverified)"),
			fmt.Sprintf("waiting %q, wave 1 %+v", rep.Waiting, rep.Waves[0])
	})
	f.waitSteps(3)
	if r, _ := f.c.Registry().Rollout(ro1.ID); r.Wave != 0 || r.State != registry.RolloutRunning {
		t.Fatalf("an unverified commit passed wave 1: %s wave %d", r.State, r.Wave+1)
	}
	ro2, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{50, 100}, RequireVerified: true,
		Probation: &protocol.Probation{MinRequests: 25, MaxSeconds: 60}})
	if err != nil {
		t.Fatal(err)
	}
	f.waitRollout(ro2.ID, registry.RolloutCompleted, 90*time.Second)
	checkEvidence(t, f, ro2.ID)
	allOn(t, ds, n, 2)
	as, _ := f.c.Registry().Assignments(ro2.ID)
	for _, a := range as {
		if !a.Verified || a.Requests != 25 {
			t.Errorf("%s: verified %v after %d probation requests, want verified after 25 (the rollout's policy)", a.Device, a.Verified, a.Requests)
		}
	}
	if rep, _ := f.c.Engine().Status(ro2.ID); rep.Verified != n {
		t.Fatalf("report: %d verified commits, want %d", rep.Verified, n)
	}
}

// TestAdminDrainsPushOnShutdown: a model push still uploading when the
// controller is told to stop completes (and is stored) before it exits.
func TestAdminDrainsPushOnShutdown(t *testing.T) {
	data := t.TempDir()
	f := startFleet(t, controller.Options{DataDir: data})
	model, rel := f.artifact("face", 1, 4<<20)
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	goOn := make(chan struct{})
	wrote := make(chan error, 1)
	go func() {
		err := func() error {
			w, err := mw.CreateFormFile("release", "release.json")
			if err != nil {
				return err
			}
			if _, err := w.Write(rel); err != nil {
				return err
			}
			if w, err = mw.CreateFormFile("model", "model.tflite"); err != nil {
				return err
			}
			if _, err := w.Write(model[:1<<20]); err != nil {
				return err
			}
			<-goOn
			if _, err := w.Write(model[1<<20:]); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
		wrote <- err
	}()
	type result struct {
		status int
		body   string
		err    error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Post("http://"+f.c.AdminAddr()+"/v1/models", mw.FormDataContentType(), pr)
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- result{status: resp.StatusCode, body: string(b)}
	}()
	// The push is in the registry's hands: its blob is being written.
	eventually(t, 30*time.Second, "upload under way", func() (bool, string) {
		tmp, _ := filepath.Glob(filepath.Join(data, "blobs", ".tmp-*"))
		return len(tmp) > 0, "no temporary blob"
	})
	admin := f.c.AdminAddr()
	f.cancel()
	eventually(t, 30*time.Second, "admin API closed to new requests", func() (bool, string) {
		c, err := net.DialTimeout("tcp", admin, time.Second)
		if err != nil {
			return true, ""
		}
		c.Close()
		return false, "still accepting"
	})
	close(goOn)
	if err := <-wrote; err != nil {
		t.Fatalf("upload: %v", err)
	}
	r := <-got
	if r.err != nil || r.status != http.StatusCreated {
		t.Fatalf("push in flight at shutdown: status %d %q, %v; want 201", r.status, r.body, r.err)
	}
	select {
	case err := <-f.done:
		f.done <- err
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("controller: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("controller did not stop after the drain")
	}
	reg, err := registry.Open(data, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	mv, err := reg.Model("face", 1)
	if err != nil {
		t.Fatalf("the drained push was not stored: %v", err)
	}
	if st, err := os.Stat(reg.BlobPath(mv.SHA256)); err != nil || st.Size() != int64(len(model)) {
		t.Fatalf("blob: %v, %v", st, err)
	}
}
