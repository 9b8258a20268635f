package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// runB is run for benchmarks.
func runB(b *testing.B, opts Options) *Broker {
	b.Helper()
	opts.Addr = "127.0.0.1:0"
	brk, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- brk.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			b.Errorf("Run: %v", err)
		}
	})
	return brk
}

// BenchmarkDevicePublish is one QoS 1 publish of a device to its own
// events topic, PUBACK awaited, on an open broker and on a locked one (the
// ACL check on every message): the cost of confinement per message.
func BenchmarkDevicePublish(b *testing.B) {
	for _, mode := range []string{"open", "locked"} {
		b.Run(mode, func(b *testing.B) {
			reg, secrets := enrolled(b)
			brk := runB(b, Options{Fleet: aclFleet, Credentials: reg, Open: mode == "open"})
			c, err := connectAs(brk.URL(), "gw-1", "gw-1", secrets["gw-1"])
			if err != nil {
				b.Fatal(err)
			}
			defer c.Disconnect(100)
			payload := make([]byte, 1024)
			b.ResetTimer()
			for b.Loop() {
				if t := c.Publish("outpost/v1/"+aclFleet+"/gw-1/events", 1, false, payload); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
					b.Fatalf("publish: %v", t.Error())
				}
			}
		})
	}
}

// BenchmarkDeviceLogin is one CONNECT with a credential checked against
// the registry, and the DISCONNECT.
func BenchmarkDeviceLogin(b *testing.B) {
	reg, secrets := enrolled(b)
	brk := runB(b, Options{Fleet: aclFleet, Credentials: reg})
	o := mqtt.NewClientOptions().AddBroker(brk.URL()).SetClientID("gw-1").SetUsername("gw-1").SetPassword(secrets["gw-1"]).
		SetAutoReconnect(false).SetCleanSession(true)
	for b.Loop() {
		c := mqtt.NewClient(o)
		if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
			b.Fatalf("connect: %v", t.Error())
		}
		c.Disconnect(0)
	}
}
