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
