package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
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

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/models/testmodel"
)

// TestFleetSplit: the fleet never imports the agent (ARCHITECTURE.md).
func TestFleetSplit(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-test", "github.com/outpost-edge/outpost/fleet/...", "github.com/outpost-edge/outpost/cmd/outpost-fleet").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/outpost-edge/outpost/agent") {
			t.Errorf("the fleet depends on %s", p)
		}
	}
	if !strings.Contains(string(out), "github.com/outpost-edge/outpost/fleet/controller") {
		t.Fatalf("go list did not list the fleet packages:\n%s", out)
	}
}

// buildBinary builds outpost-fleet once per test binary.
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

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// cli runs the binary and returns its stdout, failing the test on a
// non-zero exit unless wantCode says otherwise.
func cli(t *testing.T, bin string, wantCode int, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
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
	return stdout.String() + stderr.String()
}

// TestServeAndClientCommands runs the real binary: serve with its embedded
// broker, models push of a real model, models list, a rollout to three
// simulated devices followed with rollout status --watch, then pause,
// resume and abort of a second rollout, devices list, and a clean SIGTERM.
func TestServeAndClientCommands(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	cli(t, bin, 0, "keys", "init", "--dir", keys)
	mqttAddr, adminAddr := freeAddr(t), freeAddr(t)
	admin := "http://" + adminAddr
	cfg := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(cfg, []byte("fleet: acme\nlog_level: debug\nartifacts:\n  chunk_size: 32768\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := exec.Command(bin, "serve", "--config", cfg, "--keys", keys, "--data-dir", filepath.Join(dir, "data"),
		"--listen-mqtt", mqttAddr, "--admin", adminAddr)
	var logs lockedBuffer
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		_ = srv.Process.Kill()
		if t.Failed() {
			t.Logf("serve output:\n%s", logs.String())
		}
	})
	waitHTTP(t, admin+"/v1/health")

	model := testmodel.Path(t, testmodel.FaceShort)
	out := cli(t, bin, 0, "models", "push", "--admin", admin, "--keys", keys, "--name", "face", "--version", "1", model)
	if !strings.Contains(out, "pushed face v1 sha256:") {
		t.Fatalf("push output %q", out)
	}
	cli(t, bin, 0, "models", "push", "--admin", admin, "--keys", keys, "--name", "face", "--version", "2", model)
	if out := cli(t, bin, 0, "models", "list", "--admin", admin); !strings.Contains(out, "face  2") || !strings.Contains(out, "face  1") {
		t.Fatalf("models list:\n%s", out)
	}
	// Pushing v1 again under the same number with other bytes is refused.
	cli(t, bin, 1, "models", "push", "--admin", admin, "--keys", keys, "--name", "face", "--version", "1", testmodel.Path(t, testmodel.Hand))
	cli(t, bin, 2, "rollout", "create", "--admin", admin, "--model", "face")
	if out := cli(t, bin, 1, "rollout", "create", "--admin", admin, "--model", "face", "--version", "9"); !strings.Contains(out, "not found") {
		t.Fatalf("rollout of an unknown version: %q", out)
	}

	// Three simulated devices on the binary's embedded broker.
	k, err := keyring.Open(keys, keyring.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var agents []*simdevice.Agent
	for i := range 3 {
		a, err := simdevice.New(simdevice.Options{Broker: "tcp://" + mqttAddr, Fleet: "acme", Device: fmt.Sprintf("gw-%d", i),
			Root: k.Root(), Labels: map[string]string{"site": "north"}})
		if err != nil {
			t.Fatal(err)
		}
		agents = append(agents, a)
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(cli(t, bin, 0, "devices", "list", "--admin", admin), "gw-2") {
		if time.Now().After(deadline) {
			t.Fatal("devices never showed up in devices list")
		}
		time.Sleep(200 * time.Millisecond)
	}

	out = cli(t, bin, 0, "rollout", "create", "--admin", admin, "--model", "face", "--version", "1", "--selector", "site=north", "--waves", "50,100", "--max-failure-ratio", "0.2")
	id := regexp.MustCompile(`rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)
	if id == nil {
		t.Fatalf("rollout create output %q", out)
	}
	out = cli(t, bin, 0, "rollout", "status", "--admin", admin, "--watch", "--interval", "200ms", id[1])
	if !strings.Contains(out, "completed") || !strings.Contains(out, "committed 3 of 3") {
		t.Fatalf("rollout status --watch ended with:\n%s", out)
	}
	for _, a := range agents {
		if a.Running("face") != 1 {
			t.Fatalf("a device runs face v%d after the rollout", a.Running("face"))
		}
	}

	if !strings.Contains(out, "GATE") || !strings.Contains(out, "VERIFIED") || !strings.Contains(out, "passed") {
		t.Fatalf("rollout status shows no gates or verified commits:\n%s", out)
	}
	cli(t, bin, 2, "rollout", "create", "--admin", admin, "--model", "face", "--version", "2", "--on-wave-timeout", "continue")
	out = cli(t, bin, 0, "rollout", "create", "--admin", admin, "--model", "face", "--version", "2", "--waves", "50,100", "--bake", "1h",
		"--require-verified", "--probation-min-requests", "10", "--probation-max", "30s", "--wave-timeout", "1h", "--on-wave-timeout", "continue")
	if !strings.Contains(out, "wave timeout 1h0m0s (continue)") || !strings.Contains(out, "verified commits only") {
		t.Fatalf("rollout create with gates: %q", out)
	}
	id2 := regexp.MustCompile(`rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)[1]
	if out := cli(t, bin, 0, "rollout", "pause", "--admin", admin, id2); !strings.Contains(out, "paused") {
		t.Fatalf("pause: %q", out)
	}
	if out := cli(t, bin, 0, "rollout", "resume", "--admin", admin, id2); !strings.Contains(out, "running") {
		t.Fatalf("resume: %q", out)
	}
	if out := cli(t, bin, 0, "rollout", "abort", "--admin", admin, "--reason", "test", id2); !strings.Contains(out, "aborted") {
		t.Fatalf("abort: %q", out)
	}
	cli(t, bin, 1, "rollout", "resume", "--admin", admin, id2)
	cli(t, bin, 1, "rollout", "pause", "--admin", admin, "r-nope")
	if out := cli(t, bin, 0, "rollout", "status", "--admin", admin); !strings.Contains(out, id[1]) || !strings.Contains(out, "superseded") || !strings.Contains(out, "aborted") {
		t.Fatalf("rollout status:\n%s", out)
	}
	// After the abort every device is back on v1.
	deadline = time.Now().Add(60 * time.Second)
	for _, a := range agents {
		for a.Running("face") != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("a device runs face v%d after the abort", a.Running("face"))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("serve exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop after SIGTERM")
	}
}

func waitHTTP(t testing.TB, url string) {
	t.Helper()
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
			t.Fatalf("%s did not answer: %v", url, err)
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

func TestServeUsage(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("fleet: x\nbrokr: typo\n"), 0o600)
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("fleet: acme\nartifacts:\n  chunk_size: 1024\nrollouts:\n  command_ttl: 2h\n"), 0o600)
	tests := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"serve"}, 2, "--keys"},
		{[]string{"serve", "--keys", dir, "--config", bad}, 2, "brokr"},
		{[]string{"serve", "--keys", dir, "--config", filepath.Join(dir, "missing.yaml")}, 2, "missing.yaml"},
		{[]string{"rollout", "create", "--model", "m", "--version", "1", "--waves", "ten"}, 2, "--waves"},
		{[]string{"rollout", "create", "--model", "m", "--version", "1", "--selector", "site"}, 2, "selector"},
		{[]string{"rollout", "pause"}, 2, "rollout id"},
		{[]string{"models", "list", "--admin", "http://127.0.0.1:1"}, 1, "serve running"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := program.Dispatch(context.Background(), tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stdout.String()+stderr.String(), tt.want) {
			t.Errorf("%v: exit %d, want %d; output %q should contain %q", tt.args, code, tt.code, stdout.String()+stderr.String(), tt.want)
		}
	}
	cfg, err := loadFleetConfig(good)
	if err != nil || cfg.Fleet != "acme" || cfg.Artifacts.ChunkSize != 1024 || cfg.Rollouts.CommandTTL != 2*time.Hour || cfg.Admin != "127.0.0.1:8490" {
		t.Fatalf("config %+v, %v", cfg, err)
	}
}
