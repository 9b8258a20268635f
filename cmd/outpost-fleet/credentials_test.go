package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/internal/enrolment"
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
	srv := startServe(t, bin, serveOptions{Fleet: "acme"})
	admin, logs, dir := srv.admin, srv.logs, srv.dir
	url := "tcp://" + srv.mqtt

	// Nothing enrolled: the broker is open, and says so.
	if c, _, err := mqttLogin(url, "early", ""); err != nil {
		t.Fatalf("before any enrolment: %v", err)
	} else {
		c.Disconnect(100)
	}
	// The broker warns before it serves; the line reaches logs through the
	// pipe from the child, so it is waited for, not read at once.
	waitFor(t, 10*time.Second, "serve's warning that its broker is open", func() (bool, string) {
		return strings.Contains(logs.String(), "open until the first device is enrolled"), ""
	})

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

	if err := srv.stop(t); err != nil {
		t.Fatalf("serve exited with %v after SIGTERM", err)
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
	out := cli(t, bin, 1, "serve", "--keys", keys, "--data-dir", filepath.Join(dir, "data"), "--broker", m.URL(), "--admin", testbroker.FreeAddr(t))
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
	cfg := filepath.Join(t.TempDir(), "fleet.yaml")
	if err := os.WriteFile(cfg, []byte("fleet: acme\nmqtt:\n  users: {gw-1: s3cret}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, bin, serveOptions{Args: []string{"--config", cfg}})
	cli(t, bin, 0, "devices", "list", "--admin", srv.admin)
	waitFor(t, 10*time.Second, "serve's warning about mqtt.users", func() (bool, string) {
		return strings.Contains(srv.logs.String(), "mqtt.users holds plain passwords"), ""
	})
	url := "tcp://" + srv.mqtt
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

// TestEnrollBundle: devices enroll --bundle writes a bundle (mode 0600) the
// agent's parser accepts, with the fleet, the device, its labels, the
// fleet's root and a password that logs the device in; the broker is the
// controller's (with a warning that it is loopback) unless --broker names
// another, or the nodes of a cluster; --clean-session is carried; after devices revoke the bundle's password is refused.
func TestEnrollBundle(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	srv := startServe(t, bin, serveOptions{Fleet: "acme"})
	dir := t.TempDir()
	path := filepath.Join(dir, "gw-1.bundle")
	cli(t, bin, 2, "devices", "enroll", "--admin", srv.admin, "--labels", "site=north", "gw-1")
	cli(t, bin, 2, "devices", "enroll", "--admin", srv.admin, "--bundle", path, "--broker", "http://x", "gw-1")
	cli(t, bin, 2, "devices", "enroll", "--admin", srv.admin, "--bundle", path, "--labels", "site", "gw-1")
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("a refused enrolment wrote a bundle (stat: %v)", err)
	}
	stdout, stderr := cliEnv(t, bin, nil, 0, "devices", "enroll", "--admin", srv.admin, "--bundle", path, "--labels", "site=north,tier=2", "gw-1")
	if !strings.Contains(stdout, "mode 0600") || !strings.Contains(stdout, "password") || !strings.Contains(stderr, "cannot reach") {
		t.Fatalf("enroll --bundle: stdout %q, stderr %q", stdout, stderr)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("bundle mode %v, want 0600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := enrolment.Parse(data)
	if err != nil {
		t.Fatalf("the bundle written does not parse: %v", err)
	}
	f := b.Fleet
	if f.Name != "acme" || f.Device != "gw-1" || f.Username != "gw-1" || f.Broker != "tcp://"+srv.mqtt ||
		f.Labels["site"] != "north" || f.Labels["tier"] != "2" || !bytes.Equal(b.Root, srv.keys.Root().Raw) || f.CleanSession {
		t.Fatalf("bundle fleet %+v, root %d bytes (want %d)", f, len(b.Root), len(srv.keys.Root().Raw))
	}

	// --broker names the broker devices dial, without a warning.
	other := filepath.Join(dir, "gw-2.bundle")
	_, stderr = cliEnv(t, bin, nil, 0, "devices", "enroll", "--admin", srv.admin, "--bundle", other, "--broker", "ssl://fleet.example:8883", "gw-2")
	if strings.Contains(stderr, "cannot reach") {
		t.Errorf("a warning with --broker: %q", stderr)
	}
	if data, err := os.ReadFile(other); err != nil {
		t.Fatal(err)
	} else if b2, err := enrolment.Parse(data); err != nil || b2.Fleet.Broker != "ssl://fleet.example:8883" || b2.Fleet.Labels != nil {
		t.Fatalf("bundle with --broker: %+v, %v", b2, err)
	}

	// A clustered broker: --broker takes the nodes, in order, as serve does.
	cluster := filepath.Join(dir, "gw-3.bundle")
	cli(t, bin, 2, "devices", "enroll", "--admin", srv.admin, "--bundle", cluster, "--broker", "tcp://a.example:1883,tcp://a.example:1883", "gw-3")
	cliEnv(t, bin, nil, 0, "devices", "enroll", "--admin", srv.admin, "--bundle", cluster, "--replace", "--broker", "tcp://a.example:1883, tcp://b.example:1883,ssl://c.example:8883", "gw-3")
	want := []string{"tcp://a.example:1883", "tcp://b.example:1883", "ssl://c.example:8883"}
	if data, err := os.ReadFile(cluster); err != nil {
		t.Fatal(err)
	} else if b3, err := enrolment.Parse(data); err != nil || b3.Fleet.Broker != want[0] || !slices.Equal(b3.Fleet.BrokerList(), want) {
		t.Fatalf("bundle with --broker a,b,c: %+v, %v; want brokers %q", b3, err, want)
	}

	// --clean-session goes into the bundle, and only there.
	cli(t, bin, 2, "devices", "enroll", "--admin", srv.admin, "--clean-session", "gw-4")
	clean := filepath.Join(dir, "gw-4.bundle")
	cli(t, bin, 0, "devices", "enroll", "--admin", srv.admin, "--bundle", clean, "--clean-session", "gw-4")
	if data, err := os.ReadFile(clean); err != nil {
		t.Fatal(err)
	} else if b4, err := enrolment.Parse(data); err != nil || !b4.Fleet.CleanSession {
		t.Fatalf("bundle with --clean-session: %+v, %v", b4, err)
	}

	url := "tcp://" + srv.mqtt
	c, lost, err := mqttLogin(url, "gw-1", b.Password)
	if err != nil {
		t.Fatalf("gw-1 with the bundle's password: %v", err)
	}
	defer c.Disconnect(0)
	cli(t, bin, 0, "devices", "revoke", "--admin", srv.admin, "gw-1")
	select {
	case <-lost:
	case <-time.After(20 * time.Second):
		t.Fatal("gw-1 still connected after its revocation")
	}
	if c, _, err := mqttLogin(url, "gw-1", b.Password); err == nil {
		c.Disconnect(100)
		t.Fatal("the revoked bundle's password logged in")
	}
}
