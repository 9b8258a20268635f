package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/models/testmodel"
)

// serveDataDir starts the binary's serve on dataDir with fresh loopback
// ports and returns the admin URL and a function that stops it with
// SIGTERM and waits.
func serveDataDir(t *testing.T, bin, keys, dataDir string) (admin string, stop func()) {
	t.Helper()
	mqttAddr, adminAddr := testbroker.FreeAddr(t), testbroker.FreeAddr(t)
	srv := exec.Command(bin, "serve", "--keys", keys, "--data-dir", dataDir, "--fleet", "acme",
		"--listen-mqtt", mqttAddr, "--admin", adminAddr)
	var logs lockedBuffer
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = srv.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("serve exited with %v after SIGTERM\n%s", err, logs.String())
				}
			case <-time.After(60 * time.Second):
				_ = srv.Process.Kill()
				<-exited
				t.Errorf("serve did not stop after SIGTERM\n%s", logs.String())
			}
		})
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("serve output (%s):\n%s", dataDir, logs.String())
		}
		stop()
	})
	admin = "http://" + adminAddr
	waitHTTP(t, admin+"/v1/health")
	return admin, stop
}

// TestBackupRestore runs the real binary: serve, push a model, enroll
// devices one after another while outpost-fleet backup copies the store,
// then restore the copy (and blobs/) into a fresh data directory as
// docs/STORE.md says, serve from it, and find the model and every device
// enrolled before the backup began; the restored audit chain is intact.
func TestBackupRestore(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	cli(t, bin, 0, "keys", "init", "--dir", keys)
	data := filepath.Join(dir, "data")
	admin, stop := serveDataDir(t, bin, keys, data)
	cli(t, bin, 0, "models", "push", "--admin", admin, "--keys", keys, "--name", "face", "--version", "1", testmodel.Path(t, testmodel.FaceShort))

	// The writer enrolls gw-0, gw-1, ... until told to stop (at most 200),
	// reporting each enrolment that returned.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan string, 200)
	var writerErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for i := range 200 {
			if ctx.Err() != nil {
				return
			}
			name := fmt.Sprintf("gw-%d", i)
			out, err := exec.CommandContext(ctx, bin, "devices", "enroll", "--admin", admin, name).CombinedOutput()
			if err != nil {
				if ctx.Err() == nil {
					writerErr = fmt.Errorf("enroll %s: %v: %s", name, err, out)
				}
				return
			}
			done <- name
		}
	})
	// Back up once a few enrolments are in, while the writer goes on.
	var before []string
	for name := range done {
		before = append(before, name)
		if len(before) == 5 {
			break
		}
	}
	backup := filepath.Join(dir, "backup", "fleet.db")
	if err := os.MkdirAll(filepath.Dir(backup), 0o700); err != nil {
		t.Fatal(err)
	}
	if out := cli(t, bin, 0, "backup", "--data-dir", data, "--out", backup); !strings.Contains(out, "written to "+backup) {
		t.Fatalf("backup output %q", out)
	}
	var after int
	for range done {
		after++
		if after == 5 {
			break
		}
	}
	cancel()
	wg.Wait()
	if writerErr != nil {
		t.Fatal(writerErr)
	}
	if after < 5 {
		t.Fatalf("only %d enrolments after the backup: the writer did not go on", after)
	}
	// A second backup to the same file is refused, not overwritten.
	cli(t, bin, 1, "backup", "--data-dir", data, "--out", backup)
	stop()

	// Restore: a fresh data dir with the copy as fleet.db and the blobs.
	restored := filepath.Join(dir, "restored")
	if err := os.MkdirAll(filepath.Join(restored, "blobs"), 0o750); err != nil {
		t.Fatal(err)
	}
	copyTree(t, filepath.Join(data, "blobs"), filepath.Join(restored, "blobs"))
	copyFileTo(t, backup, filepath.Join(restored, registry.StoreFile))
	admin, stop = serveDataDir(t, bin, keys, restored)
	if out := cli(t, bin, 0, "models", "list", "--admin", admin); !strings.Contains(out, "face  1") {
		t.Fatalf("models list after restore:\n%s", out)
	}
	for _, name := range before {
		if out := cli(t, bin, 1, "devices", "enroll", "--admin", admin, name); !strings.Contains(out, "already holds a credential") {
			t.Fatalf("%s, enrolled before the backup, after restore: %q", name, out)
		}
	}
	stop()
	r, err := registry.Open(restored, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if n, err := r.VerifyAudit(); err != nil || n < len(before) {
		t.Fatalf("restored audit chain: %d records, %v", n, err)
	}
}

func copyFileTo(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			copyFileTo(t, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
		}
	}
}
