package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/internal/testbroker"
)

// mqttLogin connects as id with user and password and returns the client
// and a channel that receives when the broker closes the connection.
func mqttLogin(url, id, pass string) (mqtt.Client, <-chan error, error) {
	lost := make(chan error, 1)
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(id).SetPassword(pass).
		SetAutoReconnect(false).SetConnectTimeout(5 * time.Second).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	c := mqtt.NewClient(o)
	t := c.Connect()
	t.WaitTimeout(10 * time.Second)
	if err := t.Error(); err != nil {
		return nil, nil, err
	}
	return c, lost, nil
}

// TestEnrollAndRevoke runs the real binary: once a device is enrolled the
// embedded broker refuses anonymous clients, the password written by
// devices enroll (mode 0600) logs the device in, devices revoke cuts it off
// and it cannot log in again; the controller's own client needs no password
// in any file and the admin API keeps answering throughout.
func TestEnrollAndRevoke(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	cli(t, bin, 0, "keys", "init", "--dir", keys)
	mqttAddr, adminAddr := freeAddr(t), freeAddr(t)
	admin := "http://" + adminAddr
	srv := exec.Command(bin, "serve", "--keys", keys, "--data-dir", filepath.Join(dir, "data"), "--fleet", "acme",
		"--listen-mqtt", mqttAddr, "--admin", adminAddr)
	var logs lockedBuffer
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		_ = srv.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("serve output:\n%s", logs.String())
		}
	})
	waitHTTP(t, admin+"/v1/health")
	url := "tcp://" + mqttAddr

	// Nothing enrolled: the broker is open, and says so.
	if c, _, err := mqttLogin(url, "early", ""); err != nil {
		t.Fatalf("before any enrolment: %v", err)
	} else {
		c.Disconnect(100)
	}
	if !strings.Contains(logs.String(), "open until the first device is enrolled") {
		t.Error("serve did not warn that its broker is open")
	}

	pw := filepath.Join(dir, "gw-1.password")
	if out := cli(t, bin, 0, "devices", "enroll", "--admin", admin, "--out", pw, "gw-1"); !strings.Contains(out, "fleet.password_file "+pw) {
		t.Fatalf("enroll output %q", out)
	}
	fi, err := os.Stat(pw)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("password file mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := os.ReadFile(pw)
	if err != nil {
		t.Fatal(err)
	}
	secret := strings.TrimSpace(string(b))
	if out := cli(t, bin, 1, "devices", "enroll", "--admin", admin, "gw-1"); !strings.Contains(out, "already holds a credential") {
		t.Fatalf("second enrolment: %q", out)
	}
	cli(t, bin, 1, "devices", "enroll", "--admin", admin, "outpost-fleet-acme")
	if out := cli(t, bin, 0, "devices", "enroll", "--admin", admin, "gw-2"); !strings.Contains(out, "shown once") {
		t.Fatalf("enroll to stdout: %q", out)
	}
	// The store's file and its write-ahead log (where fresh writes are).
	for _, f := range []string{"fleet.db", "fleet.db-wal"} {
		if data, err := os.ReadFile(filepath.Join(dir, "data", f)); err != nil || bytes.Contains(data, []byte(secret)) {
			t.Fatalf("the store's %s holds the secret itself (read error %v)", f, err)
		}
	}

	if c, _, err := mqttLogin(url, "anon", ""); err == nil {
		c.Disconnect(100)
		t.Fatal("an anonymous client connected once a device was enrolled")
	}
	c, lost, err := mqttLogin(url, "gw-1", secret)
	if err != nil {
		t.Fatalf("gw-1 with its credential: %v", err)
	}
	defer c.Disconnect(0)
	if out := cli(t, bin, 0, "devices", "revoke", "--admin", admin, "gw-1"); !strings.Contains(out, "disconnected: true") {
		t.Fatalf("revoke output %q", out)
	}
	select {
	case <-lost:
	case <-time.After(20 * time.Second):
		t.Fatal("gw-1 still connected after its revocation")
	}
	if c, _, err := mqttLogin(url, "gw-1", secret); err == nil {
		c.Disconnect(100)
		t.Fatal("gw-1 logged in after its revocation")
	}
	if out := cli(t, bin, 1, "devices", "revoke", "--admin", admin, "gw-9"); !strings.Contains(out, "no credential") {
		t.Fatalf("revoking an unknown device: %q", out)
	}
	// The controller is still connected: devices list answers.
	cli(t, bin, 0, "devices", "list", "--admin", admin)

	if err := srv.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Fatalf("serve exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop after SIGTERM")
	}
}

