package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fleetProc is a running `outpost-fleet serve` with its embedded broker.
type fleetProc struct {
	bin, keys, admin, mqtt string
	// embedded: the controller runs its own broker, and devices are
	// enrolled (the broker then confines each to its own topics).
	embedded bool
}

// syncBuffer is a bytes.Buffer safe for a process writing while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// dumpOnFailure asks a process of a failed test for its goroutines
// (SIGQUIT: the Go runtime prints them to stderr and exits), so that a
// stall shows where it stood; exited closes when the process has.
func dumpOnFailure(t *testing.T, p *os.Process, exited <-chan struct{}) {
	if !t.Failed() || p.Signal(syscall.SIGQUIT) != nil {
		return
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
	}
}

// startFleet runs the controller: with its embedded broker when broker is
// empty, else on that external broker; extraYAML goes into its fleet.yaml.
func startFleet(t *testing.T, b bins, broker, extraYAML string) *fleetProc {
	t.Helper()
	dir := t.TempDir()
	f := &fleetProc{bin: b.fleet, keys: filepath.Join(dir, "keys")}
	adminAddr := testbroker.FreeAddr(t)
	f.admin = "http://" + adminAddr
	r := run(t, nil, b.fleet, "keys", "init", "--dir", f.keys)
	require.Zero(t, r.code, r.stderr)
	cfg := filepath.Join(dir, "fleet.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("fleet: acme\n"+extraYAML), 0o600))
	args := []string{"serve", "--config", cfg, "--keys", f.keys, "--data-dir", filepath.Join(dir, "data"), "--admin", adminAddr}
	if broker != "" {
		f.mqtt = strings.TrimPrefix(broker, "tcp://")
		args = append(args, "--broker", broker)
	} else {
		f.mqtt = testbroker.FreeAddr(t)
		f.embedded = true
		args = append(args, "--listen-mqtt", f.mqtt)
	}
	cmd := exec.Command(b.fleet, args...)
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		dumpOnFailure(t, cmd.Process, done)
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("outpost-fleet serve:\n%s", logs.String())
		}
	})
	require.Eventually(t, func() bool {
		resp, err := http.Get(f.admin + "/v1/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 60*time.Second, 50*time.Millisecond, "the controller never answered")
	return f
}

// cli runs an outpost-fleet client command against the controller.
func (f *fleetProc) cli(t *testing.T, args ...string) string {
	t.Helper()
	r := run(t, nil, f.bin, append(args, "--admin", f.admin)...)
	require.Zero(t, r.code, "outpost-fleet %s:\n%s%s", strings.Join(args, " "), r.stdout, r.stderr)
	return r.stdout + r.stderr
}

// rollout creates a rollout and follows it with status --watch until it
// ends (exit 0 when it completed, 1 when it halted or was aborted); it
// returns the rollout's id and its final status table.
func (f *fleetProc) rollout(t *testing.T, args ...string) (string, string) {
	t.Helper()
	out := f.cli(t, append([]string{"rollout", "create"}, args...)...)
	id := regexp.MustCompile(`rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)
	require.NotNil(t, id, "rollout create said %q", out)
	r := run(t, nil, f.bin, "rollout", "status", "--watch", "--interval", "200ms", id[1], "--admin", f.admin)
	status := f.cli(t, "rollout", "status", id[1])
	want := 1
	if strings.Contains(status, " completed ") {
		want = 0
	}
	require.Equal(t, want, r.code, "rollout status --watch:\n%s%s\nfinal status:\n%s", r.stdout, r.stderr, status)
	return id[1], status
}

// device is a real outpost-agent provisioned for the fleet.
type device struct {
	name, config string
}

func newDevice(t *testing.T, f *fleetProc, name string) device {
	t.Helper()
	// Nobody sends these devices requests: probation ends at its maximum.
	return newDeviceProbation(t, f, name, "probation: 1s, probation_max: 2s")
}

// newDeviceProbation is newDevice with the probation keys of agent.yaml's
// fleet section.
func newDeviceProbation(t *testing.T, f *fleetProc, name, probation string) device {
	t.Helper()
	data := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.MkdirAll(data, 0o755))
	copyFile(t, filepath.Join(f.keys, "root.json"), filepath.Join(data, "root.json"))
	cfg := filepath.Join(filepath.Dir(data), "agent.yaml")
	login := ""
	if f.embedded {
		pw := filepath.Join(filepath.Dir(data), "broker.password")
		f.cli(t, "devices", "enroll", "--out", pw, name)
		login = fmt.Sprintf("username: %s, password_file: %s, ", name, pw)
	}
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, `
data_dir: %s
workers: 1
fleet: {broker: "tcp://%s", name: acme, device: %s, %slabels: {site: north}, %s, status_interval: 1s}
`, data, f.mqtt, name, login, probation), 0o644))
	return device{name: name, config: cfg}
}

// served returns the version and digest s serves model under, or "" if none.
func served(t *testing.T, s *serving, model string) (version, digest string) {
	t.Helper()
	resp, err := http.Get(s.url + "/v2/models/" + model)
	require.NoError(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return "", ""
	}
	var m struct {
		Versions   []string       `json:"versions"`
		Parameters map[string]any `json:"parameters"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&m))
	d, _ := m.Parameters["model_digest"].(string)
	if len(m.Versions) == 0 {
		return "", d
	}
	return m.Versions[len(m.Versions)-1], d
}

// A fleet of real agents, as separate processes, on the controller's
// embedded broker: a rollout in two waves reaches every online device, which
// then serves and answers predictions with the new version; a device that
// was offline during the rollout catches up when it returns; a version that
// fails validation on the devices (the selfie model's unresolved op) halts
// its rollout while every device goes on serving the version it had.
func TestFleetRollout(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end rollout: several processes for a minute")
	}
	b := build(t)
	f := startFleet(t, b, "", "")
	devs := []device{newDevice(t, f, "gw-0"), newDevice(t, f, "gw-1"), newDevice(t, f, "gw-2")}
	agents := map[string]*serving{}
	for _, d := range devs {
		agents[d.name] = startServe(t, b.agent, "--config", d.config)
	}
	pollEvery(t, 200*time.Millisecond, func() bool {
		return strings.Count(f.cli(t, "devices", "list"), "gw-") == 3
	}, 60*time.Second, "the devices never registered")

	// gw-2 goes offline before the rollout.
	require.NoError(t, agents["gw-2"].cmd.Process.Kill())
	<-agents["gw-2"].exited

	out := f.cli(t, "models", "push", "--keys", f.keys, "--name", "face", "--version", "1", testModel(t, "face_detection_short_range.tflite"))
	require.Contains(t, out, "pushed face v1")
	// A wave passes only on commits of its own devices; when gw-2 is alone
	// in wave 2 (its cohort ranks last), that wave times out and the
	// rollout continues, as chosen here.
	id, status := f.rollout(t, "--model", "face", "--version", "1", "--selector", "site=north", "--waves", "50,100", "--max-failure-ratio", "0.4",
		"--wave-timeout", "30s", "--on-wave-timeout", "continue")
	require.Contains(t, status, "completed", "rollout %s:\n%s", id, status)
	for _, n := range []string{"gw-0", "gw-1"} {
		v, digest := served(t, agents[n], "face")
		assert.Equal(t, "1", v, n)
		assert.True(t, strings.HasPrefix(digest, "sha256:"), n)
		resp, err := http.Post(agents[n].url+"/v2/models/face/infer", "application/json", strings.NewReader(faceJSON))
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, 200, resp.StatusCode, n)
		assert.Contains(t, string(body), `"model_version":"1"`, n)
	}

	// gw-2 comes back and catches up.
	agents["gw-2"] = startServe(t, b.agent, "--config", devs[2].config)
	pollEvery(t, 200*time.Millisecond, func() bool {
		v, _ := served(t, agents["gw-2"], "face")
		return v == "1"
	}, 90*time.Second, "the device that was offline never caught up")

	// Version 2 cannot run on the devices: validation fails, the rollout
	// halts, nothing stops serving version 1.
	f.cli(t, "models", "push", "--keys", f.keys, "--name", "face", "--version", "2", testModel(t, "selfie_segmentation.tflite"))
	id, status = f.rollout(t, "--model", "face", "--version", "2", "--waves", "100", "--max-failure-ratio", "0.1")
	assert.Contains(t, status, "halted", "rollout %s:\n%s", id, status)
	for n, s := range agents {
		v, _ := served(t, s, "face")
		assert.Equal(t, "1", v, n)
	}
	devices := f.cli(t, "devices", "list")
	assert.Contains(t, devices, "face v2 failed")

	// Version 3 goes out while gw-1 dies halfway through its download (it
	// SIGKILLs itself there); restarted, it resumes and the rollout ends.
	require.NoError(t, agents["gw-1"].cmd.Process.Kill())
	<-agents["gw-1"].exited
	agents["gw-1"] = startServeEnv(t, b.agent, []string{"OUTPOST_CRASHPOINT=updater-chunk"}, "--config", devs[1].config)
	f.cli(t, "models", "push", "--keys", f.keys, "--name", "face", "--version", "3", testModel(t, "face_detection_full_range.tflite"))
	out = f.cli(t, "rollout", "create", "--model", "face", "--version", "3", "--waves", "100", "--max-failure-ratio", "0.4")
	id = regexp.MustCompile(`rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)[1]
	select {
	case <-agents["gw-1"].exited:
	case <-time.After(90 * time.Second):
		t.Fatal("gw-1 never reached its crash point")
	}
	agents["gw-1"] = startServe(t, b.agent, "--config", devs[1].config)
	status = f.cli(t, "rollout", "status", "--watch", "--interval", "200ms", id)
	assert.Contains(t, status, "completed", "rollout %s:\n%s", id, status)
	for n, s := range agents {
		pollEvery(t, 200*time.Millisecond, func() bool {
			v, _ := served(t, s, "face")
			return v == "3"
		}, 60*time.Second, fmt.Sprintf("%s never served v3", n))
	}
	t.Logf("devices:\n%s", f.cli(t, "devices", "list"))
}

// faceJSON is a v2 JSON request for face_detection_short_range.
var faceJSON = `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"data":[` +
	strings.Repeat("0.5,", 128*128*3-1) + `0.5]}]}`

// The same through a real Mosquitto, killed in the middle of the transfer
// and started again: the devices resume their downloads and the rollout
// completes.
func TestFleetRolloutThroughMosquittoRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end rollout: several processes")
	}
	b := build(t)
	mq := testbroker.StartMosquitto(t, "")
	// Small, slow chunks, so the transfer is still going when the broker dies.
	f := startFleet(t, b, mq.URL(), "artifacts: {chunk_size: 16384, bytes_per_second: 262144}\n")
	devs := []device{newDevice(t, f, "gw-0"), newDevice(t, f, "gw-1")}
	for _, d := range devs {
		startServe(t, b.agent, "--config", d.config)
	}
	pollEvery(t, 200*time.Millisecond, func() bool {
		return strings.Count(f.cli(t, "devices", "list"), "gw-") == 2
	}, 60*time.Second, "the devices never registered")
	f.cli(t, "models", "push", "--keys", f.keys, "--name", "face", "--version", "1", testModel(t, "face_detection_full_range.tflite"))
	out := f.cli(t, "rollout", "create", "--model", "face", "--version", "1", "--waves", "100", "--max-failure-ratio", "0.5")
	id := regexp.MustCompile(`rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)[1]
	require.Eventually(t, func() bool {
		resp, err := http.Get(f.admin + "/v1/rollouts/" + id + "/devices")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var devs []struct {
			State string `json:"state"`
		}
		if json.NewDecoder(resp.Body).Decode(&devs) != nil {
			return false
		}
		for _, d := range devs {
			if d.State == "downloading" {
				return true
			}
		}
		return false
	}, 60*time.Second, 20*time.Millisecond, "no device started downloading")
	mq.Kill()
	time.Sleep(time.Second)
	mq.Start()
	watch := f.cli(t, "rollout", "status", "--watch", "--interval", "200ms", id)
	assert.Contains(t, watch, "completed", "rollout %s:\n%s", id, watch)
	status := f.cli(t, "rollout", "status", id)
	assert.Contains(t, status, "committed 2 of 2", status)
}

