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
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
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
	s := &fleetServer{dir: dir, keys: k, mqtt: freeAddr(tb), logs: &lockedBuffer{}, exited: make(chan error, 1)}
	adminAddr := freeAddr(tb)
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

func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
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
