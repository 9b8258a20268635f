package ratelimit

import (
	"net/http/httptest"
	"testing"
	"time"
)

// TestPerKey: burst tokens pass, the next waits 1/rate, refills follow
// the clock, keys are separate, idle buckets are dropped.
func TestPerKey(t *testing.T) {
	now := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	l := New(0.5, 3, func() time.Time { return now })
	for i := range 3 {
		if _, ok := l.Allow("a"); !ok {
			t.Fatalf("token %d refused within the burst", i+1)
		}
	}
	wait, ok := l.Allow("a")
	if ok || wait != 2*time.Second {
		t.Fatalf("past the burst: got %v, %v; want refused, wait 2s", wait, ok)
	}
	if _, ok := l.Allow("b"); !ok {
		t.Fatal("another key was limited")
	}
	now = now.Add(2 * time.Second)
	if _, ok := l.Allow("a"); !ok {
		t.Fatal("not refilled after 1/rate")
	}
	if _, ok := l.Allow("a"); ok {
		t.Fatal("refilled more than one")
	}
	now = now.Add(time.Hour)
	l.Allow("c") // collects idle buckets
	if n := l.Len(); n != 1 {
		t.Fatalf("got %d buckets after an hour idle, want 1", n)
	}
}

func TestDefaultBurst(t *testing.T) {
	now := time.Now()
	l := New(5, 0, func() time.Time { return now })
	for i := range 5 {
		if _, ok := l.Allow("a"); !ok {
			t.Fatalf("token %d of a default burst of 5 refused", i+1)
		}
	}
	if _, ok := l.Allow("a"); ok {
		t.Fatal("a sixth token passed a default burst of 5")
	}
}

func TestClientKey(t *testing.T) {
	for _, tt := range []struct{ remote, want string }{
		{"192.0.2.1:4000", "192.0.2.1"},
		{"[2001:db8::1]:4000", "2001:db8::1"},
		{"@", "@"},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tt.remote
		if got := ClientKey(r); got != tt.want {
			t.Errorf("ClientKey(%q): got %q, want %q", tt.remote, got, tt.want)
		}
	}
}