// watched is one message a test subscriber saw, with when it arrived.
type watched struct {
	topic   string
	payload []byte
	at      time.Time
}

// watcher records what the real agent publishes on the broker: acks,
// chunk requests and its state, as an outside observer (a plain MQTT
// client) sees them.
type watcher struct {
	mu   sync.Mutex // guards msgs
	msgs []watched
}

func watch(t *testing.T, broker string, filters ...string) *watcher {
	t.Helper()
	w := &watcher{}
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID("test-watcher").SetCleanSession(true).SetAutoReconnect(true)
	c := mqtt.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second), "watcher connect timed out")
	require.NoError(t, tok.Error())
	t.Cleanup(func() { c.Disconnect(100) })
	for _, f := range filters {
		tok := c.Subscribe(f, 1, func(_ mqtt.Client, m mqtt.Message) {
			w.mu.Lock()
			w.msgs = append(w.msgs, watched{topic: m.Topic(), payload: append([]byte(nil), m.Payload()...), at: time.Now()})
			w.mu.Unlock()
		})
		require.True(t, tok.WaitTimeout(10*time.Second), "subscribe %s timed out", f)
		require.NoError(t, tok.Error())
	}
	return w
}

// since returns the messages on topic from index from on, and the count of
// every message so far.
func (w *watcher) since(from int, topic string) ([]watched, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []watched
	for _, m := range w.msgs[min(from, len(w.msgs)):] {
		if m.topic == topic {
			out = append(out, m)
		}
	}
	return out, len(w.msgs)
}

