package main

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
)

// TestSamplesExport: the command writes what a store kept, selected by
// version, and refuses what it cannot do.
func TestSamplesExport(t *testing.T) {
	dataDir := t.TempDir()
	reg, err := registry.Open(dataDir, registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: 1}}
	for i, v := range []string{"1", "2", "2"} {
		body, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindSample, Time: time.Now().Add(-time.Minute),
			Model: protocol.ModelRef{Name: "face", Version: v}, Sample: &protocol.Sample{RequestID: "r" + v,
				Inputs: []protocol.TensorSample{{Name: "x", Datatype: "FP32", Shape: []int64{1}, Data: []byte{0, 0, 128, 63}}}}})
		if err != nil {
			t.Fatal(err)
		}
		b.Entries = append(b.Entries, protocol.Entry{Seq: uint64(i + 1), Body: body})
	}
	if _, err := reg.RecordBatch("gw-1", b, time.Now()); err != nil {
		t.Fatal(err)
	}
	reg.Close()
	out := filepath.Join(t.TempDir(), "ds")
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no model", []string{"samples", "export", "--data-dir", dataDir, "--out", out}, 2, "--model and --out are required"},
		{"bad since", []string{"samples", "export", "--data-dir", dataDir, "--model", "face", "--since", "monday", "--out", out}, 2, "--since"},
		{"version 2", []string{"samples", "export", "--data-dir", dataDir, "--model", "face", "--version", "2", "--since", "1h", "--out", out}, 0, "2 samples of face written"},
		{"again", []string{"samples", "export", "--data-dir", dataDir, "--model", "face", "--out", out}, 1, "not empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := program.Dispatch(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("got exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout.String(), stderr.String())
			}
			if got := stdout.String() + stderr.String(); !strings.Contains(got, tt.want) {
				t.Fatalf("got output %q, want it to contain %q", got, tt.want)
			}
		})
	}
	idx, err := os.ReadFile(filepath.Join(out, "index.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(idx), "\n"); n != 2 || strings.Contains(string(idx), `"version":"1"`) {
		t.Fatalf("index: got %d lines, want the 2 samples of version 2:\n%s", n, idx)
	}
}

