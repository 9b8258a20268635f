package testbroker

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// TestNATSClusterSessionSurvivesNodeKill: a persistent session made on one
// node of a 3-node cluster keeps its subscription when that node is
// SIGKILLed; QoS 1 messages published on another node while the subscriber
// is away are delivered when it connects again to a surviving node. A
// clean-session subscriber, the control, gets none of them, which shows the
// check can fail.
func TestNATSClusterSessionSurvivesNodeKill(t *testing.T) {
	c := StartNATSCluster(t, 3)
	noSharedSubscriptions(t, c.URL(2))
	const topic, n = "outpost/v1/test/dev/cmd", 20
	type sub struct {
		mu   sync.Mutex
		seen map[string]bool
	}
	dial := func(url, id string, clean bool, s *sub) mqtt.Client {
		t.Helper()
		h := func(_ mqtt.Client, m mqtt.Message) {
			s.mu.Lock()
			s.seen[string(m.Payload())] = true
			s.mu.Unlock()
		}
		o := mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(clean).SetAutoReconnect(false)
		o.SetDefaultPublishHandler(h)
		// Right after a node died the cluster may refuse connections for a
		// while (a new JetStream leader is being elected): try again.
		var cl mqtt.Client
		deadline := time.Now().Add(30 * time.Second)
		for {
			cl = mqtt.NewClient(o)
			tok := cl.Connect()
			if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("connect %s to %s: %v", id, url, tok.Error())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if tok := cl.Subscribe(topic, 1, h); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", id, tok.Error())
		}
		return cl
	}
	persistent := &sub{seen: map[string]bool{}}
	control := &sub{seen: map[string]bool{}}
	p := dial(c.URL(0), "persistent", false, persistent)
	q := dial(c.URL(0), "control", true, control)
	if got := c.ClientNode("persistent"); got != 0 {
		t.Fatalf("ClientNode: got node %d, want 0", got)
	}
	c.Kill(0)
	p.Disconnect(0)
	q.Disconnect(0)
	killed := time.Now()
	c.WaitMQTT(1, 60*time.Second)
	c.WaitMQTT(2, 60*time.Second)
	t.Logf("the surviving nodes took and delivered QoS 1 again %v after the kill", time.Since(killed).Round(time.Millisecond))

	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(c.URL(2)).SetClientID("pub").SetAutoReconnect(false))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	defer pub.Disconnect(50)
	for i := range n {
		tok := pub.Publish(topic, 1, false, fmt.Sprintf("m%d", i))
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %d: %v", i, tok.Error())
		}
	}
	// Back on node 2, the session is found with its subscription.
	start := time.Now()
	p = dial(c.URL(1), "persistent", false, persistent)
	defer p.Disconnect(50)
	q = dial(c.URL(1), "control", true, control)
	defer q.Disconnect(50)
	deadline := time.Now().Add(30 * time.Second)
	for {
		persistent.mu.Lock()
		got := len(persistent.seen)
		persistent.mu.Unlock()
		if got == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d of %d messages queued for the persistent session, want all", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%d queued messages delivered %v after the session came back on another node", n, time.Since(start).Round(time.Millisecond))
	control.mu.Lock()
	defer control.mu.Unlock()
	if len(control.seen) != 0 {
		t.Errorf("the clean session got %d messages published while it was away, want 0", len(control.seen))
	}
}

// noSharedSubscriptions: NATS's MQTT grants a $share/<group>/ subscription
// and delivers nothing to it, so a controller with mqtt.share_group on NATS
// would get no telemetry at all (docs/SCALE.md).
func noSharedSubscriptions(t *testing.T, url string) {
	t.Helper()
	dial := func(id string) mqtt.Client {
		cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id).SetAutoReconnect(false))
		if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect %s: %v", id, tok.Error())
		}
		t.Cleanup(func() { cl.Disconnect(50) })
		return cl
	}
	shared, plain := make(chan string, 4), make(chan string, 4)
	for f, c := range map[string]chan string{"$share/g/share/+/events": shared, "share/+/events": plain} {
		tok := dial("sub-"+strings.ReplaceAll(f, "/", "-")).Subscribe(f, 1, func(_ mqtt.Client, m mqtt.Message) { c <- m.Topic() })
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", f, tok.Error())
		}
	}
	cl := dial("share-pub")
	if tok := cl.Publish("share/d/events", 1, false, []byte("x")); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	select {
	case <-plain: // the plain subscription got it, so the shared one had its chance
	case <-time.After(10 * time.Second):
		t.Fatal("the plain subscription got nothing")
	}
	select {
	case got := <-shared:
		t.Errorf("the $share subscription got %s: NATS has shared subscriptions now, docs/SCALE.md must say so", got)
	case <-time.After(500 * time.Millisecond):
	}
}
