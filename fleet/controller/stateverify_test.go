package controller_test

import (
	"fmt"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
)

// TestLateWillDoesNotStick: a device's "offline" that reaches the
// controller after its "online" although the broker holds "online" (a
// late last will of a connection the device had given up, seen on
// Mosquitto under load) is corrected from the broker's retained state
// within seconds. The late will is played by a live, not retained,
// "offline" on a real Mosquitto and a real 3-node NATS cluster. A device
// whose retained state is "offline" stays offline.
func TestLateWillDoesNotStick(t *testing.T) {
	t.Run("mosquitto", func(t *testing.T) { lateWill(t, testbroker.StartMosquitto(t, "").URL()) })
	// NATS: the check's QoS 0 subscription needs no JetStream consumer.
	t.Run("nats", func(t *testing.T) { lateWill(t, testbroker.StartNATSCluster(t, 3).URLs()[0]) })
}

func lateWill(t *testing.T, url string) {
	f := startFleet(t, controller.Options{Broker: url})
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("state-player"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	publish := func(dev, state string, retained bool) {
		t.Helper()
		topics, _ := protocol.DeviceTopics(fleetName, dev)
		if tok := pub.Publish(topics.State, 1, retained, state); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	online := func(dev string) (bool, time.Time) {
		d, err := f.c.Registry().Device(dev)
		if err != nil {
			return false, time.Time{}
		}
		return d.Online, d.LastSeen
	}
	publish("gw-late", protocol.StateOnline, true)
	publish("gw-gone", protocol.StateOffline, true)
	eventually(t, 10*time.Second, "gw-late online", func() (bool, string) {
		on, _ := online("gw-late")
		return on, fmt.Sprintf("online %v", on)
	})

	sent := time.Now()
	publish("gw-late", protocol.StateOffline, false) // the late will
	eventually(t, 15*time.Second, "gw-late online again, from the broker's retained state", func() (bool, string) {
		on, seen := online("gw-late")
		return on && seen.After(sent), fmt.Sprintf("online %v, last seen %v (the late offline sent at %v)", on, seen, sent)
	})
	time.Sleep(3 * time.Second) // a check or two of gw-gone, had it been queued
	if on, _ := online("gw-gone"); on {
		t.Errorf("gw-gone, retained offline, is online")
	}
}