// TestSamplesExportBesideWriter: the real binary exports from an embedded
// store that another process writes to all along, as serve does while it
// ingests (docs/MONITORING.md: "it runs beside serve"): every export
// succeeds, and each holds at least the samples stored before it started.
func TestSamplesExportBesideWriter(t *testing.T) {
	bin, dataDir, reg := binaryAndStore(t)
	defer reg.Close()
	var stored atomic.Int64 // samples committed so far
	// write stores 20 samples from seq on; the writer goroutine calls it
	// too, so it returns its errors rather than failing the test.
	write := func(seq uint64) error {
		b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: 1}}
		for i := range uint64(20) {
			body, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindSample, Time: time.Now(),
				Model: protocol.ModelRef{Name: "face", Version: "1"}, Sample: &protocol.Sample{RequestID: fmt.Sprint("r", seq+i),
					Inputs: []protocol.TensorSample{{Name: "x", Datatype: "FP32", Shape: []int64{1}, Data: []byte{0, 0, 128, 63}}}}})
			if err != nil {
				return err
			}
			b.Entries = append(b.Entries, protocol.Entry{Seq: seq + i, Body: body})
		}
		n, err := reg.RecordBatch("gw-1", b, time.Now())
		stored.Add(int64(n))
		return err
	}
	if err := write(1); err != nil {
		t.Fatal(err)
	}
	// First with the writer's lock held all along (a transaction open in
	// another connection, as serve holds one while it ingests): the export
	// only reads, so it neither waits for the lock nor fails on it.
	lockDB, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, registry.StoreFile))
	if err != nil {
		t.Fatal(err)
	}
	defer lockDB.Close()
	lock, err := lockDB.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.ExecContext(context.Background(), "BEGIN IMMEDIATE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	msg, err := exec.Command(bin, "samples", "export", "--data-dir", dataDir, "--model", "face", "--out", filepath.Join(t.TempDir(), "ds")).CombinedOutput()
	if err != nil {
		t.Fatalf("export with the writer's lock held: %v\n%s", err, msg)
	}
	t.Logf("export with the writer's lock held: %s", time.Since(start).Round(time.Millisecond))
	if _, err := lock.ExecContext(context.Background(), "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	lock.Close()

	stop := make(chan struct{})
	writerErr := make(chan error, 1)
	go func() { // the writer: a batch every 10 ms until the exports are done (at most 100 s)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		var err error
		for seq := uint64(21); err == nil && seq < 200000; seq += 20 {
			select {
			case <-stop:
				writerErr <- nil
				return
			case <-tick.C:
			}
			err = write(seq)
		}
		writerErr <- err
	}()
	// Stopped before the store closes, also when the test fails early.
	stopWriter := sync.OnceValue(func() error { close(stop); return <-writerErr })
	defer stopWriter()
	for i := range 3 {
		before := stored.Load()
		out := filepath.Join(t.TempDir(), "ds")
		msg, err := exec.Command(bin, "samples", "export", "--data-dir", dataDir, "--model", "face", "--out", out).CombinedOutput()
		if err != nil {
			t.Fatalf("export %d beside the writer: %v\n%s", i, err, msg)
		}
		idx, err := os.ReadFile(filepath.Join(out, "index.jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		n := int64(strings.Count(string(idx), "\n"))
		if n < before {
			t.Errorf("export %d: %d samples, %d were stored before it started", i, n, before)
		}
		t.Logf("export %d: %d samples (%d stored before it started)", i, n, before)
	}
	if err := stopWriter(); err != nil {
		t.Fatalf("the writer failed beside the exports: %v", err)
	}
	if stored.Load() <= 20 {
		t.Fatalf("the writer stored nothing while the exports ran")
	}
}

// TestSamplesExportOtherSchema: the real binary refuses a store at another
// schema than its own (docs/MONITORING.md: "refused with the two schema
// versions"), exits 1, and writes nothing: neither the export directory
// nor the store's schema.
func TestSamplesExportOtherSchema(t *testing.T) {
	bin, dataDir, reg := binaryAndStore(t)
	reg.Close()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dataDir, registry.StoreFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var latest int
	if err := db.QueryRow(`SELECT max(version) FROM schema_migrations`).Scan(&latest); err != nil {
		t.Fatal(err)
	}
	versions := func() string {
		var v string
		if err := db.QueryRow(`SELECT group_concat(version) FROM schema_migrations`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, tt := range []struct {
		name   string
		change string // makes the store's schema another one
		want   string
	}{
		{"older", fmt.Sprintf(`DELETE FROM schema_migrations WHERE version = %d`, latest),
			fmt.Sprintf("store at schema %d, this build's is %d: use the outpost-fleet that serve runs", latest-1, latest)},
		{"newer", fmt.Sprintf(`INSERT INTO schema_migrations (version, applied) VALUES (%d, 0), (%d, 0)`, latest, latest+1),
			fmt.Sprintf("store at schema %d, this build knows %d", latest+1, latest)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := db.Exec(tt.change); err != nil {
				t.Fatal(err)
			}
			before := versions()
			out := filepath.Join(t.TempDir(), "ds")
			cmd := exec.Command(bin, "samples", "export", "--data-dir", dataDir, "--model", "face", "--out", out)
			msg, err := cmd.CombinedOutput()
			if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 {
				t.Fatalf("got %v, want exit 1\n%s", err, msg)
			}
			if !strings.Contains(string(msg), tt.want) {
				t.Fatalf("got %q, want it to say %q", msg, tt.want)
			}
			if after := versions(); after != before {
				t.Fatalf("the export changed the store's schema versions from %s to %s", before, after)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("the refused export made %s (%v)", out, err)
			}
		})
	}
}

// binaryAndStore builds the binary and opens a new embedded store in a
// data directory of its own, for the caller to close.
func binaryAndStore(t *testing.T) (bin, dataDir string, reg *registry.Registry) {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dataDir = t.TempDir()
	if reg, err = registry.Open(dataDir, registry.Options{}); err != nil {
		t.Fatal(err)
	}
	return bin, dataDir, reg
}
