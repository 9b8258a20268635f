package registry

import (
	"bytes"
	"crypto/rand"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
)

func TestLease(t *testing.T) { eachEngine(t, testLease) }

func testLease(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	r := tg.open(t)
	defer r.Close()
	const ttl = time.Minute
	t0 := time.Now()

	if l, err := r.LeaseOf("engine"); err != nil || l.Holder != "" || l.Token != 0 {
		t.Fatalf("untaken lease: got %+v, %v", l, err)
	}
	a, err := r.AcquireLease("engine", "a", ttl, t0)
	if err != nil || a.Token != 1 || a.Holder != "a" {
		t.Fatalf("acquire: got %+v, %v; want a with token 1", a, err)
	}
	if _, err := r.AcquireLease("engine", "b", ttl, t0.Add(ttl/2)); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("acquire a held lease: got %v, want ErrLeaseHeld", err)
	}
	// Renewal keeps the token and moves the expiry.
	if a, err = r.RenewLease(a, ttl, t0.Add(ttl/2)); err != nil || a.Token != 1 || !a.Expires.Equal(t0.Add(ttl/2+ttl)) {
		t.Fatalf("renew: got %+v, %v", a, err)
	}
	if _, err := r.AcquireLease("engine", "b", ttl, t0.Add(ttl)); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("acquire after the first expiry but before the renewed one: got %v, want ErrLeaseHeld", err)
	}
	// A writer under the lease writes.
	fa := r.Fenced(a)
	if _, err := fa.UpdateAssignment("ro-1", "gw-1", true, func(as *Assignment) bool { as.Sends++; return true }); err != nil {
		t.Fatalf("fenced write of the holder: %v", err)
	}
	// Expired: b takes over with a higher token; a can neither renew nor write.
	later := t0.Add(3 * ttl)
	b, err := r.AcquireLease("engine", "b", ttl, later)
	if err != nil || b.Token != 2 || b.Holder != "b" {
		t.Fatalf("acquire an expired lease: got %+v, %v; want b with token 2", b, err)
	}
	if _, err := r.RenewLease(a, ttl, later); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("renew a lost lease: got %v, want ErrLeaseLost", err)
	}
	if _, err := fa.UpdateAssignment("ro-1", "gw-1", true, func(as *Assignment) bool { as.Sends++; return true }); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("fenced write of a stale token: got %v, want ErrLeaseLost", err)
	}
	if err := fa.PutRollout(&Rollout{ID: "ro-2", State: RolloutRunning}); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("fenced rollout write of a stale token: got %v, want ErrLeaseLost", err)
	}
	if _, err := r.Rollout("ro-2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused write left a rollout: %v", err)
	}
	if as, err := r.Assignments("ro-1"); err != nil || len(as) != 1 || as[0].Sends != 1 {
		t.Fatalf("assignment after a refused write: got %+v, %v; want 1 send", as, err)
	}
	// Releasing a lost holding leaves the new one alone; releasing the
	// current one frees the lease at once.
	if err := r.ReleaseLease(a); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AcquireLease("engine", "a", ttl, later); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("a stale release freed the lease: got %v", err)
	}
	if err := r.ReleaseLease(b); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Fenced(b).UpdateAssignment("ro-1", "gw-1", false, func(as *Assignment) bool { return true }); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("fenced write after release: got %v, want ErrLeaseLost", err)
	}
	c, err := r.AcquireLease("engine", "a", ttl, later)
	if err != nil || c.Token != 3 {
		t.Fatalf("acquire a released lease: got %+v, %v; want token 3", c, err)
	}
	// A holder taking its own lease again gets a new token: its old
	// writers are fenced off too.
	d, err := r.AcquireLease("engine", "a", ttl, later)
	if err != nil || d.Token != 4 {
		t.Fatalf("re-acquire: got %+v, %v; want token 4", d, err)
	}
	if _, err := r.Fenced(c).UpdateAssignment("ro-1", "gw-1", false, func(as *Assignment) bool { return true }); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("fenced write of the holder's older token: got %v, want ErrLeaseLost", err)
	}
	if got, err := r.LeaseOf("engine"); err != nil || got.Token != 4 || got.Holder != "a" {
		t.Fatalf("stored lease: got %+v, %v", got, err)
	}
	if err := fa.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.LeaseOf("engine"); err != nil {
		t.Fatalf("closing a view closed the store: %v", err)
	}
}

// TestBlobReplicas: a model pushed to one replica's data directory is
// served by another replica of the same store, fetched from the database
// (PostgreSQL); on SQLite the one process has the file.
func TestBlobReplicas(t *testing.T) {
	eachEngine(t, func(t *testing.T, newTarget func(*testing.T) target) {
		tg := newTarget(t)
		a := tg.open(t)
		defer a.Close()
		k, err := keyring.Init(t.TempDir(), keyring.Options{})
		if err != nil {
			t.Fatal(err)
		}
		model := make([]byte, 3<<20+17)
		_, _ = rand.Read(model)
		mv, err := a.PutModel(k.Root(), signed(t, k, "face", 1, model), bytes.NewReader(model), 0, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if p, err := a.Blob(mv); err != nil || p != a.BlobPath(mv.SHA256) {
			t.Fatalf("blob on the replica it was pushed to: %q, %v", p, err)
		}
		if tg.opts.Store == "" {
			return
		}
		other := target{dir: t.TempDir(), opts: tg.opts}
		b := other.open(t)
		defer b.Close()
		p, err := b.Blob(mv)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, model) {
			t.Fatalf("fetched blob: %d bytes, %v; want the %d pushed", len(got), err, len(model))
		}
		// Pieces that do not make the artifact are refused, not served.
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if _, err := b.w.Exec(`UPDATE blob_chunks SET data = $1 WHERE sha256 = $2 AND idx = 1`, []byte("x"), mv.SHA256); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Blob(mv); err == nil {
			t.Fatal("a blob from corrupt pieces was served")
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("a corrupt blob was left in place: %v", err)
		}
	})
}

// TestLeaseFrozenHolder: a holder frozen inside a fenced transaction holds
// the lease row; PostgreSQL ends its idle session, so the next holder's
// acquisition goes through within leaseIdleTimeout and the frozen
// transaction cannot commit.
func TestLeaseFrozenHolder(t *testing.T) {
	eachEngine(t, func(t *testing.T, newTarget func(*testing.T) target) {
		tg := newTarget(t)
		if tg.opts.Store == "" {
			t.Skip("SQLite has one process: no other holder to block")
		}
		r := tg.open(t)
		defer r.Close()
		t0 := time.Now()
		a, err := r.AcquireLease("engine", "a", time.Minute, t0)
		if err != nil {
			t.Fatal(err)
		}
		tx, err := r.w.Begin()
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		if err := r.checkFence(tx, a); err != nil {
			t.Fatal(err)
		}
		// a freezes here, idle in its transaction.
		start := time.Now()
		b, err := r.AcquireLease("engine", "b", time.Minute, t0.Add(2*time.Minute))
		if err != nil || b.Token != 2 {
			t.Fatalf("acquire past a frozen holder: %+v, %v", b, err)
		}
		t.Logf("acquired %s after the holder froze", time.Since(start).Round(time.Millisecond))
		if err := tx.Commit(); err == nil {
			t.Fatal("the frozen holder's transaction committed after the lease changed hands")
		}
	})
}
