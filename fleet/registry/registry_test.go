package registry

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
)

func signed(t *testing.T, k *keyring.Keyring, name string, version int64, model []byte) []byte {
	t.Helper()
	sum := sha256.Sum256(model)
	m := manifest.Manifest{Name: name, Version: version, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(model)), Runtime: "tflite",
		Inputs:  []manifest.Tensor{{Name: "i", DataType: "FP32", Shape: []int{1}}},
		Outputs: []manifest.Tensor{{Name: "o", DataType: "FP32", Shape: []int{1}}}}
	rel, err := k.SignRelease(m, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return rel
}

func TestPutModel(t *testing.T) { eachEngine(t, testPutModel) }

func testPutModel(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	r, err := Open(tg.dir, tg.opts)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := keyring.Init(t.TempDir(), keyring.Options{})
	stranger, _ := keyring.Init(t.TempDir(), keyring.Options{})
	model := bytes.Repeat([]byte("weights"), 1000)
	rel := signed(t, k, "face", 1, model)
	now := time.Now()

	mv, err := r.PutModel(k.Root(), rel, bytes.NewReader(model), 1000, now)
	if err != nil {
		t.Fatal(err)
	}
	if a := mv.Artifact(); a.Chunks != 7 || a.Length != 7000 {
		t.Fatalf("artifact %+v, want 7 chunks of 7000 bytes", a)
	}
	if b, err := os.ReadFile(r.BlobPath(mv.SHA256)); err != nil || !bytes.Equal(b, model) {
		t.Fatalf("blob: %v", err)
	}
	// Idempotent for the same bytes.
	if _, err := r.PutModel(k.Root(), rel, bytes.NewReader(model), 1000, now); err != nil {
		t.Fatalf("same push again: %v", err)
	}
	tests := []struct {
		name  string
		rel   []byte
		model []byte
		want  error
	}{
		{"signed by another fleet", signed(t, stranger, "face", 2, model), model, dsse.ErrThreshold},
		{"bytes changed", signed(t, k, "face", 3, model), append([]byte("X"), model[1:]...), manifest.ErrDigest},
		{"longer than signed", signed(t, k, "face", 4, model), append(bytes.Clone(model), 1), manifest.ErrTooLong},
		{"same version, other bytes", signed(t, k, "face", 1, []byte("other")), []byte("other"), ErrExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.PutModel(k.Root(), tt.rel, bytes.NewReader(tt.model), 0, now)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := r.PutModel(k.Root(), rel, bytes.NewReader(model), 0, now.Add(2*time.Hour)); !errors.Is(err, trust.ErrExpired) {
		t.Fatalf("push of an expired release: got %v, want %v", err, trust.ErrExpired)
	}
	ms, _ := r.Models()
	if len(ms) != 1 {
		t.Fatalf("got %d model versions after refused pushes, want 1", len(ms))
	}
	ents, _ := os.ReadDir(tg.dir + "/blobs")
	if len(ents) != 1 {
		t.Fatalf("got %d files in blobs, want 1 (refused pushes leave nothing)", len(ents))
	}
	if _, err := r.ModelBySHA(mv.SHA256); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Model("face", 9); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown version: %v", err)
	}

	// Everything survives a reopen.
	r.Close()
	r, err = Open(tg.dir, tg.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, err := r.Model("face", 1); err != nil || got.SHA256 != mv.SHA256 || !bytes.Equal(got.Release, rel) {
		t.Fatalf("after reopen: %+v, %v", got, err)
	}
}

func TestTelemetryDedup(t *testing.T) { eachEngine(t, testTelemetryDedup) }

func testTelemetryDedup(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	r, err := Open(tg.dir, tg.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	body, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindAudit, Time: time.Now(), Audit: &protocol.Audit{Actor: "agent", Action: "x"}})
	if err != nil {
		t.Fatal(err)
	}
	batch := func(epoch uint64, seqs ...uint64) *protocol.Batch {
		b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: epoch}}
		b.Drops[protocol.DropEvicted] = 3
		for _, s := range seqs {
			b.Entries = append(b.Entries, protocol.Entry{Seq: s, Body: body})
		}
		return b
	}
	for _, c := range []struct {
		b     *protocol.Batch
		fresh int
	}{
		{batch(7, 1, 2, 3), 3},
		{batch(7, 2, 3), 0}, // resent after a lost PUBACK
		{batch(7, 3, 4, 5), 2},
		{batch(7, 8, 9), 2},
		{batch(7, 6, 7, 8), 2}, // overtaken by the one before on the way: stored all the same
		{batch(8, 1), 1},       // a new queue file
	} {
		got, err := r.RecordBatch("gw-1", c.b, time.Now())
		if err != nil || got != c.fresh {
			t.Fatalf("RecordBatch: got %d new, %v; want %d", got, err, c.fresh)
		}
	}
	d, err := r.Device("gw-1")
	if err != nil {
		t.Fatal(err)
	}
	tc := d.Telemetry
	if tc.Records != 10 || tc.Duplicates != 4 || tc.Batches != 6 || tc.Epoch != 8 || tc.MaxSeq != 1 || tc.ByKind["audit"] != 10 || tc.Drops["evicted"] != 3 {
		t.Fatalf("counters %+v", tc)
	}
}

func TestAssignments(t *testing.T) { eachEngine(t, testAssignments) }

func testAssignments(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	r, err := Open(tg.dir, tg.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.UpdateAssignment("r-1", "gw-1", false, func(*Assignment) bool { return true }); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update of a missing assignment: %v", err)
	}
	for _, d := range []string{"gw-2", "gw-1"} {
		if _, err := r.UpdateAssignment("r-1", d, true, func(a *Assignment) bool { a.CommandID = "c-" + d; return true }); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.UpdateAssignment("r-10", "gw-1", true, func(a *Assignment) bool { return true }); err != nil {
		t.Fatal(err)
	}
	as, err := r.Assignments("r-1")
	if err != nil || len(as) != 2 || as[0].Device != "gw-1" || as[1].CommandID != "c-gw-2" {
		t.Fatalf("assignments of r-1 (r-10 must not leak in): %+v, %v", as, err)
	}
	a := as[0]
	for i := range 10 {
		a.Remember(NewID(""))
		_ = i
	}
	if len(a.Previous) != 8 || !a.Known(a.Previous[7]) || a.Known("nope") || !a.Known("c-gw-1") {
		t.Fatalf("Remember/Known: %+v", a.Previous)
	}
}
