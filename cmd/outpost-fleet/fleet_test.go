package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
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

// TestServeAndClientCommands runs the real binary: serve with its embedded
// broker, models push of a real model, models list, a rollout to three
// simulated devices followed with rollout status --watch, then pause,
// resume and abort of a second rollout, devices list, and a clean SIGTERM.
func TestServeAndClientCommands(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(cfg, []byte("fleet: acme\nlog_level: debug\nartifacts:\n  chunk_size: 32768\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, bin, serveOptions{Args: []string{"--config", cfg}})
	admin, keys, mqttAddr, k := srv.admin, srv.keys.Dir(), srv.mqtt, srv.keys

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
	// Not on a terminal, --watch prints a line per change, never the
	// table, and ends with the completed rollout: exit 0.
	out, _ = cliEnv(t, bin, nil, 0, "rollout", "status", "--admin", admin, "--watch", "--interval", "200ms", id[1])
	lines := strings.Split(strings.TrimSpace(out), "\n")
	last := lines[len(lines)-1]
	if !strings.Contains(last, "completed") || !strings.Contains(last, "committed 3/3") || strings.Contains(last, "moved 0 B") || strings.Contains(out, "GATE") {
		t.Fatalf("rollout status --watch ended with:\n%s", out)
	}
	for i := 1; i < len(lines); i++ {
		if _, a, _ := strings.Cut(lines[i-1], " "); strings.HasSuffix(lines[i], a) {
			t.Fatalf("rollout status --watch printed a line that did not change:\n%s", out)
		}
	}
	var rep rollout.Report
	if err := json.Unmarshal([]byte(cli(t, bin, 0, "rollout", "status", "--admin", admin, "-o", "json", id[1])), &rep); err != nil ||
		rep.State != registry.RolloutCompleted || rep.BytesMoved < 3*modelSize(t, model) {
		t.Fatalf("rollout status -o json: %+v, %v", rep, err)
	}
	// On a terminal (script(1) gives the command one) it draws the table.
	if out := onTerminal(t, bin, "rollout", "status", "--admin", admin, "--watch", id[1]); !strings.Contains(out, "GATE") || !strings.Contains(out, "completed") {
		t.Fatalf("rollout status --watch on a terminal: %q", out)
	}
	out = cli(t, bin, 0, "rollout", "status", "--admin", admin, id[1])
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
		"--require-verified", "--probation-min-requests", "10", "--probation-max", "30s", "--wave-timeout", "1h", "--on-wave-timeout", "continue",
		"--rate", "60", "--rate-factor", "2", "--rate-every", "5", "--rate-max", "600")
	if !strings.Contains(out, "wave timeout 1h0m0s (continue)") || !strings.Contains(out, "verified commits only") ||
		!strings.Contains(out, "rate 60 devices/min (from 60, x2 every 5 successes, up to 600)") {
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
	if out := cli(t, bin, 1, "rollout", "status", "--admin", admin, "--watch", id2); !strings.Contains(out, "rollout "+id2+" aborted: test") {
		t.Fatalf("rollout status --watch of an aborted rollout: %q", out)
	}
	// -o json on the lists.
	var ms []map[string]any
	if err := json.Unmarshal([]byte(cli(t, bin, 0, "models", "list", "--admin", admin, "-o", "json")), &ms); err != nil || len(ms) != 2 {
		t.Fatalf("models list -o json: %+v, %v", ms, err)
	}
	var ds []registry.Device
	if err := json.Unmarshal([]byte(cli(t, bin, 0, "devices", "list", "--admin", admin, "-o", "json")), &ds); err != nil || len(ds) != 3 {
		t.Fatalf("devices list -o json: %+v, %v", ds, err)
	}
	var reps []rollout.Report
	if err := json.Unmarshal([]byte(cli(t, bin, 0, "rollout", "status", "--admin", admin, "-o", "json")), &reps); err != nil || len(reps) != 2 {
		t.Fatalf("rollout status -o json: %+v, %v", reps, err)
	}
	cli(t, bin, 2, "devices", "list", "--admin", admin, "-o", "yaml")

	// On a terminal models push draws its progress.
	out = onTerminal(t, bin, "models", "push", "--admin", admin, "--keys", keys, "--name", "face", "--version", "3", model)
	if !strings.Contains(out, "uploading face v3: ") || !strings.Contains(out, "(100%)") || !strings.Contains(out, "pushed face v3") {
		t.Fatalf("models push on a terminal: %q", out)
	}

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

	if err := srv.stop(t); err != nil {
		t.Fatalf("serve exited with %v after SIGTERM", err)
	}
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
		{[]string{"serve", "--keys", dir, "--config", bad}, 2, `bad.yaml:2: unknown key "brokr"`},
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

func modelSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// onTerminal runs the binary under script(1), which gives it a terminal,
// and returns what it wrote there; the command must succeed.
func onTerminal(t *testing.T, bin string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("script"); err != nil {
		t.Skip("script(1) from util-linux is not installed")
	}
	quoted := []string{bin}
	for _, a := range args {
		quoted = append(quoted, "'"+strings.ReplaceAll(a, "'", `'\''`)+"'")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "script", "-qefc", strings.Join(quoted, " "), "/dev/null")
	cmd.Env = append(os.Environ(), "TERM=xterm")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v on a terminal: %v\n%s", args, err, out)
	}
	return string(out)
}
