package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/admin"
)

// TestTokensCommands runs the real binary: a fresh serve in bootstrap mode
// (said in its log), tokens create from loopback without a token, then
// every call needing one; the token taken from --token, OUTPOST_TOKEN and
// --token-file in that order; a viewer refused (403) what it may not do;
// tokens list without secrets; a revoked token refused (401); and audit
// showing the actors, as a table and as JSON, with its chain verified.
func TestTokensCommands(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, bin, serveOptions{})
	api := srv.admin
	// The line reaches logs through the pipe from the child: waited for.
	waitFor(t, 10*time.Second, "serve's log line that it is in bootstrap mode", func() (bool, string) {
		return strings.Contains(srv.logs.String(), "bootstrap mode"), ""
	})
	rootTok, errOut := cliEnv(t, bin, nil, 0, "tokens", "create", "--admin", api, "--role", "admin", "--name", "root")
	rootTok = strings.TrimSpace(rootTok)
	if !strings.HasPrefix(rootTok, admin.TokenPrefix) || !strings.Contains(errOut, "shown once") {
		t.Fatalf("tokens create: stdout %q, stderr %q", rootTok, errOut)
	}
	_, errOut = cliEnv(t, bin, nil, 1, "tokens", "list", "--admin", api)
	if !strings.Contains(errOut, "401") {
		t.Fatalf("tokens list without a token once one exists: %q", errOut)
	}
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte(rootTok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := admin.TokenPrefix + "0011223344556677_nope"
	// Each source alone, then the order: --token over OUTPOST_TOKEN over --token-file.
	cliEnv(t, bin, nil, 0, "tokens", "list", "--admin", api, "--token", rootTok)
	cliEnv(t, bin, []string{"OUTPOST_TOKEN=" + rootTok}, 0, "tokens", "list", "--admin", api)
	cliEnv(t, bin, nil, 0, "tokens", "list", "--admin", api, "--token-file", tokFile)
	cliEnv(t, bin, []string{"OUTPOST_TOKEN=" + rootTok}, 1, "tokens", "list", "--admin", api, "--token", bad)
	cliEnv(t, bin, []string{"OUTPOST_TOKEN=" + bad}, 0, "tokens", "list", "--admin", api, "--token", rootTok)
	cliEnv(t, bin, []string{"OUTPOST_TOKEN=" + bad}, 1, "tokens", "list", "--admin", api, "--token-file", tokFile)
	cliEnv(t, bin, []string{"OUTPOST_TOKEN=" + rootTok}, 0, "tokens", "list", "--admin", api, "--token-file", filepath.Join(t.TempDir(), "missing"))

	env := []string{"OUTPOST_TOKEN=" + rootTok}
	viewerTok, _ := cliEnv(t, bin, env, 0, "tokens", "create", "--admin", api, "--role", "viewer", "--name", "dash")
	viewerTok = strings.TrimSpace(viewerTok)
	venv := []string{"OUTPOST_TOKEN=" + viewerTok}
	cliEnv(t, bin, venv, 0, "devices", "list", "--admin", api)
	for _, args := range [][]string{
		{"tokens", "create", "--role", "viewer"},
		{"tokens", "list"},
		{"devices", "enroll", "gw-1"},
		{"rollout", "create", "--model", "face", "--version", "1"},
		{"audit"},
	} {
		_, errOut := cliEnv(t, bin, venv, 1, append(args, "--admin", api)...)
		if !strings.Contains(errOut, "403") {
			t.Errorf("viewer %v: want a 403, got %q", args, errOut)
		}
	}
	cliEnv(t, bin, env, 2, "tokens", "create", "--admin", api, "--role", "root")

	list, _ := cliEnv(t, bin, env, 0, "tokens", "list", "--admin", api)
	if !strings.Contains(list, "dash") || !strings.Contains(list, "viewer") || strings.Contains(list, viewerTok[len(admin.TokenPrefix)+17:]) {
		t.Fatalf("tokens list:\n%s", list)
	}
	viewerID := viewerTok[len(admin.TokenPrefix) : len(admin.TokenPrefix)+16]
	if out, _ := cliEnv(t, bin, env, 0, "tokens", "revoke", "--admin", api, viewerID); !strings.Contains(out, "revoked") {
		t.Fatalf("tokens revoke: %q", out)
	}
	if _, errOut := cliEnv(t, bin, venv, 1, "devices", "list", "--admin", api); !strings.Contains(errOut, "401") {
		t.Fatalf("revoked token: %q", errOut)
	}
	if _, errOut := cliEnv(t, bin, env, 1, "tokens", "revoke", "--admin", api, "0011223344556677"); !strings.Contains(errOut, "no token") {
		t.Fatalf("revoking an unknown token: %q", errOut)
	}

	table, _ := cliEnv(t, bin, env, 0, "audit", "--admin", api)
	if !strings.Contains(table, "chain verified") || !strings.Contains(table, "local") || !strings.Contains(table, "dash") {
		t.Fatalf("audit table:\n%s", table)
	}
	js, _ := cliEnv(t, bin, env, 0, "audit", "--admin", api, "-o", "json", "--since", "1h")
	var page admin.AuditPage
	if err := json.Unmarshal([]byte(js), &page); err != nil {
		t.Fatalf("audit -o json: %v\n%s", err, js)
	}
	var sawLocal, sawViewer403, sawRevoke bool
	for _, r := range page.Records {
		sawLocal = sawLocal || (r.Actor == admin.ActorLocal && r.Path == "/v1/tokens" && r.Status == 201)
		sawViewer403 = sawViewer403 || (r.Actor == viewerID && r.ActorName == "dash" && r.Path == "/v1/devices/gw-1/credential" && r.Status == 403)
		sawRevoke = sawRevoke || (r.Method == "DELETE" && r.Path == "/v1/tokens/"+viewerID && r.Status == 200 && r.ActorName == "root")
	}
	if !page.Verified || !sawLocal || !sawViewer403 || !sawRevoke {
		t.Fatalf("audit: verified %v, local %v, viewer's 403 %v, revoke %v:\n%s", page.Verified, sawLocal, sawViewer403, sawRevoke, js)
	}
}

