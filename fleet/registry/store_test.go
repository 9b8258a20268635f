package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// TestMigrations starts from every older schema version (0: an empty
// store) with data written at that version, and Open brings it to the
// current one keeping the data; a store migrated by a newer build is
// refused.
func TestMigrations(t *testing.T) { eachEngine(t, testMigrations) }

func testMigrations(t *testing.T, newTarget func(*testing.T) target) {
	latest := SchemaVersion()
	if latest < 2 {
		t.Fatalf("schema version %d: the test wants at least two steps", latest)
	}
	for from := 0; from < latest; from++ {
		t.Run(fmt.Sprintf("from %d", from), func(t *testing.T) {
			tg := newTarget(t)
			eng, w, rd := tg.openAt(t, from)
			if v, err := schemaVersion(context.Background(), w); err != nil || v != from {
				t.Fatalf("migrated to %d: version %d, %v", from, v, err)
			}
			if from >= 1 {
				// A device as schema 1 has it.
				if _, err := w.Exec(eng.rebind(`INSERT INTO devices (id, agent_version, tel_records) VALUES (?, ?, ?)`), "gw-old", "0.9", 5); err != nil {
					t.Fatal(err)
				}
			}
			w.Close()
			if rd != w {
				rd.Close()
			}
			r := tg.open(t)
			defer r.Close()
			if v, err := schemaVersion(context.Background(), r.w); err != nil || v != latest {
				t.Fatalf("after Open: version %d, %v; want %d", v, err, latest)
			}
			if from >= 1 {
				d, err := r.Device("gw-old")
				if err != nil || d.AgentVersion != "0.9" || d.Telemetry.Records != 5 {
					t.Fatalf("device written at schema %d: %+v, %v", from, d, err)
				}
			}
			// The newest step works: telemetry is stored.
			b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: 1}, Entries: []protocol.Entry{{Seq: 1, Body: []byte{0}}}}
			if n, err := r.RecordBatch("gw-old", b, time.Now()); err != nil || n != 1 {
				t.Fatalf("RecordBatch after migration: %d, %v", n, err)
			}
		})
	}
	t.Run("newer than this build", func(t *testing.T) {
		tg := newTarget(t)
		r := tg.open(t)
		if _, err := r.w.Exec(r.q(`INSERT INTO schema_migrations (version, applied) VALUES (?, ?)`), latest+1, 0); err != nil {
			t.Fatal(err)
		}
		r.Close()
		if r, err := Open(tg.dir, tg.opts); !errors.Is(err, ErrSchemaTooNew) {
			if r != nil {
				r.Close()
			}
			t.Fatalf("got %v, want ErrSchemaTooNew", err)
		}
	})
	// NoMigrate (tools beside serve): an older store is refused and left
	// at its schema; a store at this build's schema opens.
	t.Run("no migrate", func(t *testing.T) {
		tg := newTarget(t)
		eng, w, rd := tg.openAt(t, latest-1)
		defer w.Close()
		if rd != w {
			defer rd.Close()
		}
		opts := tg.opts
		opts.NoMigrate = true
		if r, err := Open(tg.dir, opts); !errors.Is(err, ErrSchemaTooOld) {
			if r != nil {
				r.Close()
			}
			t.Fatalf("older store: got %v, want ErrSchemaTooOld", err)
		}
		if v, err := schemaVersion(context.Background(), w); err != nil || v != latest-1 {
			t.Fatalf("NoMigrate moved the schema to %d (%v), want %d", v, err, latest-1)
		}
		if err := migrate(context.Background(), w, eng, -1); err != nil {
			t.Fatal(err)
		}
		r, err := Open(tg.dir, opts)
		if err != nil {
			t.Fatalf("store at this build's schema: %v", err)
		}
		r.Close()
	})
}

// TestOpenNoMigrateMissing: NoMigrate on an embedded store that is not
// there fails and creates nothing.
func TestOpenNoMigrateMissing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if r, err := Open(dir, Options{NoMigrate: true}); err == nil {
		r.Close()
		t.Fatal("opened a store that does not exist")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the data dir was created (%v)", err)
	}
}

