package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/internal/testpg"
	"github.com/outpost-edge/outpost/protocol"
)

func TestMain(m *testing.M) { os.Exit(testpg.Main(m)) }

func (r *replica) stats(t *testing.T) controller.Stats {
	var s controller.Stats
	getJSON(t, r.admin+"/v1/stats", &s)
	return s
}

// waitFor polls cond every 50 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (%s)", what, d, state)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReplicasLeaderKill: two controller replicas on one PostgreSQL and
// Mosquitto (telemetry and chunk requests split by a $share group); a
// rollout in three waves to simulated devices; the leader is killed
// (SIGKILL) once the first gate has passed. The other replica takes over
// the lease within seconds, the rollout completes with each gate decided
// exactly once, in order, and telemetry delivered twice is counted once.
func TestReplicasLeaderKill(t *testing.T) { replicasLeaderKill(t, "ctl", false) }

// TestReplicasLeaderPause stops the leader (SIGSTOP) instead of killing
// it: the standby takes over, and the old leader, continued, finds its
// lease lost, stands by and writes nothing (its engine's writes are
// fenced): the gates are still decided once each.
func TestReplicasLeaderPause(t *testing.T) { replicasLeaderKill(t, "", true) }

// TestReplicasLeaderKillNoShare is the same without a share group, as on
// NATS: every replica receives every telemetry batch (the store counts it
// once) and every chunk request (only the leader answers).
func TestReplicasLeaderKillNoShare(t *testing.T) { replicasLeaderKill(t, "", false) }

// probeChunkRequests asks for the first chunk of artifact sha once from
// each of n devices nobody else uses (probe-000, ...), as a device does, and
// fails unless every request is answered within d. A probe never asks
// again: a request the broker gave to a dead replica stays unanswered.
func probeChunkRequests(t *testing.T, url, fleet, sha string, n int, d time.Duration) {
	t.Helper()
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("chunk-probe").SetCleanSession(true))
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("probe: connect: %v", tok.Error())
	}
	defer cl.Disconnect(100)
	var mu sync.Mutex
	answered := map[string]bool{}
	req, _ := protocol.ArtifactsReqTopic(fleet)
	for i := range n {
		dev := fmt.Sprintf("probe-%03d", i)
		topics, _ := protocol.DeviceTopics(fleet, dev)
		tok := cl.Subscribe(topics.Chunk, protocol.ChunkQoS, func(_ mqtt.Client, m mqtt.Message) {
			if c, err := protocol.ParseChunk(m.Payload()); err == nil && c.ArtifactHex() == sha {
				mu.Lock()
				answered[dev] = true
				mu.Unlock()
			}
		})
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("probe: subscribe: %v", tok.Error())
		}
	}
	for i := range n {
		b, _ := json.Marshal(protocol.ChunkRequest{Device: fmt.Sprintf("probe-%03d", i), SHA256: sha, First: 0, Count: 1})
		if tok := cl.Publish(req, 1, false, b); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("probe: request: %v", tok.Error())
		}
	}
	waitFor(t, d, "every chunk request answered", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		var missing []string
		for i := range n {
			if dev := fmt.Sprintf("probe-%03d", i); !answered[dev] {
				missing = append(missing, dev)
			}
		}
		return len(missing) == 0, fmt.Sprintf("%d of %d unanswered: %v", len(missing), n, missing)
	})
}

