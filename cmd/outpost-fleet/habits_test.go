package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/internal/buildinfo"
)

// TestHelpVersionAndBadFlags runs the real binary: help on stdout with exit
// 0 for the binary and every command (help, -h, --help, help CMD, CMD -h,
// CMD --help), version (and -o json), and a bad flag as one line on stderr
// with exit 2, for every command.
func TestHelpVersionAndBadFlags(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		stdout, stderr := cliEnv(t, bin, nil, 0, args...)
		if !strings.Contains(stdout, "usage: outpost-fleet") || !strings.Contains(stdout, "rollout status") || stderr != "" {
			t.Errorf("%v: stdout %q, stderr %q", args, stdout, stderr)
		}
	}
	if _, stderr := cliEnv(t, bin, nil, 2); !strings.Contains(stderr, "usage: outpost-fleet") {
		t.Errorf("no command: stderr %q", stderr)
	}
	for _, c := range program.Commands {
		words := strings.Fields(c.Name)
		for _, args := range [][]string{append(append([]string{}, words...), "-h"), append(append([]string{}, words...), "--help"), append([]string{"help"}, words...)} {
			stdout, stderr := cliEnv(t, bin, nil, 0, args...)
			if !strings.Contains(stdout, "-") || stderr != "" {
				t.Errorf("%v: stdout %q, stderr %q", args, stdout, stderr)
			}
		}
		stdout, stderr := cliEnv(t, bin, nil, 2, append(append([]string{}, words...), "--no-such-flag")...)
		want := "outpost-fleet " + c.Name + ": flag provided but not defined: -no-such-flag (see outpost-fleet " + c.Name + " -h)\n"
		if stderr != want || stdout != "" {
			t.Errorf("%s with a bad flag: stdout %q, stderr %q, want stderr %q", c.Name, stdout, stderr, want)
		}
	}
	stdout, _ := cliEnv(t, bin, nil, 0, "version")
	for _, want := range []string{"outpost-fleet dev\n", "commit:", runtime.Version(), "build tags: none"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("version: %q lacks %q", stdout, want)
		}
	}
	stdout, _ = cliEnv(t, bin, nil, 0, "version", "-o", "json")
	var in buildinfo.Info
	if err := json.Unmarshal([]byte(stdout), &in); err != nil || in.Version != "dev" || in.GoVersion != runtime.Version() || in.Commit == "" {
		t.Errorf("version -o json: %q (%v)", stdout, err)
	}
	// A release build says its version and commit.
	rel := bin + "-release"
	ld := "-X github.com/outpost-edge/outpost/internal/buildinfo.Version=v1.2.3 -X github.com/outpost-edge/outpost/internal/buildinfo.Commit=abc123"
	if out, err := exec.Command("go", "build", "-tags", "netgo", "-ldflags", ld, "-o", rel, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	stdout, _ = cliEnv(t, rel, nil, 0, "--version")
	for _, want := range []string{"outpost-fleet v1.2.3\n", "commit:     abc123", "build tags: netgo"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("release version: %q lacks %q", stdout, want)
		}
	}
}

// TestPackagedConfig: the fleet.yaml the packages install loads, and says
// what the systemd unit expects.
func TestPackagedConfig(t *testing.T) {
	cfg, err := loadFleetConfig("../../packaging/fleet.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Keys != "/var/lib/outpost-fleet/keys" || cfg.DataDir != "/var/lib/outpost-fleet/data" || cfg.LogFormat != "text" {
		t.Fatalf("packaged config: %+v", cfg)
	}
	unit, err := os.ReadFile("../../packaging/outpost-fleet.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ConditionPathExists=" + cfg.Keys, "ExecStart=/usr/bin/outpost-fleet serve --config /etc/outpost/fleet.yaml", "StateDirectory=outpost-fleet"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("outpost-fleet.service lacks %q", want)
		}
	}
}
