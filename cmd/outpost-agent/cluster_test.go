package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The real agent and controller on a real 3-node NATS cluster with MQTT,
// both given the three nodes: a rollout starts, and once the device is
// downloading, the node it is connected to is SIGKILLed (the controller's
// too: both try the first node of their list first). Both fail over to the
// surviving nodes; the rollout completes; the telemetry the agent makes all
// along (a prediction sample per request) reaches the controller, whose
// counters show every sequence number of the agent's queue counted exactly
// once. A second agent on a clean session (fleet.clean_session), on the same
// node, has no JetStream consumer and completes the rollout too.
// OUTPOST_NATS_KILLS=N (make test-nats) kills N times, restarting the dead
// node in between and killing the one the agent moved to.
func TestFleetRolloutThroughNATSNodeKill(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end rollout: a broker cluster and several processes")
	}
	kills := 1
	if v := os.Getenv("OUTPOST_NATS_KILLS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "OUTPOST_NATS_KILLS")
		kills = max(n, 1)
	}
	nats := testbroker.StartNATSCluster(t, 3)
	b := build(t)
	urls := nats.URLs()
	// Small, slow chunks, so the transfer is still going when the node dies
	// (slower with more kills: about 8 s of transfer per kill).
	f := startFleet(t, b, strings.Join(urls, ","), fmt.Sprintf("artifacts: {chunk_size: 16384, bytes_per_second: %d}\n", 131072/kills))
	dev := newClusterDevice(t, f, "gw-0", urls)
	agent := startServe(t, b.agent, "--config", dev.config)
	// A second device on a clean session (fleet.clean_session, as
	// docs/SCALE.md advises for NATS), with the same list: it starts on
	// the same node as gw-0, so the kill takes its connection too.
	clean := startServe(t, b.agent, "--config", newClusterDevice(t, f, "gw-1", urls, "clean_session: true").config)
	poll(t, func() bool {
		list := f.cli(t, "devices", "list")
		return strings.Contains(list, "gw-0") && strings.Contains(list, "gw-1")
	}, 60*time.Second, "the devices never registered")
	// A device costs NATS one JetStream consumer, for its commands: chunks
	// are QoS 0 (protocol.ChunkQoS), which NATS delivers without one.
	var consumers []string
	poll(t, func() bool {
		var err error
		consumers, err = nats.MQTTConsumers(0)
		return err == nil && slices.ContainsFunc(consumers, func(f string) bool { return strings.HasSuffix(f, ".gw-0.cmd") })
	}, 30*time.Second, "no consumer for the device's commands on n1")
	assert.False(t, slices.ContainsFunc(consumers, func(f string) bool { return strings.HasSuffix(f, ".gw-0.chunk") }),
		"a JetStream consumer for the device's chunks: %q", consumers)
	assert.False(t, slices.ContainsFunc(consumers, func(f string) bool { return strings.Contains(f, ".gw-1.") }),
		"a JetStream consumer for the clean-session device: %q", consumers)

	// Requests all along, so the agent makes telemetry through the kills.
	ctx, stopLoad := context.WithCancel(context.Background())
	var load sync.WaitGroup
	var requests, failures int
	load.Add(1)
	go func() {
		defer load.Done()
		deadline := time.Now().Add(5 * time.Minute) // bounded, whatever happens
		for ctx.Err() == nil && time.Now().Before(deadline) {
			resp, err := http.Post(agent.url+"/v2/models/face/infer", "application/json", strings.NewReader(faceJSON))
			requests++
			if err != nil || resp.StatusCode != 200 {
				failures++
			}
			if err == nil {
				resp.Body.Close()
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	defer func() { stopLoad(); load.Wait() }()

	f.cli(t, "models", "push", "--keys", f.keys, "--name", "face2", "--version", "1", testModel(t, "face_detection_full_range.tflite"))
	out := f.cli(t, "rollout", "create", "--model", "face2", "--version", "1", "--waves", "100")
	id := regexp.MustCompile(`rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)[1]
	poll(t, func() bool {
		var devs []struct {
			Device string `json:"device"`
			State  string `json:"state"`
		}
		if getJSON(t, f.admin+"/v1/rollouts/"+id+"/devices", &devs) != 200 || len(devs) != 2 {
			return false
		}
		for _, d := range devs {
			if d.Device == "gw-0" && d.State == "downloading" {
				return true
			}
		}
		return false
	}, 60*time.Second, "gw-0 never started downloading")

	var killedAt time.Time
	for k := range kills {
		var node int
		poll(t, func() bool { node = nats.ClientNode("gw-0"); return node >= 0 }, 60*time.Second, "the agent is on no node")
		t.Logf("kill %d: SIGKILL node n%d, the agent's (the controller's: n%d, the clean-session device's: n%d)", k+1, node+1,
			nats.ClientNode("outpost-fleet-acme")+1, nats.ClientNode("gw-1")+1)
		killedAt = time.Now()
		nats.Kill(node)
		var moved int
		poll(t, func() bool { moved = nats.ClientNode("gw-0"); return moved >= 0 }, 90*time.Second, "the agent never connected to another node")
		t.Logf("the agent is on n%d %v after the kill", moved+1, time.Since(killedAt).Round(time.Millisecond))
		poll(t, func() bool { return nats.ClientNode("outpost-fleet-acme") >= 0 }, 90*time.Second, "the controller is on no node")
		if k+1 < kills {
			// The dead node comes back before the next kill, so a
			// majority of the cluster stays up.
			nats.Start(node)
			nats.WaitMQTT(node, 60*time.Second)
		}
	}

	watch := f.cli(t, "rollout", "status", "--watch", "--interval", "200ms", id)
	assert.Contains(t, watch, "completed", "rollout %s:\n%s", id, watch)
	status := f.cli(t, "rollout", "status", id)
	assert.Contains(t, status, "committed 2 of 2", status)
	t.Logf("rollout completed %v after the last kill", time.Since(killedAt).Round(time.Millisecond))
	for _, a := range []*serving{agent, clean} {
		poll(t, func() bool {
			v, _ := served(t, a, "face2")
			return v == "1"
		}, 30*time.Second, "a device does not serve the new version")
	}

	// Telemetry: stop making requests, then wait until the agent's queue is
	// empty and the controller has seen the agent's last sequence number,
	// both read together (the agent goes on making health and aggregate
	// records); then every number up to it must have been counted once.
	stopLoad()
	load.Wait()
	var d struct {
		Telemetry struct {
			Records    uint64    `json:"records"`
			Duplicates uint64    `json:"duplicates"`
			MaxSeq     uint64    `json:"max_seq"`
			Drops      any       `json:"drops"`
			Last       time.Time `json:"last"`
		} `json:"telemetry"`
	}
	var lastSeq, depth float64
	deadline := time.Now().Add(90 * time.Second)
	for {
		m := agentMetrics(t, agent.url)
		lastSeq, depth = m["outpost_telemetry_last_sequence"], m["outpost_telemetry_queue_records"]
		if depth == 0 && lastSeq > 0 && getJSON(t, f.admin+"/v1/devices/gw-0", &d) == 200 && float64(d.Telemetry.MaxSeq) == lastSeq {
			// Read again: nothing new made in between.
			if m := agentMetrics(t, agent.url); m["outpost_telemetry_last_sequence"] == lastSeq {
				break
			}
		}
		if time.Now().After(deadline) {
			for i := range 3 {
				t.Logf("n%d consumers: %s", i+1, nats.Monitor(i, "/jsz?acc=%24G&consumers=true"))
			}
			t.Fatalf("the agent's queue (%v records, last sequence %v) and the controller (%+v) never met", depth, lastSeq, d.Telemetry)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tel := d.Telemetry
	t.Logf("%d requests (%d failed); agent's last sequence %v; controller: %d records, max sequence %d, %d duplicates dropped, drops %v",
		requests, failures, lastSeq, tel.Records, tel.MaxSeq, tel.Duplicates, tel.Drops)
	assert.Equal(t, tel.MaxSeq, tel.Records, "every sequence number up to the last counted exactly once")
	assert.Nil(t, tel.Drops, "the agent dropped telemetry")
	assert.True(t, tel.Last.After(killedAt), "telemetry resumed after the kill: last batch at %v, kill at %v", tel.Last, killedAt)
	assert.Greater(t, requests, 0)
}

// newClusterDevice is newDevice on a list of brokers, with a prediction
// sample for every request; fleetKeys are more keys of agent.yaml's fleet
// section ("clean_session: true").
func newClusterDevice(t *testing.T, f *fleetProc, name string, brokers []string, fleetKeys ...string) device {
	t.Helper()
	data := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.MkdirAll(data, 0o755))
	copyFile(t, filepath.Join(f.keys, "root.json"), filepath.Join(data, "root.json"))
	cfg := filepath.Join(filepath.Dir(data), "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, `
data_dir: %s
workers: 1
models: [{name: face, path: %s}]
telemetry: {sample_rate: 1}
fleet: {brokers: ["%s"], name: acme, device: %s, labels: {site: north}, probation: 1s, probation_max: 2s, status_interval: 1s%s}
`, data, testModel(t, "face_detection_short_range.tflite"), strings.Join(brokers, `", "`), name,
		strings.Join(append([]string{""}, fleetKeys...), ", ")), 0o644))
	return device{name: name, config: cfg}
}

// agentMetrics reads the agent's Prometheus metrics without labels.
func agentMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if x, err := strconv.ParseFloat(v, 64); err == nil {
			m[name] = x
		}
	}
	return m
}

// A device with fleet.clean_session on the NATS cluster (docs/PROTOCOL.md,
// Transport; docs/SCALE.md): the real agent subscribes at QoS 0 on a clean
// session, so NATS holds no JetStream consumer for it, and a command sent
// while it is away is lost rather than queued; the controller sends it again
// once the device is back online, and the rollout completes. The away is
// made certain: the agent is SIGKILLed, and a retained "online" published in
// its name makes the controller believe it is there when the rollout sends
// its install. resend_after is long, so only the resend on "online" can
// bring the device the command in time.
func TestCleanSessionDeviceThroughNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end rollout: a broker cluster and several processes")
	}
	nats := testbroker.StartNATSCluster(t, 3)
	b := build(t)
	urls := nats.URLs()
	f := startFleet(t, b, strings.Join(urls, ","), "rollouts: {resend_after: 10m}\n")
	dev := newClusterDevice(t, f, "gw-c", urls, "clean_session: true")
	online := func(want bool) func() bool {
		return func() bool {
			var d struct {
				Online bool `json:"online"`
			}
			return getJSON(t, f.admin+"/v1/devices/gw-c", &d) == 200 && d.Online == want
		}
	}
	noConsumer := func() {
		t.Helper()
		for i := range 3 {
			cs, err := nats.MQTTConsumers(i)
			require.NoError(t, err)
			assert.False(t, slices.ContainsFunc(cs, func(f string) bool { return strings.Contains(f, ".gw-c.") }),
				"n%d holds a JetStream consumer for the clean-session device: %q", i+1, cs)
		}
	}
	agent := startServe(t, b.agent, "--config", dev.config)
	poll(t, online(true), 60*time.Second, "the device never came online")
	noConsumer() // it subscribes before it says "online"

	require.NoError(t, agent.cmd.Process.Kill())
	<-agent.exited
	poll(t, online(false), 30*time.Second, "the controller never saw the killed device offline")
	topics, err := protocol.DeviceTopics("acme", "gw-c")
	require.NoError(t, err)
	impostor := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(urls[0]).SetClientID("stale-state").SetProtocolVersion(4))
	tok := impostor.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second) && tok.Error() == nil, "connect: %v", tok.Error())
	defer impostor.Disconnect(0)
	tok = impostor.Publish(topics.State, 1, true, protocol.StateOnline)
	require.True(t, tok.WaitTimeout(10*time.Second) && tok.Error() == nil, "publish: %v", tok.Error())
	poll(t, online(true), 30*time.Second, "the controller never took the stale online")

	f.cli(t, "models", "push", "--keys", f.keys, "--name", "face2", "--version", "1", testModel(t, "face_detection_full_range.tflite"))
	out := f.cli(t, "rollout", "create", "--model", "face2", "--version", "1", "--waves", "100")
	id := regexp.MustCompile(`rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)[1]
	type assignment struct {
		CommandID string `json:"command_id"`
		Sends     int    `json:"sends"`
		State     string `json:"state"`
	}
	var first assignment
	poll(t, func() bool {
		var as []assignment
		if getJSON(t, f.admin+"/v1/rollouts/"+id+"/devices", &as) != 200 || len(as) != 1 || as[0].CommandID == "" {
			return false
		}
		first = as[0]
		return true
	}, 30*time.Second, "no install sent to the device the controller believes online")
	require.Empty(t, first.State, "the device answered an install sent while it was away")

	agent = startServe(t, b.agent, "--config", dev.config)
	var as []assignment
	poll(t, func() bool {
		as = nil
		return getJSON(t, f.admin+"/v1/rollouts/"+id+"/devices", &as) == 200 && len(as) == 1 && as[0].State == "committed"
	}, 60*time.Second, "the device never committed the install (no command after it came back?)")
	status := f.cli(t, "rollout", "status", id)
	assert.Contains(t, status, "completed", status)
	assert.NotEqual(t, first.CommandID, as[0].CommandID, "the device committed the install sent while it was away")
	assert.GreaterOrEqual(t, as[0].Sends, 2)
	v, _ := served(t, agent, "face2")
	assert.Equal(t, "1", v)
	noConsumer()
}
