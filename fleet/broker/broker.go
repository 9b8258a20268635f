// Package broker runs the fleet's embedded MQTT broker (mochi-mqtt), so one
// `outpost-fleet serve` gives a working fleet without an external broker.
// It listens on TCP, optionally with TLS, and optionally requires a user
// name and password. Sessions and retained messages live in memory: after a
// restart devices reconnect, publish their retained status again and
// re-subscribe, which is what the protocol expects of them anyway.
//
// A subscriber that falls behind (the controller, busy writing its registry)
// loses nothing: publishers wait for it before the broker acknowledges them
// (see flow.go and the broker section of docs/PROTOCOL.md).
package broker

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// DefaultAddr is where the embedded broker listens unless told.
const DefaultAddr = "127.0.0.1:1883"

// Options for New; the zero value listens on DefaultAddr without TLS and
// accepts every client.
type Options struct {
	// Addr is host:port; port 0 picks a free one (see Addr()).
	Addr string
	// TLS, when set, makes the listener speak TLS only.
	TLS *tls.Config
	// Users maps user names to passwords. When non-empty, a client must
	// present one of them; when empty, anyone may connect (fit only for a
	// loopback address or a closed network).
	Users map[string]string
	// MaxPacket bounds a packet in bytes; 0 means 16 MiB (a command with
	// golden vectors and a few roots fits with room).
	MaxPacket uint32
	// MaxPending bounds the QoS 1 messages outstanding to one subscriber
	// (sent or waiting to be sent, not yet acknowledged). A publish to a
	// topic with a subscriber at the bound waits, unacknowledged, until the
	// subscriber catches up. 0 means DefaultMaxPending; negative turns flow
	// control off, and mochi then drops what exceeds its own bounds.
	MaxPending int
	// MaxStall is how long a publisher waits for a subscriber to catch up
	// before its connection is closed (without a PUBACK, so it publishes
	// again after reconnecting). 0 means DefaultMaxStall.
	MaxStall time.Duration
	Logger   *slog.Logger
}

// Flow control defaults. A subscriber's outstanding messages are held in
// memory: at most DefaultMaxPending times the message size (telemetry
// batches are at most 256 KiB, typically a few KiB).
const (
	DefaultMaxPending = 4096
	DefaultMaxStall   = 20 * time.Second
)

// Broker is an embedded MQTT broker.
type Broker struct {
	srv  *mochi.Server
	ln   *drainListener
	flow *flow // nil when flow control is off
	log  *slog.Logger
	opts Options
}

// New prepares the broker and opens its listener, so Addr is known before
// Run.
func New(opts Options) (*Broker, error) {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxPacket == 0 {
		opts.MaxPacket = 16 << 20
	}
	if opts.MaxPending == 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.MaxStall <= 0 {
		opts.MaxStall = DefaultMaxStall
	}
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = opts.MaxPacket
	if opts.MaxPending > 0 {
		// mochi drops beyond these; flow control keeps well below them
		// (messages the flow does not see, QoS 0 and last wills, use the
		// rest). The pending-writes queue costs 8 bytes a slot per client.
		opts.MaxPending = min(opts.MaxPending, 32<<10)
		caps.MaximumInflight = uint16(min(2*opts.MaxPending, 65535))
		caps.MaximumClientWritesPending = int32(2 * opts.MaxPending)
	}
	srv := mochi.New(&mochi.Options{
		Capabilities: caps,
		Logger:       opts.Logger.With("component", "mqtt"),
		// Keeps ~1 MiB chunks moving without a slow client stalling them.
		ClientNetWriteBufferSize: 64 << 10,
		ClientNetReadBufferSize:  64 << 10,
	})
	if err := srv.AddHook(&authHook{users: opts.Users}, nil); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	var fl *flow
	if opts.MaxPending > 0 {
		fl = newFlow(opts.MaxPending, opts.MaxStall)
		fl.srv = srv
		if err := srv.AddHook(fl, nil); err != nil {
			return nil, fmt.Errorf("broker: %w", err)
		}
	}
	ln := newDrainListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: opts.Addr, TLSConfig: opts.TLS}))
	if err := srv.AddListener(ln); err != nil {
		return nil, fmt.Errorf("broker: listen %s: %w", opts.Addr, err)
	}
	return &Broker{srv: srv, ln: ln, flow: fl, log: opts.Logger, opts: opts}, nil
}

// Stats are the broker's flow-control and loss counters.
type Stats struct {
	// Stalls counts publishes that waited for a subscriber to catch up;
	// Stalled is how many are waiting now.
	Stalls  uint64 `json:"stalls"`
	Stalled int    `json:"stalled"`
	// Disconnects counts publishers disconnected after MaxStall.
	Disconnects uint64 `json:"disconnects"`
	// Dropped counts messages mochi dropped for a subscriber over its
	// bounds (pending writes or inflight). With flow control on it stays 0
	// for QoS 1 publishes.
	Dropped uint64 `json:"dropped"`
}

// Stats returns the counters.
func (b *Broker) Stats() Stats {
	s := Stats{Dropped: uint64(atomic.LoadInt64(&b.srv.Info.MessagesDropped) + atomic.LoadInt64(&b.srv.Info.InflightDropped))}
	if f := b.flow; f != nil {
		s.Stalls, s.Disconnects = f.stalls.Load(), f.disconnects.Load()
		f.mu.Lock()
		s.Stalled = f.waiting
		f.mu.Unlock()
	}
	return s
}

// Addr is the address the broker listens on.
func (b *Broker) Addr() string { return b.ln.Address() }

// URL is the broker's address for MQTT clients ("tcp://" or "ssl://").
func (b *Broker) URL() string {
	if b.opts.TLS != nil {
		return "ssl://" + b.Addr()
	}
	return "tcp://" + b.Addr()
}

// Run serves until ctx is cancelled, then closes every connection.
func (b *Broker) Run(ctx context.Context) error {
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: serve: %w", err)
	}
	b.log.Info("mqtt broker listening", "addr", b.Addr(), "tls", b.opts.TLS != nil, "auth", len(b.opts.Users) > 0)
	<-ctx.Done()
	done := make(chan error, 1)
	go func() { done <- b.srv.Close() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("broker: close: %w", err)
		}
	case <-time.After(10 * time.Second):
		return errors.New("broker: close: timed out")
	}
	return ctx.Err()
}

// authHook checks user names and passwords, and allows every topic to a
// client that connected. Per-device topic ACLs belong on an external broker
// (Mosquitto's acl_file with %c patterns, for example).
type authHook struct {
	mochi.HookBase
	users map[string]string
}

func (*authHook) ID() string { return "outpost-auth" }

func (*authHook) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (h *authHook) OnConnectAuthenticate(_ *mochi.Client, pk packets.Packet) bool {
	if len(h.users) == 0 {
		return true
	}
	want, ok := h.users[string(pk.Connect.Username)]
	return ok && subtle.ConstantTimeCompare([]byte(want), pk.Connect.Password) == 1
}

func (*authHook) OnACLCheck(*mochi.Client, string, bool) bool { return true }