// openAt opens tg's store bare (no Registry) and migrates it to schema
// version v.
func (tg target) openAt(t *testing.T, v int) (engine, *sql.DB, *sql.DB) {
	t.Helper()
	store := tg.opts.Store
	if store == "" {
		store = filepath.Join(tg.dir, StoreFile)
	}
	eng, w, rd, err := openEngine(store)
	if err != nil {
		t.Fatal(err)
	}
	if err := migrate(context.Background(), w, eng, v); err != nil {
		t.Fatal(err)
	}
	return eng, w, rd
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestImportBolt opens a data directory holding a bbolt registry.db
// written by the code before the SQL store (testdata/registry-v0.db, made
// by that code's tests: three devices, telemetry counters, two rollouts,
// two assignments, a live and a revoked credential, a live and a revoked
// token, three audit records). Everything is there afterwards, the audit
// chain goes on from the imported head, and the file is moved aside, not
// deleted.
func TestImportBolt(t *testing.T) { eachEngine(t, testImportBolt) }

func testImportBolt(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	copyFile(t, "testdata/registry-v0.db", filepath.Join(tg.dir, BoltFile))
	r := tg.open(t)
	check := func(r *Registry) {
		t.Helper()
		ms, err := r.Models()
		if err != nil || len(ms) != 1 || ms[0].Name != "face" || ms[0].Version != 1 || ms[0].ChunkSize != 256 || len(ms[0].Release) == 0 {
			t.Fatalf("models: %+v, %v", ms, err)
		}
		ds, err := r.Devices()
		if err != nil || len(ds) != 3 {
			t.Fatalf("devices: %d, %v; want 3", len(ds), err)
		}
		a := ds[0]
		want := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
		if a.ID != "dev-a" || a.Labels["site"] != "north" || !a.Online || !a.OnlineSince.Equal(want) || a.Running("face") != 1 ||
			a.Telemetry.Records != 2 || a.Telemetry.Epoch != 7 || a.Telemetry.MaxSeq != 2 || ds[2].Online {
			t.Fatalf("device dev-a: %+v", a)
		}
		ros, err := r.Rollouts()
		if err != nil || len(ros) != 2 || ros[0].ID != "ro-0" || ros[1].ID != "ro-1" || ros[1].State != RolloutRunning ||
			ros[1].Bake != time.Minute || len(ros[1].Decisions) != 1 || ros[1].Selector["site"] != "north" || ros[1].Waves[1] != 100 {
			t.Fatalf("rollouts: %+v, %v", ros, err)
		}
		as, err := r.Assignments("ro-1")
		if err != nil || len(as) != 2 || as[1].Device != "dev-b" || as[1].Wave != 1 || !as[1].Known("cmd-old-dev-b") || !as[1].Activated {
			t.Fatalf("assignments: %+v, %v", as, err)
		}
		if h, ok, err := r.CredentialHash("dev-a"); err != nil || !ok || string(h) != "hash-a" {
			t.Fatalf("credential dev-a: %q %v %v", h, ok, err)
		}
		if _, ok, err := r.CredentialHash("dev-b"); err != nil || ok {
			t.Fatalf("revoked credential dev-b: live %v, %v", ok, err)
		}
		toks, err := r.Tokens()
		if err != nil || len(toks) != 2 || toks[0].ID != "tok1" || toks[0].Revoked != nil || toks[1].Revoked == nil {
			t.Fatalf("tokens: %+v, %v", toks, err)
		}
	}
	check(r)
	if n, err := r.VerifyAudit(); err != nil || n != 3 {
		t.Fatalf("imported audit chain: %d, %v; want 3 intact", n, err)
	}
	recs, _ := r.Audit(time.Time{}, 0)
	rec, err := r.AppendAudit(AuditRecord{Actor: "tok1", Method: "DELETE", Path: "/v1/x", Status: 204})
	if err != nil || rec.Seq != 4 || rec.Prev != recs[2].Hash {
		t.Fatalf("append after import: %+v, %v; want seq 4 naming %s", rec, err, recs[2].Hash)
	}
	if _, err := os.Stat(filepath.Join(tg.dir, BoltFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("registry.db still in place: %v", err)
	}
	if _, err := os.Stat(filepath.Join(tg.dir, BoltFile+".imported")); err != nil {
		t.Fatalf("registry.db.imported: %v", err)
	}
	r.Close()

	// A crash between the import's commit and the rename: the file is
	// back, the store is marked imported; Open only moves it aside again.
	copyFile(t, "testdata/registry-v0.db", filepath.Join(tg.dir, BoltFile))
	r = tg.open(t)
	defer r.Close()
	check(r)
	if n, err := r.VerifyAudit(); err != nil || n != 4 {
		t.Fatalf("audit after a second start: %d, %v; want 4 intact", n, err)
	}
	if m, _ := filepath.Glob(filepath.Join(tg.dir, BoltFile+".imported*")); len(m) != 2 {
		t.Fatalf("moved-aside files: %v, want 2", m)
	}
}

// TestReplicas opens the same store twice, as two controller replicas
// do, and has both update one device, one assignment and the audit log
// at once and deliver the same telemetry: no update is lost and no record
// is counted twice.
func TestReplicas(t *testing.T) { eachEngine(t, testReplicas) }

func testReplicas(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	if tg.opts.Store == "" {
		tg.opts.Store = filepath.Join(tg.dir, StoreFile)
	}
	a, b := tg.open(t), tg.open(t)
	defer a.Close()
	defer b.Close()
	const workers, each = 4, 25
	// Every other record is an aggregate (an agg_records row and merged
	// buckets, not a telemetry row): 25 of them, 3 requests each, a minute
	// apart.
	t0 := time.Now().UTC().Truncate(time.Hour).Add(-time.Hour)
	body := func(seq int) []byte {
		if seq%2 == 1 {
			return []byte{1}
		}
		rec := aggregate(t0.Add(time.Duration(seq)*time.Minute), 3, 0, []uint64{1000}, []uint64{3, 0})
		b, err := protocol.AppendRecord(nil, &rec)
		if err != nil {
			panic(err)
		}
		return b
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers*each*4)
	var freshMu sync.Mutex // guards fresh
	fresh := 0
	for i := range 2 * workers {
		r := a
		if i%2 == 1 {
			r = b
		}
		wg.Go(func() {
			for j := range each {
				if _, err := r.UpdateDevice("gw-1", func(d *Device) { d.RootVersion++ }); err != nil {
					errs <- err
				}
				if _, err := r.UpdateAssignment("ro-1", "gw-1", true, func(a *Assignment) bool { a.Sends++; return true }); err != nil {
					errs <- err
				}
				if _, err := r.AppendAudit(AuditRecord{Actor: "x", Method: "POST", Path: "/", Status: 200}); err != nil {
					errs <- err
				}
				// Every worker delivers the same 5 batches of 10 records.
				if j < 5 {
					bt := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: 3}}
					for s := range 10 {
						bt.Entries = append(bt.Entries, protocol.Entry{Seq: uint64(j*10 + s + 1), Body: body(j*10 + s + 1)})
					}
					n, err := r.RecordBatch("gw-2", bt, time.Now())
					if err != nil {
						errs <- err
					}
					freshMu.Lock()
					fresh += n
					freshMu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total := 2 * workers * each
	if d, err := a.Device("gw-1"); err != nil || d.RootVersion != int64(total) {
		t.Fatalf("device counter: got %+v, %v; want %d", d, err, total)
	}
	if as, err := b.Assignments("ro-1"); err != nil || len(as) != 1 || as[0].Sends != total {
		t.Fatalf("assignment counter: got %+v, %v; want %d", as, err, total)
	}
	if n, err := a.VerifyAudit(); err != nil || n != total {
		t.Fatalf("audit: %d, %v; want %d intact", n, err, total)
	}
	d, err := b.Device("gw-2")
	if err != nil || fresh != 50 || d.Telemetry.Records != 50 || d.Telemetry.Duplicates != uint64(2*workers*50-50) {
		t.Fatalf("telemetry: %d fresh, counters %+v, %v; want 50 records once", fresh, d.Telemetry, err)
	}
	var rows int
	if err := a.r.QueryRow(`SELECT (SELECT count(*) FROM telemetry) + (SELECT count(*) FROM agg_records)`).Scan(&rows); err != nil || rows != 50 {
		t.Fatalf("telemetry and agg_records rows: %d, %v; want 50", rows, err)
	}
	tot, err := a.Totals("face", "3")
	if err != nil || tot.Requests != 25*3 {
		t.Fatalf("totals: %+v, %v; want the 25 aggregates' 75 requests once", tot, err)
	}
	for _, dev := range []string{"gw-2", ""} {
		bs, err := b.Buckets("face", dev, MinuteBucket)
		sum := uint64(0)
		for _, x := range bs {
			sum += x.Requests
		}
		if err != nil || len(bs) != 25 || sum != 75 {
			t.Fatalf("minute buckets of %q: %d buckets, %d requests, %v; want 25 and 75", dev, len(bs), sum, err)
		}
	}
}