// poll checks cond in the test's goroutine (it may use require) every
// 10 ms until it holds, failing after timeout.
func poll(t *testing.T, cond func() bool, timeout time.Duration, msg string) {
	t.Helper()
	pollEvery(t, 10*time.Millisecond, cond, timeout, msg)
}

// pollEvery is poll asking every every. Unlike require.Eventually, it asks
// in the test's goroutine, so cond may use require and the test's helpers,
// and no ask is left running when it returns.
func pollEvery(t *testing.T, every time.Duration, cond func() bool, timeout time.Duration, msg string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, msg)
		}
		time.Sleep(every)
	}
}

// The download promises of docs/PROTOCOL.md, seen from the broker with the
// real agent and controller on a real Mosquitto, for a model smaller than
// any batch of progress marks (225 KiB in 16 KiB chunks): progress acks
// come during the download; a device killed (SIGKILL) half way asks, as
// soon as it is connected again, for the chunks after those its last
// progress ack reported, never from chunk 0; and the rollout completes.
func TestDownloadPromisesThroughMosquitto(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end rollout: several processes")
	}
	b := build(t)
	mq := testbroker.StartMosquitto(t, "")
	const chunk = 16384
	// Slow chunks (2 a second), so the transfer is still going when the
	// device is killed.
	f := startFleet(t, b, mq.URL(), "artifacts: {chunk_size: 16384, bytes_per_second: 32768}\n")
	w := watch(t, mq.URL(), "outpost/v1/acme/gw-0/ack", "outpost/v1/acme/gw-0/state", "outpost/v1/acme/artifacts/req")
	dev := newDeviceProbation(t, f, "gw-0", "probation: 1s, probation_min_requests: 5, probation_max: 10m")
	agent := startServe(t, b.agent, "--config", dev.config)
	poll(t, func() bool {
		return strings.Contains(f.cli(t, "devices", "list"), "gw-0")
	}, 60*time.Second, "the device never registered")
	model := testModel(t, "face_detection_short_range.tflite")
	st, err := os.Stat(model)
	require.NoError(t, err)
	require.Less(t, st.Size(), int64(256<<10))
	f.cli(t, "models", "push", "--keys", f.keys, "--name", "face", "--version", "1", model)
	out := f.cli(t, "rollout", "create", "--model", "face", "--version", "1", "--waves", "100")
	id := regexp.MustCompile(`rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)[1]

	// Progress acks while downloading; kill the device once one says at
	// least 3 chunks are held.
	var held int64
	poll(t, func() bool {
		acks, _ := w.since(0, "outpost/v1/acme/gw-0/ack")
		for _, m := range acks {
			var a struct {
				State    string `json:"state"`
				Progress int64  `json:"progress_bytes"`
			}
			if json.Unmarshal(m.payload, &a) == nil && a.State == "downloading" && a.Progress >= 3*chunk {
				held = a.Progress
				return true
			}
		}
		return false
	}, 60*time.Second, "no progress ack during the download")
	// The controller's admin API shows the progress too.
	poll(t, func() bool {
		var devs []struct {
			State    string `json:"state"`
			Progress int64  `json:"progress_bytes"`
		}
		return getJSON(t, f.admin+"/v1/rollouts/"+id+"/devices", &devs) == 200 && len(devs) == 1 && devs[0].Progress > 0
	}, 30*time.Second, "the controller never saw download progress")
	require.NoError(t, agent.cmd.Process.Kill())
	<-agent.exited
	_, mark := w.since(0, "")

	agent = startServe(t, b.agent, "--config", dev.config)
	var online time.Time
	poll(t, func() bool {
		states, _ := w.since(mark, "outpost/v1/acme/gw-0/state")
		for _, m := range states {
			if string(m.payload) == "online" {
				online = m.at
				return true
			}
		}
		return false
	}, 60*time.Second, "the restarted device never came online")
	var first watched
	var req struct {
		Device string `json:"device"`
		First  int64  `json:"first"`
	}
	poll(t, func() bool {
		reqs, _ := w.since(mark, "outpost/v1/acme/artifacts/req")
		for _, m := range reqs {
			if json.Unmarshal(m.payload, &req) == nil && req.Device == "gw-0" {
				first = m
				return true
			}
		}
		return false
	}, 60*time.Second, "the restarted device never asked for chunks")
	require.GreaterOrEqual(t, req.First*chunk, held, "asked from chunk %d after a progress ack of %d bytes", req.First, held)
	// Before this version a restarted device asked only after its chunk
	// timeout (10 s), its first request having gone nowhere.
	wait := first.at.Sub(online)
	require.Less(t, wait, 10*time.Second, "the restarted device waited %s before asking", wait)

	// Probation needs 5 requests: once it began, clients send them, one at
	// a time, until the committed ack (at most 600 requests).
	var committed struct {
		State    string `json:"state"`
		Verified bool   `json:"verified"`
		Requests int64  `json:"probation_requests"`
	}
	reached := func(state string) func() bool {
		return func() bool {
			acks, _ := w.since(mark, "outpost/v1/acme/gw-0/ack")
			for _, m := range acks {
				if json.Unmarshal(m.payload, &committed) == nil && committed.State == state {
					return true
				}
			}
			return false
		}
	}
	// The probation ack comes while probation lasts, not with the commit.
	poll(t, reached("probation"), 120*time.Second, "no probation ack")
	done := reached("committed")
	sent := 0
	for ; sent < 600 && !done(); sent++ {
		resp, err := http.Post(agent.url+"/v2/models/face/infer", "application/json", strings.NewReader(faceJSON))
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
	}
	poll(t, done, 30*time.Second, "no committed ack")
	assert.True(t, committed.Verified, "committed without verification after %d requests", sent)
	assert.GreaterOrEqual(t, committed.Requests, int64(5))
	status := f.cli(t, "rollout", "status", "--watch", "--interval", "200ms", id)
	assert.Contains(t, status, "completed", "rollout %s:\n%s", id, status)
	t.Logf("committed verified after %d probation requests (%d sent)", committed.Requests, sent)
	t.Logf("killed with %d bytes acked; after the restart it asked from chunk %d, %s after coming online", held, req.First, wait.Round(time.Millisecond))
}
