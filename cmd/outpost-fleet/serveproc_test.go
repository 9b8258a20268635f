package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/models/manifest"
)

// The scaffolding of the tests that run the real binary: build it once,
// start `outpost-fleet serve` in a subprocess, run client commands.

// buildOnce builds outpost-fleet once per test binary.
var buildOnce = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "outpost-fleet-bin-*")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "outpost-fleet")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// serveOptions says how startServe runs serve.
type serveOptions struct {
	// Fleet is --fleet (empty: the config's or the default).
	Fleet string
	// Args are further serve flags (--config, --broker, ...).
	Args []string
	// NoWait returns without waiting for the admin API to answer over
	// plain HTTP (a TLS admin API is waited for by the test).
	NoWait bool
}

// fleetServer is a running `outpost-fleet serve` with a fresh keys and
// data directory; the test's cleanup kills it and shows its output when the
// test failed.
type fleetServer struct {
	dir   string
	keys  *keyring.Keyring
	mqtt  string // embedded broker address, host:port
	admin string // http://host:port
	cmd   *exec.Cmd
	logs  *lockedBuffer
	// exited receives serve's exit once; stop and the cleanup share it.
	exited chan error
}

// startServe runs serve from bin with its embedded broker on a free
// loopback port and the admin API on another.
func startServe(tb testing.TB, bin string, o serveOptions) *fleetServer {
	tb.Helper()
	dir := tb.TempDir()
	k, err := keyring.Init(filepath.Join(dir, "keys"), keyring.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	s := &fleetServer{dir: dir, keys: k, mqtt: testbroker.FreeAddr(tb), logs: &lockedBuffer{}, exited: make(chan error, 1)}
	adminAddr := testbroker.FreeAddr(tb)
	s.admin = "http://" + adminAddr
	args := []string{"serve", "--keys", k.Dir(), "--data-dir", filepath.Join(dir, "data"), "--listen-mqtt", s.mqtt, "--admin", adminAddr}
	if o.Fleet != "" {
		args = append(args, "--fleet", o.Fleet)
	}
	s.cmd = exec.Command(bin, append(args, o.Args...)...)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { s.exited <- s.cmd.Wait() }()
	tb.Cleanup(func() {
		_ = s.cmd.Process.Kill()
		err := <-s.exited
		s.exited <- err
		if tb.Failed() {
			tb.Logf("serve output:\n%s", s.logs.String())
		}
	})
	if !o.NoWait {
		waitHTTP(tb, s.admin+"/v1/health")
	}
	return s
}

// adminAddr is the admin API's host:port.
func (s *fleetServer) adminAddr() string { return strings.TrimPrefix(s.admin, "http://") }

// stop sends SIGTERM and returns serve's exit, failing the test if it does
// not stop within 30 s.
func (s *fleetServer) stop(tb testing.TB) error {
	tb.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		tb.Fatal(err)
	}
	select {
	case err := <-s.exited:
		s.exited <- err
		return err
	case <-time.After(30 * time.Second):
		tb.Fatal("serve did not stop after SIGTERM")
		return nil
	}
}

// cli runs the binary and returns its stdout and stderr, failing the test
// on an exit code other than wantCode.
func cli(t *testing.T, bin string, wantCode int, args ...string) string {
	t.Helper()
	stdout, stderr := cliEnv(t, bin, nil, wantCode, args...)
	return stdout + stderr
}

