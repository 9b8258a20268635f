package controller_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
	mochi "github.com/mochi-mqtt/server/v2"
	mochipk "github.com/mochi-mqtt/server/v2/packets"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/internal/testbroker"
)

// TestFailoverBetweenBrokers: given two brokers, the controller starts on
// the one that answers; with none up, Publish says ErrNotConnected at once;
// when the other comes up the controller connects there, subscribes again
// (a device's state reaches it) and publishes there.
func TestFailoverBetweenBrokers(t *testing.T) {
	a, b := testbroker.FreeAddr(t), testbroker.FreeAddr(t)
	_, stopB := testbroker.Start(t, b) // a is down
	f := startFleet(t, controller.Options{Brokers: []string{"tcp://" + a, "tcp://" + b}, ConnectTimeout: 10 * time.Second})
	if got := f.c.ConnectedBroker(); got != "tcp://"+b {
		t.Fatalf("connected to %q, want b", got)
	}
	if err := f.c.Publish(context.Background(), "outpost/v1/test/x/cmd", []byte("on b")); err != nil {
		t.Fatalf("publish on b: %v", err)
	}

	stopB()
	eventually(t, 10*time.Second, "the controller noticed b went away", func() (bool, string) {
		return f.c.ConnectedBroker() == "", f.c.ConnectedBroker()
	})
	if err := f.c.Publish(context.Background(), "outpost/v1/test/x/cmd", []byte("nowhere")); !errors.Is(err, controller.ErrNotConnected) {
		t.Fatalf("publish with no broker: got %v, want ErrNotConnected", err)
	}
	srvA, _ := testbroker.Start(t, a)
	eventually(t, 30*time.Second, "the controller connected to a", func() (bool, string) {
		return f.c.ConnectedBroker() == "tcp://"+a, f.c.ConnectedBroker()
	})
	// Subscribed on a: a device's state arrives.
	if err := srvA.Publish("outpost/v1/test/gw-a/state", []byte("online"), true, 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the device's state reached the controller", func() (bool, string) {
		d, err := f.c.Registry().Device("gw-a")
		return err == nil && d.Online, ""
	})
	got := make(chan string, 1)
	if err := srvA.Subscribe("outpost/v1/test/x/cmd", 1, func(_ *mochi.Client, _ mochipk.Subscription, p mochipk.Packet) {
		select {
		case got <- string(p.Payload):
		default:
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.c.Publish(context.Background(), "outpost/v1/test/x/cmd", []byte("on a")); err != nil {
		t.Fatalf("publish on a: %v", err)
	}
	select {
	case p := <-got:
		if p != "on a" {
			t.Fatalf("got %q on a", p)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("nothing arrived on a")
	}
}

// TestPublishNeedsPUBACK: a publish whose connection ends before the
// broker's PUBACK fails; it is never reported sent. The broker here is a
// minimal MQTT server that takes CONNECT and SUBSCRIBE and never acknowledges
// a publish (no real broker withholds PUBACKs on demand), closing the
// connection once a publish arrived; paho's own reconnect used to resend
// the message itself and could complete its token without any PUBACK.
func TestPublishNeedsPUBACK(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	published := make(chan struct{}, 16)
	var accepted atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				withholdPUBACK(conn, published)
			}()
		}
	}()
	f := startFleet(t, controller.Options{Broker: "tcp://" + l.Addr().String(), ConnectTimeout: 10 * time.Second})
	for i := range 3 {
		// On a new connection each time (the previous one ended).
		eventually(t, 30*time.Second, "connected", func() (bool, string) {
			return accepted.Load() == int64(i+1) && f.c.ConnectedBroker() != "", ""
		})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err := f.c.Publish(ctx, "outpost/v1/test/x/cmd", []byte("never acknowledged"))
		waited := ctx.Err()
		cancel()
		if err == nil {
			t.Fatalf("publish %d: reported sent without a PUBACK", i)
		}
		if waited != nil {
			t.Fatalf("publish %d: still waiting 20 s after its connection closed", i)
		}
	}
	if len(published) < 3 {
		t.Fatalf("the broker saw %d publishes, want 3", len(published))
	}
}

// withholdPUBACK serves one connection: CONNACK, SUBACKs, and on the first
// PUBLISH a note on published and the end of the connection.
func withholdPUBACK(conn net.Conn, published chan<- struct{}) {
	for {
		_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
		p, err := packets.ReadPacket(conn)
		if err != nil {
			return
		}
		switch p := p.(type) {
		case *packets.ConnectPacket:
			ack := packets.NewControlPacket(packets.Connack).(*packets.ConnackPacket)
			if ack.Write(conn) != nil {
				return
			}
		case *packets.SubscribePacket:
			ack := packets.NewControlPacket(packets.Suback).(*packets.SubackPacket)
			ack.MessageID = p.MessageID
			ack.ReturnCodes = make([]byte, len(p.Topics))
			for i := range ack.ReturnCodes {
				ack.ReturnCodes[i] = 1
			}
			if ack.Write(conn) != nil {
				return
			}
		case *packets.PingreqPacket:
			if packets.NewControlPacket(packets.Pingresp).Write(conn) != nil {
				return
			}
		case *packets.PublishPacket:
			published <- struct{}{}
			return
		}
	}
}
