package controller_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/rollout"
)

// authClient makes admin API calls over real HTTP with a token ("" for
// none) and checks the status and the JSON error body.
type authClient struct {
	t    *testing.T
	base string
}

func (c authClient) call(token, method, path, ctype string, body io.Reader, want int, out any) http.Header {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		c.t.Fatalf("%s %s: got %d, want %d: %s", method, path, resp.StatusCode, want, b)
	}
	if resp.StatusCode >= 400 {
		var e map[string]string
		if json.Unmarshal(b, &e) != nil || e["error"] == "" {
			c.t.Fatalf("%s %s: error body %q is not {\"error\": ...}", method, path, b)
		}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
	return resp.Header
}

func (c authClient) mint(token, role, name string) admin.NewToken {
	c.t.Helper()
	var nt admin.NewToken
	c.call(token, "POST", "/v1/tokens", "application/json", strings.NewReader(`{"role":"`+role+`","name":"`+name+`"}`), 201, &nt)
	if !strings.HasPrefix(nt.Token, admin.TokenPrefix+nt.ID+"_") || nt.Role != role {
		c.t.Fatalf("minted %+v", nt)
	}
	return nt
}

// TestAdminRoles runs the role matrix over real HTTP against a real
// controller: bootstrap from loopback until the first token, then viewer,
// operator and admin each allowed exactly their calls (403 otherwise), 401
// without a token, with a wrong secret or a revoked token, and every
// mutating call in the audit log with its actor and status.
func TestAdminRoles(t *testing.T) {
	f := startFleet(t, controller.Options{})
	c := authClient{t: t, base: "http://" + f.c.AdminAddr()}

	// Bootstrap: no token exists, loopback may call without one.
	c.call("", "GET", "/v1/models", "", nil, 200, nil)
	root := c.mint("", "admin", "root")
	// From now on every request needs a token, loopback included.
	c.call("", "GET", "/v1/models", "", nil, 401, nil)
	c.call("", "POST", "/v1/tokens", "application/json", strings.NewReader(`{"role":"admin"}`), 401, nil)
	c.call("", "GET", "/v1/health", "", nil, 200, nil)
	viewer := c.mint(root.Token, "viewer", "dash")
	op := c.mint(root.Token, "operator", "ci")
	c.call(root.Token, "POST", "/v1/tokens", "application/json", strings.NewReader(`{"role":"god"}`), 400, nil)

	model, rel := f.artifact("face", 1, 1000)
	push := func(tok string, want int) {
		t.Helper()
		ct, body := multipartBody(t, [2][]byte{[]byte("release"), rel}, [2][]byte{[]byte("model"), model})
		c.call(tok, "POST", "/v1/models", ct, body, want, nil)
	}
	createRollout := func(tok string, want int) string {
		t.Helper()
		var rep rollout.Report
		var out any
		if want == 201 {
			out = &rep
		}
		c.call(tok, "POST", "/v1/rollouts", "application/json", strings.NewReader(`{"model":"face","version":1}`), want, out)
		return rep.ID
	}
	enroll := `/v1/devices/gw-1/credential`

	// Viewer: reads, nothing else, and never sees tokens or the audit log.
	c.call(viewer.Token, "GET", "/v1/models", "", nil, 200, nil)
	c.call(viewer.Token, "GET", "/v1/devices", "", nil, 200, nil)
	c.call(viewer.Token, "GET", "/v1/rollouts", "", nil, 200, nil)
	push(viewer.Token, 403)
	createRollout(viewer.Token, 403)
	c.call(viewer.Token, "POST", enroll, "", nil, 403, nil)
	c.call(viewer.Token, "POST", "/v1/tokens", "application/json", strings.NewReader(`{"role":"viewer"}`), 403, nil)
	c.call(viewer.Token, "GET", "/v1/tokens", "", nil, 403, nil)
	c.call(viewer.Token, "GET", "/v1/audit", "", nil, 403, nil)

	// Operator: pushes and rolls out, but neither enrols nor mints.
	push(op.Token, 201)
	id := createRollout(op.Token, 201)
	c.call(viewer.Token, "POST", "/v1/rollouts/"+id+"/pause", "", nil, 403, nil)
	c.call(viewer.Token, "POST", "/v1/rollouts/"+id+"/abort", "", nil, 403, nil)
	c.call(op.Token, "POST", "/v1/rollouts/"+id+"/pause", "", nil, 200, nil)
	c.call(op.Token, "POST", "/v1/rollouts/"+id+"/resume", "", nil, 200, nil)
	c.call(op.Token, "POST", "/v1/rollouts/"+id+"/abort", "", nil, 200, nil)
	c.call(op.Token, "POST", enroll, "", nil, 403, nil)
	c.call(op.Token, "POST", "/v1/tokens", "application/json", strings.NewReader(`{"role":"admin"}`), 403, nil)
	c.call(op.Token, "DELETE", "/v1/tokens/"+viewer.ID, "", nil, 403, nil)
	c.call(op.Token, "GET", "/v1/tokens", "", nil, 403, nil)

	// Admin: everything.
	c.call(root.Token, "POST", enroll, "", nil, 201, nil)
	c.call(root.Token, "DELETE", enroll, "", nil, 200, nil)
	var list []json.RawMessage
	c.call(root.Token, "GET", "/v1/tokens", "", nil, 200, &list)
	if len(list) != 3 {
		t.Fatalf("got %d tokens, want 3", len(list))
	}
	for _, raw := range list {
		if bytes.Contains(raw, []byte(`"hash"`)) || bytes.Contains(raw, []byte(`"token"`)) {
			t.Fatalf("token list shows a secret or hash: %s", raw)
		}
	}

	// Bad credentials: a wrong secret for a real id, garbage, a revoked token.
	forged := admin.TokenPrefix + op.ID + "_" + strings.Repeat("A", 43)
	c.call(forged, "GET", "/v1/models", "", nil, 401, nil)
	c.call("not-a-token", "GET", "/v1/models", "", nil, 401, nil)
	c.call(root.Token, "DELETE", "/v1/tokens/"+op.ID, "", nil, 200, nil)
	c.call(root.Token, "DELETE", "/v1/tokens/0011223344556677", "", nil, 404, nil)
	c.call(op.Token, "GET", "/v1/models", "", nil, 401, nil)
	push(op.Token, 401)

	var page admin.AuditPage
	c.call(root.Token, "GET", "/v1/audit", "", nil, 200, &page)
	if !page.Verified || page.Count != len(page.Records) {
		t.Fatalf("audit chain: verified %v, count %d of %d records: %s", page.Verified, page.Count, len(page.Records), page.ChainError)
	}
	type key struct {
		actor, name, method, path string
		status                    int
	}
	seen := map[key]bool{}
	for _, r := range page.Records {
		if r.Method == "GET" {
			t.Errorf("audit records a read: %+v", r)
		}
		seen[key{r.Actor, r.ActorName, r.Method, r.Path, r.Status}] = true
	}
	for _, want := range []key{
		{admin.ActorLocal, "", "POST", "/v1/tokens", 201},
		{root.ID, "root", "POST", "/v1/tokens", 201},
		{viewer.ID, "dash", "POST", "/v1/models", 403},
		{viewer.ID, "dash", "POST", "/v1/rollouts/" + id + "/abort", 403},
		{op.ID, "ci", "POST", "/v1/models", 201},
		{op.ID, "ci", "POST", "/v1/rollouts", 201},
		{op.ID, "ci", "POST", "/v1/rollouts/" + id + "/abort", 200},
		{op.ID, "ci", "POST", enroll, 403},
		{root.ID, "root", "POST", enroll, 201},
		{root.ID, "root", "DELETE", enroll, 200},
		{root.ID, "root", "DELETE", "/v1/tokens/" + op.ID, 200},
	} {
		if !seen[want] {
			t.Errorf("audit has no record %+v", want)
		}
	}
	for k := range seen {
		if k.status == 401 {
			t.Errorf("audit records an unauthenticated call as an actor's: %+v", k)
		}
	}
	var limited admin.AuditPage
	c.call(root.Token, "GET", "/v1/audit?limit=2&since="+page.Records[1].Time.Format("2006-01-02T15:04:05Z07:00"), "", nil, 200, &limited)
	if len(limited.Records) != 2 {
		t.Fatalf("limit 2: got %d records", len(limited.Records))
	}
	c.call(root.Token, "GET", "/v1/audit?since=yesterday", "", nil, 400, nil)
}

// TestAdminFailedAuthLimited: failed authentications from one address are
// answered 401 up to the burst, then 429 with a Retry-After; a good token
// from the same address still works.
func TestAdminFailedAuthLimited(t *testing.T) {
	f := startFleet(t, controller.Options{})
	c := authClient{t: t, base: "http://" + f.c.AdminAddr()}
	root := c.mint("", "admin", "root")
	const burst = 10 // the admin API's default
	for range burst {
		c.call("opt_0011223344556677_guess", "GET", "/v1/models", "", nil, 401, nil)
	}
	h := c.call("opt_0011223344556677_guess", "GET", "/v1/models", "", nil, 429, nil)
	if s, err := strconv.Atoi(h.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After %q, want a positive number of seconds", h.Get("Retry-After"))
	}
	c.call("", "GET", "/v1/models", "", nil, 429, nil)
	c.call(root.Token, "GET", "/v1/models", "", nil, 200, nil)
}
