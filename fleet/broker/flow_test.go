package broker

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// lateHandOver plays a publish that mochi hands to the old connection of a
// session after the takeover copied its inflight: it stores one in the old
// connection's inflight once the new connection is listed, as a publish
// admitted before the takeover and delivered late does.
type lateHandOver struct {
	mochi.HookBase
	srv *mochi.Server

	mu  sync.Mutex
	old map[*mochi.Client]*mochi.Client // joining connection -> the one listed before it
}

func (*lateHandOver) ID() string { return "late-hand-over" }

func (*lateHandOver) Provides(b byte) bool {
	return b == mochi.OnSessionEstablish || b == mochi.OnSessionEstablished
}

func (h *lateHandOver) OnSessionEstablish(cl *mochi.Client, _ packets.Packet) {
	if old, ok := h.srv.Clients.Get(cl.ID); ok {
		h.mu.Lock()
		h.old[cl] = old
		h.mu.Unlock()
	}
}

func (h *lateHandOver) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	h.mu.Lock()
	old := h.old[cl]
	h.mu.Unlock()
	if old == nil {
		return
	}
	// Packet id 1 is also the first the new connection gives out: carrying
	// must not keep it.
	old.State.Inflight.Set(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName: "f/dev/events", Payload: []byte("late"), PacketID: 1, Created: time.Now().Unix()})
}

// TestTakeoverCarries: a message left in a taken-over connection's inflight
// after mochi copied it reaches the connection that took the session over.
// Without flow's takeover handling it stays in the closed connection, after
// its publisher had the PUBACK.
func TestTakeoverCarries(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flow  bool
		carry bool
	}{
		{"flow control", true, true},
		{"flow control off", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(Options{Addr: "127.0.0.1:0", MaxPending: -1})
			if err != nil {
				t.Fatal(err)
			}
			// The hook must run before flow's OnSessionEstablished, so it
			// is added first and flow after it, as New would.
			if err := b.srv.AddHook(&lateHandOver{srv: b.srv, old: map[*mochi.Client]*mochi.Client{}}, nil); err != nil {
				t.Fatal(err)
			}
			if tc.flow {
				b.flow = newFlow(64, time.Second)
				b.flow.srv = b.srv
				if err := b.srv.AddHook(b.flow, nil); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- b.Run(ctx) }()
			defer func() {
				cancel()
				if err := <-done; !errors.Is(err, context.Canceled) {
					t.Errorf("Run: %v", err)
				}
			}()

			got := make(chan string, 16)
			connect := func() mqtt.Client {
				c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("ctl").SetCleanSession(false).
					SetAutoReconnect(false).SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) }))
				if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Fatalf("connect: %v", tok.Error())
				}
				return c
			}
			first := connect()
			if tok := first.Subscribe("f/+/events", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("subscribe: %v", tok.Error())
			}
			second := connect() // takes the session over
			defer second.Disconnect(100)
			defer first.Disconnect(0)

			select {
			case m := <-got:
				if !tc.carry {
					t.Fatalf("got %q without carrying: the test no longer plays a lost hand-over", m)
				}
				if m != "late" {
					t.Fatalf("got %q, want %q", m, "late")
				}
				if c := b.Stats().Carried; c != 1 {
					t.Errorf("got %d carried, want 1", c)
				}
				// Acknowledged by the subscriber under its new packet id.
				for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
					cl, ok := b.srv.Clients.Get("ctl")
					if ok && cl.State.Inflight.Len() == 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("the carried message stayed unacknowledged")
					}
				}
			case <-time.After(2 * time.Second):
				if tc.carry {
					t.Fatal("the message left in the old connection never arrived")
				}
			}
		})
	}
}
