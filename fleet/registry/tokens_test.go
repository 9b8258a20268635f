package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func TestTokens(t *testing.T) { eachEngine(t, testTokens) }

func testTokens(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	r, err := Open(tg.dir, tg.opts)
	if err != nil {
		t.Fatal(err)
	}
	if found, err := r.AnyToken(); err != nil || found {
		t.Fatalf("fresh registry: AnyToken %v, %v; want false", found, err)
	}
	if _, err := r.Token("0011223344556677"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown token: got %v, want ErrNotFound", err)
	}
	if err := r.RevokeToken("0011223344556677", time.Now()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoking an unknown token: got %v, want ErrNotFound", err)
	}
	now := time.Now()
	a := Token{ID: "aaaaaaaaaaaaaaaa", Name: "ci", Role: "operator", Hash: []byte("h-a"), Created: now}
	if err := r.PutToken(a); err != nil {
		t.Fatal(err)
	}
	if err := r.PutToken(a); !errors.Is(err, ErrExists) {
		t.Fatalf("same id twice: got %v, want ErrExists", err)
	}
	if err := r.PutToken(Token{ID: "bbbbbbbbbbbbbbbb", Role: "viewer", Hash: []byte("h-b"), Created: now.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	if err := r.RevokeToken(a.ID, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := r.RevokeToken(a.ID, now.Add(time.Hour)); err != nil {
		t.Fatalf("revoking twice: %v", err)
	}
	r.Close()
	if r, err = Open(tg.dir, tg.opts); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := r.Token(a.ID)
	if err != nil || got.Revoked == nil || !got.Revoked.Equal(now.Add(time.Minute).UTC()) || !bytes.Equal(got.Hash, a.Hash) || got.Name != "ci" {
		t.Fatalf("after reopen: got %+v, %v; want revoked at the first revocation", got, err)
	}
	ts, err := r.Tokens()
	if err != nil || len(ts) != 2 || ts[0].ID != a.ID || ts[1].ID != "bbbbbbbbbbbbbbbb" {
		t.Fatalf("Tokens: got %+v, %v", ts, err)
	}
	if found, err := r.AnyToken(); err != nil || !found {
		t.Fatalf("AnyToken with only revoked and live tokens: %v, %v; want true", found, err)
	}
}

func appendN(t *testing.T, r *Registry, n int, t0 time.Time) {
	t.Helper()
	for i := range n {
		rec, err := r.AppendAudit(AuditRecord{Time: t0.Add(time.Duration(i) * time.Minute), Actor: "aaaaaaaaaaaaaaaa", ActorName: "ci",
			Method: "POST", Path: "/v1/rollouts", Status: 201})
		if err != nil {
			t.Fatal(err)
		}
		if rec.Seq != uint64(i+1) || rec.Hash == "" {
			t.Fatalf("record %d: got seq %d hash %q", i, rec.Seq, rec.Hash)
		}
	}
}

func TestAuditChain(t *testing.T) { eachEngine(t, testAuditChain) }

func testAuditChain(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	r, err := Open(tg.dir, tg.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if n, err := r.VerifyAudit(); err != nil || n != 0 {
		t.Fatalf("empty log: %d, %v", n, err)
	}
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	appendN(t, r, 5, t0)
	recs, err := r.Audit(time.Time{}, 0)
	if err != nil || len(recs) != 5 {
		t.Fatalf("Audit: %d records, %v; want 5", len(recs), err)
	}
	for i := 1; i < len(recs); i++ {
		if recs[i].Prev != recs[i-1].Hash {
			t.Fatalf("record %d: prev %s, want %s", recs[i].Seq, recs[i].Prev, recs[i-1].Hash)
		}
	}
	if recs[0].Prev != "" {
		t.Fatalf("first record names a predecessor %q", recs[0].Prev)
	}
	if got, _ := r.Audit(t0.Add(2*time.Minute), 2); len(got) != 2 || got[0].Seq != 3 || got[1].Seq != 4 {
		t.Fatalf("since +2m, limit 2: got %+v, want records 3 and 4", got)
	}
	if n, err := r.VerifyAudit(); err != nil || n != 5 {
		t.Fatalf("intact log: %d, %v", n, err)
	}
}

// TestAuditTampering edits the store the way someone with write
// access to it would, and VerifyAudit finds each edit.
func TestAuditTampering(t *testing.T) { eachEngine(t, testAuditTampering) }

func testAuditTampering(t *testing.T, newTarget func(*testing.T) target) {
	t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	doc := func(r *Registry, seq int) []byte {
		var b []byte
		if err := r.w.QueryRow(r.q(`SELECT doc FROM audit WHERE seq = ?`), seq).Scan(&b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	set := func(r *Registry, seq int, b []byte) error {
		_, err := r.w.Exec(r.q(`UPDATE audit SET doc = ? WHERE seq = ?`), b, seq)
		return err
	}
	tests := []struct {
		name   string
		tamper func(r *Registry) error
	}{
		{"status edited", func(r *Registry) error {
			var rec AuditRecord
			if err := json.Unmarshal(doc(r, 2), &rec); err != nil {
				return err
			}
			rec.Status = 403
			p, _ := json.Marshal(&rec)
			return set(r, 2, p)
		}},
		{"actor edited", func(r *Registry) error {
			return set(r, 3, bytes.Replace(doc(r, 3), []byte("aaaaaaaaaaaaaaaa"), []byte("local"), 1))
		}},
		{"record deleted", func(r *Registry) error { _, err := r.w.Exec(`DELETE FROM audit WHERE seq = 2`); return err }},
		{"last record deleted", func(r *Registry) error { _, err := r.w.Exec(`DELETE FROM audit WHERE seq = 4`); return err }},
		{"records swapped", func(r *Registry) error {
			p2, p3 := doc(r, 2), doc(r, 3)
			if err := set(r, 2, p3); err != nil {
				return err
			}
			return set(r, 3, p2)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tg := newTarget(t)
			r, err := Open(tg.dir, tg.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			appendN(t, r, 4, t0)
			if err := tt.tamper(r); err != nil {
				t.Fatal(err)
			}
			if _, err := r.VerifyAudit(); !errors.Is(err, ErrTampered) {
				t.Fatalf("got %v, want ErrTampered", err)
			}
		})
	}
}
