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
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fleetProc is a running `outpost-fleet serve` with its embedded broker.
type fleetProc struct {
	bin, keys, admin, mqtt string
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
		args = append(args, "--listen-mqtt", f.mqtt)
	}
	cmd := exec.Command(b.fleet, args...)
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
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
// ends; it returns the rollout's id and the last status.
func (f *fleetProc) rollout(t *testing.T, args ...string) (string, string) {
	t.Helper()
	out := f.cli(t, append([]string{"rollout", "create"}, args...)...)
	id := regexp.MustCompile(`rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)
	require.NotNil(t, id, "rollout create said %q", out)
	return id[1], f.cli(t, "rollout", "status", "--watch", "--interval", "200ms", id[1])
}

// device is a real outpost-agent provisioned for the fleet.
type device struct {
	name, config string
}

func newDevice(t *testing.T, f *fleetProc, name string) device {
	t.Helper()
	data := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.MkdirAll(data, 0o755))
	copyFile(t, filepath.Join(f.keys, "root.json"), filepath.Join(data, "root.json"))
	cfg := filepath.Join(filepath.Dir(data), "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, `
data_dir: %s
workers: 1
fleet: {broker: "tcp://%s", name: acme, device: %s, labels: {site: north}, probation: 1s, status_interval: 1s}
`, data, f.mqtt, name), 0o644))
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
	require.Eventually(t, func() bool {
		return strings.Count(f.cli(t, "devices", "list"), "gw-") == 3
	}, 60*time.Second, 200*time.Millisecond, "the devices never registered")

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
	require.Eventually(t, func() bool {
		v, _ := served(t, agents["gw-2"], "face")
		return v == "1"
	}, 90*time.Second, 200*time.Millisecond, "the device that was offline never caught up")

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
		require.Eventually(t, func() bool {
			v, _ := served(t, s, "face")
			return v == "3"
		}, 60*time.Second, 200*time.Millisecond, "%s never served v3", n)
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
	require.Eventually(t, func() bool {
		return strings.Count(f.cli(t, "devices", "list"), "gw-") == 2
	}, 60*time.Second, 200*time.Millisecond, "the devices never registered")
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
	status := f.cli(t, "rollout", "status", "--watch", "--interval", "200ms", id)
	assert.Contains(t, status, "completed", "rollout %s:\n%s", id, status)
	assert.Contains(t, status, "committed 2 of 2", status)
}
