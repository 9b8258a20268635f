package admin

import (
	"context"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/protocol"
)

// noSender refuses to send: the requests of these tests never start a
// rollout, so no command is ever sent (the controller's tests run the
// real one).
type noSender struct{}

func (noSender) Send(context.Context, *protocol.Command) error {
	return errors.New("admin test: no sender")
}

func newTestServer(t *testing.T) *Server {
	t.Helper()
	reg, err := registry.Open(t.TempDir(), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	k, err := keyring.Init(filepath.Join(t.TempDir(), "keys"), keyring.Options{})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := rollout.New(rollout.Options{Registry: reg, Sender: noSender{}, Fleet: "default"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Options{Addr: "127.0.0.1:0", Registry: reg, Engine: eng, Root: k.Root()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.ln.Close() })
	return s
}

// TestBootstrapLoopbackOnly: with no token, a request without one is
// served from a loopback address (as actor local) and refused from any
// other; once a token exists, loopback needs one too.
func TestBootstrapLoopbackOnly(t *testing.T) {
	s := newTestServer(t)
	do := func(remote, method, path, body, token string) int {
		t.Helper()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.RemoteAddr = remote
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, req)
		return w.Code
	}
	tests := []struct {
		remote string
		want   int
	}{
		{"127.0.0.1:5000", 200},
		{"[::1]:5000", 200},
		{"192.0.2.7:5000", 401},
		{"[2001:db8::1]:5000", 401},
	}
	for _, tt := range tests {
		if got := do(tt.remote, "GET", "/v1/models", "", ""); got != tt.want {
			t.Errorf("bootstrap, from %s: got %d, want %d", tt.remote, got, tt.want)
		}
	}
	if got := do("192.0.2.7:5000", "POST", "/v1/tokens", `{"role":"admin"}`, ""); got != 401 {
		t.Fatalf("minting a token from the network in bootstrap mode: got %d, want 401", got)
	}
	if got := do("127.0.0.1:5000", "POST", "/v1/tokens", `{"role":"viewer"}`, ""); got != 201 {
		t.Fatalf("minting the first token from loopback: got %d, want 201", got)
	}
	if got := do("127.0.0.1:5000", "GET", "/v1/models", "", ""); got != 401 {
		t.Fatalf("loopback without a token once one exists: got %d, want 401", got)
	}
	// A restarted server over the same registry is out of bootstrap too.
	s2, err := New(Options{Addr: "127.0.0.1:0", Registry: s.opts.Registry, Engine: s.opts.Engine, Root: s.opts.Root})
	if err != nil {
		t.Fatal(err)
	}
	s2.ln.Close()
	req := httptest.NewRequest("GET", "/v1/models", nil)
	req.RemoteAddr = "127.0.0.1:5000"
	w := httptest.NewRecorder()
	s2.Handler().ServeHTTP(w, req)
	if w.Code != 401 {
		t.Fatalf("after a restart with a token stored, loopback without one: got %d, want 401", w.Code)
	}
	recs, err := s.opts.Registry.Audit(time.Time{}, 0)
	if err != nil || len(recs) != 1 || recs[0].Actor != ActorLocal || recs[0].Status != 201 || recs[0].Remote != "127.0.0.1" {
		t.Fatalf("audit: got %+v, %v; want one record by local", recs, err)
	}
}

func TestParseToken(t *testing.T) {
	id, secret, tok, err := newToken()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		in     string
		ok     bool
		id, sc string
	}{
		{tok, true, id, secret},
		{"opt_0011223344556677_a_b-c", true, "0011223344556677", "a_b-c"},
		{"", false, "", ""},
		{"opt_", false, "", ""},
		{"opt_0011223344556677", false, "", ""},
		{"opt_0011223344556677_", false, "", ""},
		{"opt_001122334455667_x", false, "", ""},
		{"opt_00112233445566zz_x", false, "", ""},
		{"xyz_0011223344556677_x", false, "", ""},
	}
	for _, tt := range tests {
		gid, gsc, ok := parseToken(tt.in)
		if ok != tt.ok || gid != tt.id || gsc != tt.sc {
			t.Errorf("parseToken(%q): got %q, %q, %v; want %q, %q, %v", tt.in, gid, gsc, ok, tt.id, tt.sc, tt.ok)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	for _, s := range []string{"opt_0011223344556677_secret", "opt__", "opt_0011223344556677_", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, ok := parseToken(s)
		if ok && s != TokenPrefix+id+"_"+secret {
			t.Fatalf("parseToken(%q) = %q, %q: does not rebuild the input", s, id, secret)
		}
	})
}

// TestRequiredRoles pins the route table of roles.
func TestRequiredRoles(t *testing.T) {
	tests := []struct {
		method, path string
		want         Role
	}{
		{"GET", "/v1/health", ""},
		{"GET", "/v1/models", RoleViewer},
		{"GET", "/v1/rollouts/r-1/devices", RoleViewer},
		{"GET", "/v1/stats", RoleViewer},
		{"POST", "/v1/models", RoleOperator},
		{"POST", "/v1/rollouts", RoleOperator},
		{"POST", "/v1/rollouts/r-1/abort", RoleOperator},
		{"POST", "/v1/devices/gw/credential", RoleAdmin},
		{"DELETE", "/v1/devices/gw/credential", RoleAdmin},
		{"GET", "/v1/tokens", RoleAdmin},
		{"POST", "/v1/tokens", RoleAdmin},
		{"DELETE", "/v1/tokens/x", RoleAdmin},
		{"GET", "/v1/audit", RoleAdmin},
		{"PUT", "/v1/models", RoleAdmin},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, tt.path, nil)
		if got := required(r); got != tt.want {
			t.Errorf("%s %s: got %q, want %q", tt.method, tt.path, got, tt.want)
		}
	}
}

// TestExposure: a non-loopback address without TLS is warned about, louder
// while no token exists; loopback or TLS are not.
func TestExposure(t *testing.T) {
	tests := []struct {
		addr      string
		tls, boot bool
		want      string
	}{
		{"127.0.0.1:8490", false, true, ""},
		{"[::1]:8490", false, true, ""},
		{"0.0.0.0:8490", false, true, "ADMIN API EXPOSED"},
		{"[::]:8490", false, false, "ADMIN API WITHOUT TLS"},
		{"192.0.2.7:8490", false, false, "ADMIN API WITHOUT TLS"},
		{"192.0.2.7:8490", true, true, ""},
	}
	for _, tt := range tests {
		got := exposure(tt.addr, tt.tls, tt.boot)
		if (tt.want == "") != (got == "") || !strings.HasPrefix(got, tt.want) {
			t.Errorf("exposure(%s, tls %v, bootstrap %v): got %q, want %q...", tt.addr, tt.tls, tt.boot, got, tt.want)
		}
	}
}