// cliEnv runs the binary with extra environment variables (and without
// OUTPOST_TOKEN and OUTPOST_CA from the test's own) and returns its stdout
// and stderr apart.
func cliEnv(t *testing.T, bin string, env []string, wantCode int, args ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OUTPOST_TOKEN=") && !strings.HasPrefix(kv, "OUTPOST_CA=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if code != wantCode {
		t.Fatalf("outpost-fleet %s: exit %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, wantCode, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String()
}

func waitHTTP(tb testing.TB, url string) {
	tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s did not answer: %v", url, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lockedBuffer collects a subprocess's output safely.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pushRandomModel signs a random "model" of size bytes as face version 1
// and pushes it through the admin API at admin (the controller checks the
// signed manifest, not TFLite).
func pushRandomModel(tb testing.TB, admin string, k *keyring.Keyring, size int) (sha string) {
	tb.Helper()
	model := make([]byte, size)
	_, _ = rand.Read(model)
	sum := sha256.Sum256(model)
	rel, err := k.SignRelease(manifest.Manifest{Name: "face", Version: 1, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(model)), Runtime: "tflite",
		Inputs:  []manifest.Tensor{{Name: "in", DataType: "FP32", Shape: []int{1}}},
		Outputs: []manifest.Tensor{{Name: "out", DataType: "FP32", Shape: []int{1}}}}, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	w, _ := mw.CreateFormFile("release", "release.json")
	w.Write(rel)
	w, _ = mw.CreateFormFile("model", "model.tflite")
	w.Write(model)
	mw.Close()
	resp, err := http.Post(admin+"/v1/models", mw.FormDataContentType(), &body)
	if err != nil || resp.StatusCode != http.StatusCreated {
		tb.Fatalf("push: %v %v", resp, err)
	}
	resp.Body.Close()
	return hex.EncodeToString(sum[:])
}

// startSims runs n simulated devices named prefix-0000... in this process,
// device i on brokers[i%len(brokers)], until the test ends; tmpl gives the
// options beside broker, fleet, name and trust root.
func startSims(tb testing.TB, n int, brokers []string, fleet, prefix string, k *keyring.Keyring, tmpl simdevice.Options) []*simdevice.Agent {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tb.Cleanup(func() { cancel(); wg.Wait() })
	sims := make([]*simdevice.Agent, n)
	for i := range n {
		o := tmpl
		o.Broker, o.Fleet, o.Device, o.Root = brokers[i%len(brokers)], fleet, fmt.Sprintf("%s-%04d", prefix, i), k.Root()
		a, err := simdevice.New(o)
		if err != nil {
			tb.Fatal(err)
		}
		sims[i] = a
		wg.Go(func() { _ = a.Run(ctx) })
	}
	return sims
}

// rolloutReport is what the admin API says of a rollout.
type rolloutReport struct {
	ID        string `json:"id"`
	State     string `json:"state"`
	Committed int    `json:"committed"`
}

// createRollout starts a rollout of face version 1 in waves through the
// admin API at admin; extra fields join the request (bake, ...).
func createRollout(tb testing.TB, admin string, waves []int, extra map[string]any) rolloutReport {
	tb.Helper()
	req := map[string]any{"model": "face", "version": 1, "waves": waves}
	for k, v := range extra {
		req[k] = v
	}
	b, _ := json.Marshal(req)
	resp, err := http.Post(admin+"/v1/rollouts", "application/json", bytes.NewReader(b))
	if err != nil || resp.StatusCode != http.StatusCreated {
		tb.Fatalf("rollout create: %v %v", resp, err)
	}
	defer resp.Body.Close()
	var rep rolloutReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		tb.Fatal(err)
	}
	return rep
}

// procMem reads VmHWM and VmRSS of a process.
func procMem(tb testing.TB, pid int) (peak, rss int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Logf("no /proc: %v", err)
		return 0, 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fs[1], 10, 64)
		switch fs[0] {
		case "VmHWM:":
			peak = v << 10
		case "VmRSS:":
			rss = v << 10
		}
	}
	return peak, rss
}

// procCPU reads the user plus system CPU time a process has used.
func procCPU(tb testing.TB, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Logf("no /proc: %v", err)
		return 0
	}
	// The command name, field 2, is in parentheses and may hold spaces:
	// count the fields after its closing one (utime and stime are the
	// 14th and 15th of the line).
	fs := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(fs) < 13 {
		tb.Logf("/proc/%d/stat: short", pid)
		return 0
	}
	ut, _ := strconv.ParseInt(fs[11], 10, 64)
	st, _ := strconv.ParseInt(fs[12], 10, 64)
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go runs on.
const clockTicks = 100

func getJSON(tb testing.TB, url string, out any) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		tb.Fatalf("%s: %v", url, err)
	}
}

// replica is one `outpost-fleet serve` of a replicated controller.
type replica struct {
	id    string
	admin string // http://host:port
	cmd   *exec.Cmd
	logs  *lockedBuffer
	dead  chan struct{} // closed when the process has exited
}

// replicaOptions say how startReplica runs serve.
type replicaOptions struct {
	Fleet string
	// Store is --store (a PostgreSQL URL), Brokers the external broker's
	// node URLs.
	Store   string
	Brokers []string
	// Keys are shared by every replica.
	Keys *keyring.Keyring
	// Config is the text of its fleet.yaml.
	Config string
	// Args are further serve flags.
	Args []string
}

// startReplica runs serve as replica id with its own data directory and
// admin address, and waits until its admin API answers; the test's cleanup
// kills it and shows its output when the test failed.
func startReplica(t *testing.T, bin, id string, o replicaOptions) *replica {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(cfg, []byte(o.Config), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := testbroker.FreeAddr(t)
	r := &replica{id: id, admin: "http://" + addr, logs: &lockedBuffer{}, dead: make(chan struct{})}
	args := append([]string{"serve", "--config", cfg, "--keys", o.Keys.Dir(), "--data-dir", filepath.Join(dir, "data"), "--store", o.Store,
		"--broker", strings.Join(o.Brokers, ","), "--admin", addr, "--fleet", o.Fleet, "--replica-id", id}, o.Args...)
	r.cmd = exec.Command(bin, args...)
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.cmd.Wait(); close(r.dead) }()
	t.Cleanup(func() {
		_ = r.cmd.Process.Kill()
		<-r.dead
		if t.Failed() {
			t.Logf("replica %s output:\n%s", id, r.logs.String())
		}
	})
	waitHTTP(t, r.admin+"/v1/health")
	return r
}
