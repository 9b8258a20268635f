package controller_test

import (
	"path/filepath"

	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/broker"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/protocol"
)

// running reports how many devices run version of model.
func running(ds *devices, n int, model string, version int64) (int, string) {
	got := 0
	var off []string
	for i := range n {
		if v := ds.get(i).Running(model); v == version {
			got++
		} else {
			off = append(off, fmt.Sprintf("%s:v%d", devName(i), v))
		}
	}
	return got, strings.Join(off, " ")
}

// TestRolloutCompletes: a rollout in three waves over the embedded broker
// reaches every device; each device was in the wave its cohort names; no
// device refused a command (so every command verified against the root).
func TestRolloutCompletes(t *testing.T) {
	const n = 12
	f := startFleet(t, controller.Options{})
	f.push("face", 1, 200<<10, 16<<10)
	ds := f.devices(n, "", nil)
	f.waitDevices(n)

	ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 1, Waves: []int{25, 50, 100}, MaxFailureRatio: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	f.waitRollout(ro.ID, registry.RolloutCompleted, 90*time.Second)
	if got, off := running(ds, n, "face", 1); got != n {
		t.Fatalf("got %d of %d devices on face v1; not: %s", got, n, off)
	}
	rep, err := f.c.Engine().Status(ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Committed != n || rep.Devices != n {
		t.Fatalf("report: %d committed of %d devices, want %d", rep.Committed, rep.Devices, n)
	}
	// Waves hold ceil(p% of n) devices, cumulative, in cohort order.
	as, err := f.c.Registry().Assignments(ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(as, func(i, j int) bool { return rollout.Cohort(ro.ID, as[i].Device) < rollout.Cohort(ro.ID, as[j].Device) })
	for i, a := range as {
		want := 0
		for i >= rollout.Quota(ro.Waves[want], n) {
			want++
		}
		if a.Wave != want {
			t.Errorf("%s (cohort rank %d): got wave %d, want %d", a.Device, i, a.Wave, want)
		}
	}
	checkEvidence(t, f, ro.ID)
	for i := range n {
		if c := ds.get(i).Counters(); c.Rejected != 0 || c.BadChunks != 0 {
			t.Errorf("%s: %d commands refused, %d bad chunks", devName(i), c.Rejected, c.BadChunks)
		}
	}
	// Device status reached the registry: labels and the model.
	d, err := f.c.Registry().Device(devName(1))
	if err != nil || d.Labels["site"] != "south" || d.Running("face") != 1 {
		t.Fatalf("registry device: %+v, %v", d, err)
	}
}

// TestFailedGateRollsBack: devices that fail probation of v2 make the gate
// fail; the rollout halts and every device that took v2 goes back to v1.
func TestFailedGateRollsBack(t *testing.T) {
	const n = 10
	f := startFleet(t, controller.Options{})
	mv1 := f.push("face", 1, 64<<10, 16<<10)
	f.push("face", 2, 64<<10, 16<<10)
	ds := f.devices(n, "", func(i int, o *simdevice.Options) {
		o.Models = []protocol.ModelStatus{{Name: "face", Version: 1, Digest: "sha256:" + mv1.SHA256}}
		if i%3 == 0 {
			o.FailProbation = func(m string, v int64) bool { return v == 2 }
		}
	})
	f.waitDevices(n)
	ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MaxFailureRatio: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	f.waitRollout(ro.ID, registry.RolloutHalted, 90*time.Second)
	eventually(t, 60*time.Second, "every device back on v1", func() (bool, string) {
		got, off := running(ds, n, "face", 1)
		return got == n, off
	})
	got, _ := f.c.Registry().Rollout(ro.ID)
	if !strings.Contains(got.Reason, "gate failed") {
		t.Fatalf("halt reason %q, want it to name the gate", got.Reason)
	}
	// Devices that committed v2 got a rollback; the report shows it.
	eventually(t, 60*time.Second, "rollbacks acknowledged", func() (bool, string) {
		as, _ := f.c.Registry().Assignments(ro.ID)
		for _, a := range as {
			if a.Activated && a.State != protocol.UpdateRolledBack {
				return false, fmt.Sprintf("%s is %s", a.Device, a.State)
			}
		}
		return true, ""
	})
}

// TestOfflineCatchUpPauseAbort: a device offline during a rollout gets the
// version when it returns; pause holds the next wave; abort rolls the
// touched devices back, and a device that was offline through the abort
// ends on the old version.
func TestOfflineCatchUpPauseAbort(t *testing.T) {
	const n = 6
	f := startFleet(t, controller.Options{})
	mv1 := f.push("face", 1, 32<<10, 8<<10)
	f.push("face", 2, 32<<10, 8<<10)
	ds := f.devices(n, "", func(i int, o *simdevice.Options) {
		if len(o.Models) == 0 {
			o.Models = []protocol.ModelStatus{{Name: "face", Version: 1, Digest: "sha256:" + mv1.SHA256}}
		}
	})
	f.waitDevices(n)
	f.c.Engine().Kick()

	// Offline catch-up: device 5 is away during a one-wave rollout of v2.
	ds.stop(5)
	eventually(t, 30*time.Second, "dev-005 offline", func() (bool, string) {
		d, err := f.c.Registry().Device(devName(5))
		return err == nil && !d.Online, "still online"
	})
	ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 2, Waves: []int{100}})
	if err != nil {
		t.Fatal(err)
	}
	f.waitRollout(ro.ID, registry.RolloutCompleted, 90*time.Second)
	if got, _ := running(ds, 5, "face", 2); got != 5 {
		t.Fatalf("got %d of 5 online devices on v2", got)
	}
	if v := ds.get(5).Running("face"); v != 1 {
		t.Fatalf("offline device runs v%d before it returned", v)
	}
	ds.start(5)
	eventually(t, 60*time.Second, "dev-005 caught up", func() (bool, string) {
		v := ds.get(5).Running("face")
		return v == 2, fmt.Sprintf("v%d", v)
	})

	// Pause holds a rollout between waves; abort rolls back.
	f.push("face", 3, 32<<10, 8<<10)
	ro3, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 3, Waves: []int{50, 100}, Bake: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if old, _ := f.c.Registry().Rollout(ro.ID); old.State != registry.RolloutSuperseded {
		t.Fatalf("the v2 rollout is %s, want superseded", old.State)
	}
	eventually(t, 60*time.Second, "wave 1 baking", func() (bool, string) {
		r, _ := f.c.Registry().Rollout(ro3.ID)
		return !r.WaveDone.IsZero(), "wave 1 not done"
	})
	if _, err := f.c.Engine().Pause(ro3.ID); err != nil {
		t.Fatal(err)
	}
	wave1, _ := f.c.Registry().Assignments(ro3.ID)
	f.waitSteps(3) // steps run with the rollout paused
	if as, _ := f.c.Registry().Assignments(ro3.ID); len(as) != len(wave1) {
		t.Fatalf("paused rollout assigned %d more devices", len(as)-len(wave1))
	}
	if _, err := f.c.Engine().Resume(ro3.ID); err != nil {
		t.Fatal(err)
	}
	away := -1
	for i := range n {
		if ds.get(i).Running("face") == 2 {
			away = i // still on v2: not in wave 1
			break
		}
	}
	if away < 0 {
		t.Skip("every device landed in wave 1 of 50%; nothing left to test offline")
	}
	ds.stop(away)
	eventually(t, 30*time.Second, "device offline", func() (bool, string) {
		d, _ := f.c.Registry().Device(devName(away))
		return !d.Online, "online"
	})
	if _, err := f.c.Engine().Abort(ro3.ID, "test abort"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.Engine().Resume(ro3.ID); !errors.Is(err, rollout.ErrState) {
		t.Fatalf("resume of an aborted rollout: got %v, want ErrState", err)
	}
	ds.start(away)
	eventually(t, 60*time.Second, "every device on v2 after the abort", func() (bool, string) {
		got, off := running(ds, n, "face", 2)
		return got == n, off
	})
}

// TestChunkTransferResumesAfterBrokerRestart: the broker dies in the middle
// of a paced transfer and comes back on the same port; the device resumes
// from the first chunk it lacks, not from zero, and the rollout completes
// only once the device committed (the outage is no evidence).
func TestChunkTransferResumesAfterBrokerRestart(t *testing.T) {
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	addr := b.Addr()
	bctx, bstop := context.WithCancel(context.Background())
	bdone := make(chan error, 1)
	go func() { bdone <- b.Run(bctx) }()

	f := startFleet(t, controller.Options{Broker: b.URL(), BytesPerSecond: 128 << 10})
	const chunks = 64
	f.push("face", 1, chunks*8<<10, 8<<10) // 512 KiB at 128 KiB/s: about 4 s
	ds := f.devices(1, b.URL(), nil)
	f.waitDevices(1)
	ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 1, Waves: []int{100}})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "transfer under way", func() (bool, string) {
		c := ds.get(0).Counters().Chunks
		return c >= 8, fmt.Sprintf("%d chunks", c)
	})
	bstop()
	<-bdone
	before := ds.get(0).Counters().Chunks
	if before >= chunks {
		t.Fatalf("transfer finished (%d chunks) before the broker stopped; slow it down", before)
	}
	// The outage: the device has noticed it lost the broker.
	eventually(t, 30*time.Second, "device disconnected", func() (bool, string) {
		return !ds.get(0).Connected(), "still connected"
	})
	if r, _ := f.c.Registry().Rollout(ro.ID); r.State != registry.RolloutRunning {
		t.Fatalf("rollout %s during the outage, with no device committed", r.State)
	}
	b2, err := broker.New(broker.Options{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	b2ctx, b2stop := context.WithCancel(context.Background())
	b2done := make(chan error, 1)
	go func() { b2done <- b2.Run(b2ctx) }()
	defer func() {
		f.stop() // before the broker goes
		b2stop()
		<-b2done
	}()

	f.waitRollout(ro.ID, registry.RolloutCompleted, 120*time.Second)
	c := ds.get(0).Counters()
	if ds.get(0).Running("face") != 1 {
		t.Fatal("rollout completed but the device did not install v1")
	}
	checkEvidence(t, f, ro.ID)
	resumed := false
	for _, first := range c.FirstAfterReconnect {
		if first > 0 {
			resumed = true
		}
	}
	if !resumed {
		t.Fatalf("after reconnecting the device asked from %v, want a chunk past 0 (it held %d)", c.FirstAfterReconnect, before)
	}
	if c.Chunks >= 2*chunks {
		t.Fatalf("received %d chunks for a %d-chunk artifact: restarted from zero", c.Chunks, chunks)
	}
}

// TestCommandsRefusedWhenNotSigned: a device ignores a command signed by a
// key its root does not trust and one that replays an id.
func TestCommandsRefusedWhenNotSigned(t *testing.T) {
	f := startFleet(t, controller.Options{})
	mv := f.push("face", 1, 16<<10, 8<<10)
	other := startFleet(t, controller.Options{}) // another fleet's keys
	ds := f.devices(1, "", nil)
	f.waitDevices(1)
	cmd := &protocol.Command{ID: "forged-1", Kind: protocol.CommandInstall, Fleet: fleetName, Device: devName(0), RolloutID: "r-x",
		Issued: time.Now(), Expires: time.Now().Add(time.Hour),
		Install: &protocol.Install{Model: "face", Version: 1, Artifact: mv.Artifact(), Release: mv.Release}}
	// Published by the other controller, through this fleet's broker.
	topics, _ := protocol.DeviceTopics(fleetName, devName(0))
	signed, err := protocol.SignCommand(cmd, nil, mustSigners(t, other)...)
	if err != nil {
		t.Fatal(err)
	}
	pub := f.c // any connected client will do; use the controller's
	if err := pub.Publish(context.Background(), topics.Cmd, signed); err != nil {
		t.Fatal(err)
	}
	// A genuine command, sent twice: the second is a replay.
	cmd.ID = "genuine-1"
	if err := f.c.Send(context.Background(), cmd); err != nil {
		t.Fatal(err)
	}
	if err := f.c.Send(context.Background(), cmd); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "refusals counted", func() (bool, string) {
		c := ds.get(0).Counters()
		return c.Rejected == 2 && c.Commands == 1, fmt.Sprintf("%+v", c)
	})
	eventually(t, 30*time.Second, "genuine install", func() (bool, string) {
		return ds.get(0).Running("face") == 1, "not installed"
	})
}