// testCA makes a CA and a server certificate for 127.0.0.1 signed by it,
// written as PEM files in dir.
func testCA(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "outpost test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "outpost-fleet"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	caFile, certFile, keyFile = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "admin.pem"), filepath.Join(dir, "admin.key")
	for _, f := range []struct {
		path, typ string
		der       []byte
	}{{caFile, "CERTIFICATE", caDER}, {certFile, "CERTIFICATE", der}, {keyFile, "EC PRIVATE KEY", keyDER}} {
		if err := os.WriteFile(f.path, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}

// TestAdminTLS: admin_tls in fleet.yaml serves the API over TLS with a
// certificate from a private CA; the CLI trusts it with --ca or
// OUTPOST_CA and refuses it without; plain HTTP gets no answer.
func TestAdminTLS(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile, certFile, keyFile := testCA(t, dir)
	cfg := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(cfg, []byte("admin_tls:\n  cert: "+certFile+"\n  key: "+keyFile+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, bin, serveOptions{Args: []string{"--config", cfg}, NoWait: true})
	adminAddr, logs := srv.adminAddr(), srv.logs
	api := "https://" + adminAddr

	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := hc.Get(api + "/v1/health")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer: %v", api, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitFor(t, 10*time.Second, "serve's announcement of https", func() (bool, string) {
		return strings.Contains(logs.String(), "admin https://"+adminAddr), logs.String()
	})
	if _, errOut := cliEnv(t, bin, nil, 1, "devices", "list", "--admin", api); !strings.Contains(errOut, "certificate") {
		t.Fatalf("without --ca: %q", errOut)
	}
	tok, _ := cliEnv(t, bin, nil, 0, "tokens", "create", "--admin", api, "--ca", caFile, "--role", "admin")
	cliEnv(t, bin, []string{"OUTPOST_CA=" + caFile, "OUTPOST_TOKEN=" + strings.TrimSpace(tok)}, 0, "devices", "list", "--admin", api)
	if resp, err := http.Get("http://" + adminAddr + "/v1/health"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP answered 200 on the TLS admin port")
		}
	}
}
