package broker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/testbroker"
)

const aclFleet = "f1"

// connectAs connects a client with the given client id, user and password.
//
// The session is persistent, as a device's is. With clean sessions, a
// client that connects again with the same id just as its previous
// connection closes can end up connected but out of mochi's (v2.7.9) client
// list, receiving nothing: the closing connection's handler deletes the id
// from the list after checking that it was not taken over, and the new
// connection can be added in between. A persistent session is never
// deleted on disconnect, so devices and the controller cannot meet this;
// this test did, about one run in thirty under load, while it used clean
// sessions.
func connectAs(url, id, user, pass string) (mqtt.Client, error) {
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(user).SetPassword(pass).
		SetConnectTimeout(5 * time.Second).SetAutoReconnect(false).SetCleanSession(false)
	c := mqtt.NewClient(o)
	t := c.Connect()
	if !t.WaitTimeout(10 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if t.Error() != nil {
		return nil, t.Error()
	}
	return c, nil
}

// login is how a test logs in as a device or as the controller.
type login struct{ user, pass string }

// testConfinement runs the impersonation and subscription checks against a
// broker at url: gw-1, holding its own credential, tries every topic of gw-2
// that a device must not touch, while an observer with the controller's
// rights watches the whole fleet. subackGranted accepts a granted SUBACK
// for a filter the device may not read, if nothing is delivered on it.
func testConfinement(t *testing.T, url string, ctl, gw1 login, subackGranted bool) {
	t.Helper()
	base := "outpost/v1/" + aclFleet + "/"
	var mu sync.Mutex
	var seen []string
	marker := make(chan struct{})
	var once sync.Once
	obs, err := connectAs(url, "observer-"+ctl.user, ctl.user, ctl.pass)
	if err != nil {
		t.Fatalf("controller login: %v", err)
	}
	defer obs.Disconnect(100)
	tok := obs.Subscribe(base+"#", 1, func(_ mqtt.Client, m mqtt.Message) {
		if string(m.Payload()) == "forged" {
			mu.Lock()
			seen = append(seen, m.Topic())
			mu.Unlock()
		}
		if m.Topic() == base+"gw-1/status" && string(m.Payload()) == "marker" {
			once.Do(func() { close(marker) })
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("controller subscribe: %v", tok.Error())
	}

	// Publishing as another device: each attempt on its own connection,
	// since the embedded broker disconnects an MQTT 3.1.1 client whose
	// QoS 1 publish it refuses, where Mosquitto drops it silently.
	for _, leaf := range []string{"state", "status", "ack", "events", "cmd", "chunk"} {
		c, err := connectAs(url, gw1.user, gw1.user, gw1.pass)
		if err != nil {
			t.Fatalf("gw-1 login: %v", err)
		}
		// Until the PUBACK (Mosquitto) or the broker closing the
		// connection (embedded): a persistent session's token waits for
		// a resend that never comes.
		pt := c.Publish(base+"gw-2/"+leaf, 1, false, "forged")
		for end := time.Now().Add(5 * time.Second); !pt.WaitTimeout(10*time.Millisecond) && c.IsConnectionOpen() && time.Now().Before(end); {
		}
		c.Disconnect(100)
	}
	// Subscribing to another device's commands and chunks, or to
	// wildcards: the embedded broker refuses with SUBACK 0x80; Mosquitto
	// 2.0 grants the subscription but delivers nothing its read rules
	// deny. Either way nothing of gw-2's reaches gw-1, which the
	// controller's publishes below prove.
	c, err := connectAs(url, gw1.user, gw1.user, gw1.pass)
	if err != nil {
		t.Fatalf("gw-1 login: %v", err)
	}
	defer c.Disconnect(100)
	got := make(chan string, 64)
	for filter, want := range map[string]byte{
		base + "gw-2/cmd": 0x80, base + "gw-2/chunk": 0x80, base + "+/cmd": 0x80, base + "#": 0x80,
		base + "gw-2/events": 0x80, "#": 0x80, base + "gw-1/cmd": 1, base + "gw-1/chunk": 1,
	} {
		st := c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) { got <- m.Topic() })
		if !st.WaitTimeout(10*time.Second) || st.Error() != nil {
			t.Fatalf("subscribe %s: %v", filter, st.Error())
		}
		code := st.(*mqtt.SubscribeToken).Result()[filter]
		if code != want && (want != 0x80 || !subackGranted) {
			t.Errorf("subscribe %s as gw-1: got SUBACK %#x, want %#x", filter, code, want)
		}
	}
	for _, topic := range []string{base + "gw-2/cmd", base + "gw-2/chunk", base + "gw-1/cmd"} {
		if pt := obs.Publish(topic, 1, false, "for "+topic); !pt.WaitTimeout(10*time.Second) || pt.Error() != nil {
			t.Fatalf("controller publish %s: %v", topic, pt.Error())
		}
	}
	for done := false; !done; {
		select {
		case topic := <-got:
			if topic == base+"gw-1/cmd" {
				done = true // the last one published
			} else {
				t.Errorf("gw-1 received %s", topic)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("gw-1 never received its own command")
		}
	}
	// Its own topics work: the marker goes after every forged publish.
	if pt := c.Publish(base+"gw-1/status", 1, false, "marker"); !pt.WaitTimeout(10*time.Second) || pt.Error() != nil {
		t.Fatalf("gw-1 publishing its own status: %v", pt.Error())
	}
	select {
	case <-marker:
	case <-time.After(20 * time.Second):
		t.Fatal("gw-1's own status never reached the controller")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, topic := range seen {
		t.Errorf("a forged publish as gw-1 reached %s", topic)
	}
}

// enrolled opens a registry in a temporary directory with gw-1 and gw-2
// enrolled, and returns it with their secrets.
func enrolled(t testing.TB) (*registry.Registry, map[string]string) {
	t.Helper()
	reg, err := registry.Open(t.TempDir(), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	secrets := map[string]string{}
	for _, d := range []string{"gw-1", "gw-2"} {
		s, err := NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.PutCredential(d, HashSecret(d, s), time.Now()); err != nil {
			t.Fatal(err)
		}
		secrets[d] = s
	}
	return reg, secrets
}

func TestEmbeddedConfinesDevices(t *testing.T) {
	reg, secrets := enrolled(t)
	b := run(t, Options{Fleet: aclFleet, Credentials: reg})
	testConfinement(t, b.URL(), login{ControllerUser, b.ControllerPassword()}, login{"gw-1", secrets["gw-1"]}, false)
}

func TestEmbeddedLogins(t *testing.T) {
	reg, secrets := enrolled(t)
	b := run(t, Options{Fleet: aclFleet, Credentials: reg})
	for _, c := range []struct {
		name, id, user, pass string
		ok                   bool
	}{
		{"own credential", "gw-1", "gw-1", secrets["gw-1"], true},
		{"another device's credential", "gw-1", "gw-1", secrets["gw-2"], false},
		{"client id of another device", "gw-2", "gw-1", secrets["gw-1"], false},
		{"unknown device", "gw-3", "gw-3", secrets["gw-1"], false},
		{"anonymous", "anon", "", "", false},
		{"controller without its secret", ControllerUser, ControllerUser, secrets["gw-1"], false},
		{"controller", "outpost-fleet-" + aclFleet, ControllerUser, b.ControllerPassword(), true},
	} {
		c2, err := connectAs(b.URL(), c.id, c.user, c.pass)
		if err == nil {
			c2.Disconnect(100)
		}
		if (err == nil) != c.ok {
			t.Errorf("%s: connect error %v, want success %v", c.name, err, c.ok)
		}
	}
}

func TestEmbeddedOpenUntilEnrolment(t *testing.T) {
	reg, err := registry.Open(t.TempDir(), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	b := run(t, Options{Fleet: aclFleet, Credentials: reg})
	c, err := connectAs(b.URL(), "anon", "", "")
	if err != nil {
		t.Fatalf("nothing enrolled: %v", err)
	}
	c.Disconnect(100)
	if err := reg.PutCredential("gw-1", HashSecret("gw-1", "x"), time.Now()); err != nil {
		t.Fatal(err)
	}
	if c, err := connectAs(b.URL(), "anon", "", ""); err == nil {
		c.Disconnect(100)
		t.Fatal("anonymous client connected once a device was enrolled")
	}
	forced := run(t, Options{Fleet: aclFleet, Credentials: reg, Open: true})
	c, err = connectAs(forced.URL(), "anon", "", "")
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	c.Disconnect(100)
}

func TestEmbeddedRevoke(t *testing.T) {
	reg, secrets := enrolled(t)
	b := run(t, Options{Fleet: aclFleet, Credentials: reg})
	lost := make(chan error, 1)
	o := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("gw-1").SetUsername("gw-1").SetPassword(secrets["gw-1"]).
		SetAutoReconnect(false).SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err })
	c := mqtt.NewClient(o)
	if t2 := c.Connect(); !t2.WaitTimeout(10*time.Second) || t2.Error() != nil {
		t.Fatalf("connect: %v", t2.Error())
	}
	defer c.Disconnect(0)
	if err := reg.RevokeCredential("gw-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if !b.Disconnect("gw-1") {
		t.Fatal("Disconnect: gw-1 was not connected")
	}
	select {
	case <-lost:
	case <-time.After(20 * time.Second):
		t.Fatal("revoked device still connected")
	}
	if c, err := connectAs(b.URL(), "gw-1", "gw-1", secrets["gw-1"]); err == nil {
		c.Disconnect(100)
		t.Fatal("revoked device connected again")
	}
	if c, err := connectAs(b.URL(), "gw-2", "gw-2", secrets["gw-2"]); err != nil {
		t.Fatalf("another device after a revocation: %v", err)
	} else {
		c.Disconnect(100)
	}
}

// TestMosquittoConfinesDevices runs the same checks against the real
// Mosquitto with the ACL file MosquittoACL writes and a password file made
// by mosquitto_passwd.
func TestMosquittoConfinesDevices(t *testing.T) {
	passwd, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto_passwd not installed")
		}
		t.Skip("mosquitto_passwd not installed (it comes with mosquitto)")
	}
	dir := t.TempDir()
	acl, pw := filepath.Join(dir, "acl"), filepath.Join(dir, "passwd")
	f, err := os.Create(acl)
	if err != nil {
		t.Fatal(err)
	}
	if err := MosquittoACL(f, aclFleet); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	users := map[string]string{}
	for _, u := range []string{ControllerUser, "gw-1", "gw-2"} {
		s, err := NewSecret()
		if err != nil {
			t.Fatal(err)
		}
		users[u] = s
		args := []string{"-b", pw, u, s}
		if _, err := os.Stat(pw); err != nil {
			args = append([]string{"-c"}, args...)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := exec.CommandContext(ctx, passwd, args...).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("mosquitto_passwd: %v: %s", err, out)
		}
	}
	// A password file mosquitto (run as root, switching to its own user)
	// must read.
	if err := os.Chmod(pw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(acl, 0o644); err != nil {
		t.Fatal(err)
	}
	m := testbroker.StartMosquitto(t, fmt.Sprintf("allow_anonymous false\npassword_file %s\nacl_file %s\n", pw, acl))
	if c, err := connectAs(m.URL(), "anon", "", ""); err == nil {
		c.Disconnect(100)
		t.Error("anonymous client connected")
	}
	if c, err := connectAs(m.URL(), "gw-1", "gw-1", users["gw-2"]); err == nil {
		c.Disconnect(100)
		t.Error("gw-1 connected with gw-2's password")
	}
	testConfinement(t, m.URL(), login{ControllerUser, users[ControllerUser]}, login{"gw-1", users["gw-1"]}, true)
}
