package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/internal/testbroker"
)

func run(t *testing.T, opts Options) *Broker {
	t.Helper()
	opts.Addr = "127.0.0.1:0"
	b, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	return b
}

func dial(url, user, pass string, tc *tls.Config) error {
	id := user // a device's client id is its user name
	if id == "" {
		id = "anonymous"
	}
	o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetUsername(user).SetPassword(pass).SetConnectTimeout(5 * time.Second)
	if tc != nil {
		o.SetTLSConfig(tc)
	}
	c := mqtt.NewClient(o)
	t := c.Connect()
	t.WaitTimeout(10 * time.Second)
	if t.Error() == nil {
		c.Disconnect(100)
	}
	return t.Error()
}

func TestPasswords(t *testing.T) {
	b := run(t, Options{Users: map[string]string{"gw-1": "s3cret"}})
	if err := dial(b.URL(), "gw-1", "s3cret", nil); err != nil {
		t.Fatalf("right password: %v", err)
	}
	for _, c := range [][2]string{{"gw-1", "wrong"}, {"gw-2", "s3cret"}, {"", ""}} {
		if err := dial(b.URL(), c[0], c[1], nil); err == nil {
			t.Errorf("user %q password %q connected", c[0], c[1])
		}
	}
	open := run(t, Options{})
	if err := dial(open.URL(), "", "", nil); err != nil {
		t.Fatalf("no users configured: %v", err)
	}
}

func TestTLS(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fleet"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	b := run(t, Options{TLS: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}})
	if b.URL()[:6] != "ssl://" {
		t.Fatalf("URL %s", b.URL())
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	if err := dial(b.URL(), "x", "", &tls.Config{RootCAs: pool}); err != nil {
		t.Fatalf("TLS client trusting the cert: %v", err)
	}
	if err := dial(b.URL(), "y", "", &tls.Config{RootCAs: x509.NewCertPool()}); err == nil {
		t.Fatal("a client that does not trust the cert connected")
	}
	if err := dial("tcp://"+b.Addr(), "z", "", nil); err == nil {
		t.Fatal("plain TCP connected to a TLS listener")
	}
}

// TestSlowSubscriber: a controller that stops reading while devices publish
// a backlog several times the broker's bounds loses nothing: the publishers
// wait, unacknowledged, until it reads again. With flow control off the same
// run loses messages (mochi drops what exceeds its bounds after the PUBACK),
// which shows that the check can fail.
func TestSlowSubscriber(t *testing.T) {
	for _, tc := range []struct {
		name       string
		maxPending int
		maxStall   time.Duration
		keepAlive  time.Duration
		drop       bool
	}{
		{"flow control", 0, 0, 0, false},
		// The subscriber stays still past MaxStall: publishers are
		// disconnected unacknowledged and publish again once back.
		{"stuck past max stall", 0, 200 * time.Millisecond, 0, false},
		// The held phase outlasts the keepalive, as on a loaded machine:
		// the subscriber's connection drops while the broker holds
		// messages for it, and its session is taken over by the next
		// connection while publishers wait for room.
		{"subscriber reconnects", 0, 0, time.Second, true},
		{"flow control off", -1, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := run(t, Options{MaxPending: tc.maxPending, MaxStall: tc.maxStall})
			held := func(acked int) bool { return b.Stats().Stalled > 0 }
			if tc.maxStall > 0 {
				held = func(acked int) bool { return b.Stats().Disconnects > 0 }
			}
			if tc.maxPending < 0 {
				held = func(acked int) bool { return acked == 4*5000 }
			}
			res := testbroker.SlowSubscriber(t, b.URL(), testbroker.SlowOptions{Publishers: 4, Messages: 5000, Held: held,
				KeepAlive: tc.keepAlive, Drop: tc.drop})
			st := b.Stats()
			t.Logf("%d messages (%d bytes each) to a subscriber that stopped reading: %d acknowledged, %d received, %d lost, %d duplicates, %d out of order, %d publishes retried, %d subscriber reconnections; held after %v, done after %v; broker: %+v",
				res.Sent, 200, res.Acked, res.Received, res.Lost(), res.Duplicates, res.OutOfOrder, res.Retried, res.Reconnects, res.Held.Round(time.Millisecond), res.Elapsed.Round(time.Millisecond), st)
			if tc.maxPending < 0 {
				if res.Lost() == 0 || st.Dropped == 0 {
					t.Fatalf("without flow control nothing was lost (lost %d, broker dropped %d): the run no longer exceeds mochi's bounds", res.Lost(), st.Dropped)
				}
				return
			}
			if res.Lost() != 0 || res.Acked != res.Sent {
				t.Errorf("got %d of %d acknowledged messages at the subscriber, want all %d sent (first missing, publisher<<32|index: %x)", res.Received, res.Acked, res.Sent, res.Missing)
			}
			if res.OutOfOrder != 0 {
				t.Errorf("%d messages arrived after a later one of their publisher, want 0: a session's messages go in order, resends first", res.OutOfOrder)
			}
			if st.Dropped != 0 {
				t.Errorf("broker dropped %d messages, want 0", st.Dropped)
			}
			if tc.drop && res.Reconnects == 0 {
				t.Error("the subscriber did not reconnect: its session was never taken over")
			}
			if st.Stalls == 0 {
				t.Error("no publish waited: the backlog never reached the bound")
			}
			if tc.maxStall > 0 && st.Disconnects == 0 {
				t.Error("no publisher was disconnected after MaxStall")
			}
		})
	}
}

// TestOfflineSession: a persistent session that went offline holds
// publishers back while it may still come back (the controller
// reconnecting), and no longer once its grace is over, so an abandoned
// session cannot stop a fleet's traffic.
func TestOfflineSession(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grace time.Duration
		stall bool
	}{
		{"within grace", time.Hour, true},
		{"past grace", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const limit, n = 64, 4 * 64
			b := run(t, Options{MaxPending: limit, MaxStall: 300 * time.Millisecond})
			b.flow.grace = tc.grace
			sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("gone").SetCleanSession(false))
			if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("connect: %v", tok.Error())
			}
			if tok := sub.Subscribe("f/+/events", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
			sub.Disconnect(100)
			gone, _ := b.srv.Clients.Get("gone")
			for deadline := time.Now().Add(10 * time.Second); gone == nil || !gone.Closed(); {
				if time.Now().After(deadline) {
					t.Fatal("the subscriber's session did not go offline")
				}
				time.Sleep(10 * time.Millisecond)
				gone, _ = b.srv.Clients.Get("gone")
			}

			// No automatic reconnection, as on the agent: paho completes a
			// pending token without error when it sends its message again
			// after reconnecting, PUBACK or not.
			pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("dev").SetCleanSession(false).
				SetAutoReconnect(false))
			if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("connect: %v", tok.Error())
			}
			defer pub.Disconnect(100)
			acked := 0
			for i := range n {
				tok := pub.Publish("f/dev/events", 1, false, []byte{byte(i)})
				if tok.WaitTimeout(2*time.Second) && tok.Error() == nil {
					acked++
				} else if tc.stall {
					break
				}
			}
			st := b.Stats()
			t.Logf("%d of %d publishes acknowledged; broker: %+v", acked, n, st)
			if tc.stall {
				if acked != limit || st.Disconnects == 0 {
					t.Errorf("got %d of %d acknowledged and %d publishers disconnected, want %d and the publisher disconnected", acked, n, st.Disconnects, limit)
				}
				return
			}
			if acked != n || st.Stalls != 0 {
				t.Errorf("got %d of %d acknowledged and %d stalls, want all and none", acked, n, st.Stalls)
			}
		})
	}
}