func mustSigners(t *testing.T, f *fleet) []ed25519.PrivateKey {
	t.Helper()
	k, err := f.keys.Signers(protocol.CommandRole(&f.root.Doc))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestTelemetryCounted: telemetry batches on a device's events topic are
// counted and de-duplicated by (device, epoch, sequence).
func TestTelemetryCounted(t *testing.T) {
	f := startFleet(t, controller.Options{})
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(f.c.BrokerURL()).SetClientID("gw-tel"))
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer cl.Disconnect(100)
	topics, _ := protocol.DeviceTopics(fleetName, "gw-tel")
	body, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindUpdate, Time: time.Now(),
		Update: &protocol.Update{RolloutID: "r-1", State: "downloading"}})
	if err != nil {
		t.Fatal(err)
	}
	batch := func(seqs ...uint64) []byte {
		b := protocol.AppendBatchHeader(nil, protocol.BatchHeader{Epoch: 42, Count: len(seqs)})
		for _, s := range seqs {
			b = protocol.AppendBatchEntry(b, s, body)
		}
		return b
	}
	for _, p := range [][]byte{batch(1, 2, 3), batch(3, 4), []byte("garbage")} {
		if tok := cl.Publish(topics.Events, 1, false, p); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	eventually(t, 30*time.Second, "telemetry counted", func() (bool, string) {
		d, err := f.c.Registry().Device("gw-tel")
		if err != nil {
			return false, err.Error()
		}
		tc := d.Telemetry
		return tc.Records == 4 && tc.Duplicates == 1 && tc.ByKind["update"] == 4, fmt.Sprintf("%+v", tc)
	})
	eventually(t, 10*time.Second, "bad batch counted", func() (bool, string) {
		return f.c.Stats().BadMessages >= 1, "no bad message counted"
	})
}

// TestControllerRestartResumesRollout: the controller (with its embedded
// broker) stops in the middle of a rollout and starts again on the same
// data directory and address; the rollout carries on and completes.
func TestControllerRestartResumesRollout(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if _, err := keyring.Init(keys, keyring.Options{}); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	addr := testbroker.FreeAddr(t)
	opts := controller.Options{Keys: keys, DataDir: data, ListenMQTT: addr}
	f := startFleet(t, opts)
	f.push("face", 1, 64<<10, 16<<10)
	const n = 6
	ds := f.devices(n, "tcp://"+addr, nil)
	f.waitDevices(n)
	ro, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 1, Waves: []int{50, 100}, Bake: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "wave 1 done", func() (bool, string) {
		r, _ := f.c.Registry().Rollout(ro.ID)
		return !r.WaveDone.IsZero(), "not yet"
	})
	f.stop()
	f2 := startFleet(t, opts)
	f2.waitRollout(ro.ID, registry.RolloutCompleted, 120*time.Second)
	if got, off := running(ds, n, "face", 1); got != n {
		t.Fatalf("%d of %d on v1 after the restart; not: %s", got, n, off)
	}
	checkEvidence(t, f2, ro.ID)
}