func replicasLeaderKill(t *testing.T, shareGroup string, pause bool) {
	start := time.Now()
	n := 20
	if s := os.Getenv("OUTPOST_REPLICAS_AGENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	const ttl = 2 * time.Second
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
	args := []string{"--lease-ttl", ttl.String()}
	if shareGroup != "" {
		args = append(args, "--share-group", shareGroup)
	}
	ro := replicaOptions{Fleet: "rep", Store: store, Brokers: []string{mq.URL()}, Keys: k, Config: "rollouts:\n  resend_after: 5s\n", Args: args}
	reps := []*replica{startReplica(t, bin, "a", ro), startReplica(t, bin, "b", ro)}
	var leader, standby *replica
	waitFor(t, 30*time.Second, "one leader", func() (bool, string) {
		sa, sb := reps[0].stats(t), reps[1].stats(t)
		switch {
		case sa.Leader && !sb.Leader:
			leader, standby = reps[0], reps[1]
		case sb.Leader && !sa.Leader:
			leader, standby = reps[1], reps[0]
		default:
			return false, fmt.Sprintf("a leads %v, b leads %v", sa.Leader, sb.Leader)
		}
		return true, ""
	})

	// The model goes to the leader's data directory only: after the kill
	// the standby serves its chunks from the store.
	sha := pushRandomModel(t, leader.admin, k, 256<<10)
	startSims(t, n, []string{mq.URL()}, "rep", "sim", k, simdevice.Options{RetryAfter: time.Second})
	waitFor(t, 60*time.Second, "devices registered", func() (bool, string) {
		var ds []registry.Device
		getJSON(t, standby.admin+"/v1/devices", &ds)
		online := 0
		for _, d := range ds {
			if d.Online {
				online++
			}
		}
		return online >= n, fmt.Sprintf("%d of %d online", online, n)
	})

	// Telemetry, each batch published twice, before and after the kill.
	tel := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mq.URL()).SetClientID("tel-sender"))
	if tok := tel.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("telemetry client: %v", tok.Error())
	}
	defer tel.Disconnect(100)
	rec, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindAudit, Time: time.Now(), Audit: &protocol.Audit{Actor: "agent", Action: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	const telDevices, perBatch = 4, 5
	sendTelemetry := func(first uint64) {
		for d := range telDevices {
			topics, _ := protocol.DeviceTopics("rep", fmt.Sprintf("sim-%04d", d))
			b := protocol.AppendBatchHeader(nil, protocol.BatchHeader{Epoch: 7, Count: perBatch})
			for s := range uint64(perBatch) {
				b = protocol.AppendBatchEntry(b, first+s, rec)
			}
			for range 2 {
				if tok := tel.Publish(topics.Events, 1, false, b); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Fatalf("telemetry: %v", tok.Error())
				}
			}
		}
	}
	sendTelemetry(1)
	t.Logf("%s: replicas up, %d devices online", time.Since(start).Round(time.Millisecond), n)

	created := createRollout(t, standby.admin, []int{10, 50, 100}, map[string]any{"bake": "1s"}) // any replica takes it
	var rep struct {
		rolloutReport
		Decisions []registry.Decision `json:"decisions"`
	}
	rep.rolloutReport = created
	waitFor(t, 60*time.Second, "first gate", func() (bool, string) {
		getJSON(t, standby.admin+"/v1/rollouts/"+rep.ID, &rep)
		return len(rep.Decisions) >= 1, fmt.Sprintf("%s, %d committed", rep.State, rep.Committed)
	})
	if rep.State != "running" {
		t.Fatalf("rollout %s before the kill: want it running", rep.State)
	}
	t.Logf("%s: first gate passed, stopping the leader %s", time.Since(start).Round(time.Millisecond), leader.id)
	killed := time.Now()
	sig, sigName := syscall.SIGKILL, "SIGKILL"
	if pause {
		sig, sigName = syscall.SIGSTOP, "SIGSTOP"
	}
	if err := leader.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	if !pause {
		<-leader.dead
	}
	waitFor(t, 5*ttl, "takeover", func() (bool, string) { return standby.stats(t).Leader, "standby not leading" })
	takeover := time.Since(killed)
	if shareGroup != "" && !pause {
		// The dead replica left no session in the share group for the
		// broker to queue chunk requests to: the standby answers all.
		probeChunkRequests(t, mq.URL(), "rep", sha, 20, 10*time.Second)
	}
	if pause {
		if err := leader.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*ttl, "old leader standing by", func() (bool, string) {
			return !leader.stats(t).Leader, "old leader still leading"
		})
		if !strings.Contains(leader.logs.String(), "lease lost") {
			t.Errorf("the old leader did not say it lost the lease")
		}
	}
	sendTelemetry(perBatch + 1)

	waitFor(t, 90*time.Second, "rollout completed", func() (bool, string) {
		getJSON(t, standby.admin+"/v1/rollouts/"+rep.ID, &rep)
		return rep.State == "completed" || rep.State == "halted", fmt.Sprintf("%s, %d committed", rep.State, rep.Committed)
	})
	if rep.State != "completed" || rep.Committed != n {
		t.Fatalf("rollout %s with %d of %d committed", rep.State, rep.Committed, n)
	}
	var got []string
	for _, d := range rep.Decisions {
		got = append(got, fmt.Sprintf("%d:%s", d.Wave, d.Action))
	}
	if want := []string{"0:passed", "1:passed", "2:completed"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("gate decisions: got %v, want %v (each gate once, in order)", got, want)
	}
	waitFor(t, 30*time.Second, "telemetry counted once", func() (bool, string) {
		for d := range telDevices {
			var dev registry.Device
			getJSON(t, fmt.Sprintf("%s/v1/devices/sim-%04d", standby.admin, d), &dev)
			if dev.Telemetry.Records != 2*perBatch {
				return false, fmt.Sprintf("sim-%04d: %+v", d, dev.Telemetry)
			}
		}
		return true, ""
	})
	t.Logf("%s: done; %d devices, lease ttl %s: standby took over %s after the %s", time.Since(start).Round(time.Millisecond), n, ttl, takeover.Round(10*time.Millisecond), sigName)
}