// TestServeRefusedByBroker: an external Mosquitto that refuses the
// controller's login makes serve exit non-zero at once, naming the broker
// and the refusal, instead of serving an admin API that never answers.
func TestServeRefusedByBroker(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	cli(t, bin, 0, "keys", "init", "--dir", keys)
	pw := filepath.Join(dir, "passwd")
	if err := os.WriteFile(pw, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	m := testbroker.StartMosquitto(t, "allow_anonymous false\npassword_file "+pw+"\n")
	start := time.Now()
	out := cli(t, bin, 1, "serve", "--keys", keys, "--data-dir", filepath.Join(dir, "data"), "--broker", m.URL(), "--admin", freeAddr(t))
	if !strings.Contains(out, m.URL()) || !strings.Contains(out, "refused the controller's login") {
		t.Fatalf("serve output does not name the broker and the refusal:\n%s", out)
	}
	t.Logf("serve gave up after %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
}

func TestBrokerACLCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "acl")
	var stdout, stderr bytes.Buffer
	if code := program.Dispatch(context.Background(), []string{"broker", "acl", "--fleet", "acme", "--out", out}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"user outpost-fleet\ntopic readwrite outpost/v1/acme/#", "pattern write outpost/v1/acme/%u/state",
		"pattern read outpost/v1/acme/%u/cmd", "pattern write outpost/v1/acme/artifacts/req"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("acl file lacks %q:\n%s", want, b)
		}
	}
	if code := program.Dispatch(context.Background(), []string{"broker", "acl", "--fleet", "a/b"}, &stdout, &stderr); code == 0 {
		t.Error("a fleet name with a slash was accepted")
	}
}

// TestServeLegacyUsers: fleet.yaml's plain mqtt.users still lock the
// embedded broker, with a warning, and the controller itself gets in without
// a login of its own in the file: the admin API answers (it used to hang).
func TestServeLegacyUsers(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys")
	cli(t, bin, 0, "keys", "init", "--dir", keys)
	cfg := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(cfg, []byte("fleet: acme\nmqtt:\n  users: {gw-1: s3cret}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	mqttAddr, adminAddr := freeAddr(t), freeAddr(t)
	srv := exec.Command(bin, "serve", "--config", cfg, "--keys", keys, "--data-dir", filepath.Join(dir, "data"),
		"--listen-mqtt", mqttAddr, "--admin", adminAddr)
	var logs lockedBuffer
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	t.Cleanup(func() {
		_ = srv.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("serve output:\n%s", logs.String())
		}
	})
	waitHTTP(t, "http://"+adminAddr+"/v1/health")
	cli(t, bin, 0, "devices", "list", "--admin", "http://"+adminAddr)
	if !strings.Contains(logs.String(), "mqtt.users holds plain passwords") {
		t.Error("serve did not warn about mqtt.users")
	}
	url := "tcp://" + mqttAddr
	if c, _, err := mqttLogin(url, "gw-1", "s3cret"); err != nil {
		t.Errorf("gw-1 with its mqtt.users password: %v", err)
	} else {
		c.Disconnect(100)
	}
	for _, l := range [][2]string{{"gw-1", "wrong"}, {"anon", ""}} {
		if c, _, err := mqttLogin(url, l[0], l[1]); err == nil {
			c.Disconnect(100)
			t.Errorf("%s with password %q connected", l[0], l[1])
		}
	}
}
