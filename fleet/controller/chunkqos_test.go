package controller_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
)

// TestChunksPublishedAtQoS0: the controller publishes artifact chunks at
// protocol.ChunkQoS (docs/PROTOCOL.md, "Chunks"). An observer on a real
// Mosquitto subscribes to every device's chunk topic at QoS 1, so each
// chunk reaches it at the QoS the controller published it with.
func TestChunksPublishedAtQoS0(t *testing.T) {
	m := testbroker.StartMosquitto(t, "")
	var chunks, qos1 atomic.Int64
	filter, _ := protocol.FleetFilter(fleetName, protocol.LeafChunk)
	obs := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID("chunk-observer"))
	if tok := obs.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("observer: %v", tok.Error())
	}
	defer obs.Disconnect(100)
	if tok := obs.Subscribe(filter, 1, func(_ mqtt.Client, msg mqtt.Message) {
		chunks.Add(1)
		if msg.Qos() != protocol.ChunkQoS {
			qos1.Add(1)
		}
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("observer subscribe: %v", tok.Error())
	}
	f := startFleet(t, controller.Options{Broker: m.URL()})
	f.push("face", 1, 4*8<<10, 8<<10)
	f.devices(1, m.URL(), nil)
	f.waitDevices(1)
	if _, err := f.c.Engine().Create(rollout.Spec{Model: "face", Version: 1, Waves: []int{100}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the observer sees the chunks", func() (bool, string) {
		return chunks.Load() >= 4, fmt.Sprintf("%d chunks", chunks.Load())
	})
	if n := qos1.Load(); n != 0 {
		t.Fatalf("%d of %d chunks arrived at QoS 1: published at QoS 1", n, chunks.Load())
	}
}

// TestShareGroupRequestsLeaveThePersistentSession: with a share group the
// chunk requests come on a clean session of their own, and the persistent
// session drops a request subscription an older release left in it.
// Otherwise the broker would keep queueing requests to that session
// while the controller is down (docs/SCALE.md, "Replicas"). A session
// seeded as an older release left it; the controller runs once and stops;
// requests published while it is down must not be waiting in its session.
func TestShareGroupRequestsLeaveThePersistentSession(t *testing.T) {
	m := testbroker.StartMosquitto(t, "")
	const id, group = "ctl-upgrade", "ctl"
	req, _ := protocol.ArtifactsReqTopic(fleetName)
	session := func(handler mqtt.MessageHandler) mqtt.Client {
		cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID(id).SetCleanSession(false).
			SetDefaultPublishHandler(handler))
		if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("session %s: %v", id, tok.Error())
		}
		return cl
	}
	old := session(nil)
	if tok := old.Subscribe("$share/"+group+"/"+req, 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("older release's subscription: %v", tok.Error())
	}
	old.Disconnect(100)

	f := startFleet(t, controller.Options{Broker: m.URL(), ClientID: id, ShareGroup: group})
	f.stop()

	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID("requester"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("requester: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	for i := range 5 {
		b := fmt.Appendf(nil, `{"device":"dev-%d","sha256":"%064d","first":0,"count":1}`, i, 0)
		if tok := pub.Publish(req, 1, false, b); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("request: %v", tok.Error())
		}
	}
	var queued atomic.Int64
	back := session(func(mqtt.Client, mqtt.Message) { queued.Add(1) })
	defer back.Disconnect(100)
	time.Sleep(time.Second) // a persistent session's queue arrives right after CONNACK
	if n := queued.Load(); n != 0 {
		t.Fatalf("%d of 5 chunk requests were queued to the controller's persistent session while it was down", n)
	}
}
