package registry

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

func TestCredentials(t *testing.T) { eachEngine(t, testCredentials) }

func testCredentials(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	r, err := Open(tg.dir, tg.opts)
	if err != nil {
		t.Fatal(err)
	}
	if found, err := r.AnyCredential(); err != nil || found {
		t.Fatalf("fresh registry: AnyCredential %v, %v; want false", found, err)
	}
	if _, ok, err := r.CredentialHash("gw-1"); ok || err != nil {
		t.Fatalf("unknown device: ok %v, err %v; want false, nil", ok, err)
	}
	if err := r.RevokeCredential("gw-1", time.Now()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoking an unknown device: got %v, want ErrNotFound", err)
	}
	now := time.Now()
	if err := r.PutCredential("gw-1", []byte("hash-1"), now); err != nil {
		t.Fatal(err)
	}
	if h, ok, err := r.CredentialHash("gw-1"); !ok || err != nil || !bytes.Equal(h, []byte("hash-1")) {
		t.Fatalf("got %q, %v, %v; want hash-1", h, ok, err)
	}
	if err := r.RevokeCredential("gw-1", now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := r.RevokeCredential("gw-1", now.Add(time.Hour)); err != nil {
		t.Fatalf("revoking twice: %v", err)
	}
	// Revocation survives a reopen, and the fleet stays enrolled.
	r.Close()
	if r, err = Open(tg.dir, tg.opts); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, ok, err := r.CredentialHash("gw-1"); ok || err != nil {
		t.Fatalf("revoked device: ok %v, err %v; want false, nil", ok, err)
	}
	c, err := r.Credential("gw-1")
	if err != nil || c.Revoked == nil || !c.Revoked.Equal(now.Add(time.Minute).UTC()) {
		t.Fatalf("got %+v, %v; want revoked at the first revocation", c, err)
	}
	if found, err := r.AnyCredential(); err != nil || !found {
		t.Fatalf("after a revocation: AnyCredential %v, %v; want true", found, err)
	}
	// Enrolling again replaces the revoked credential.
	if err := r.PutCredential("gw-1", []byte("hash-2"), now); err != nil {
		t.Fatal(err)
	}
	if h, ok, _ := r.CredentialHash("gw-1"); !ok || !bytes.Equal(h, []byte("hash-2")) {
		t.Fatalf("re-enrolled: got %q, %v; want hash-2", h, ok)
	}
}
