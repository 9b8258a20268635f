// Package broker runs the fleet's embedded MQTT broker (mochi-mqtt), so one
// `outpost-fleet serve` gives a working fleet without an external broker.
// It listens on TCP, optionally with TLS. Once a device is enrolled it
// requires a login and confines every device to its own topics (acl.go and
// docs/SECURITY.md); the controller logs in with a secret that lives only in
// this process's memory (ControllerPassword). Sessions and retained messages live in memory: after a
// restart devices reconnect, publish their retained status again and
// re-subscribe, which is what the protocol expects of them anyway.
//
// A subscriber that falls behind (the controller, busy writing its registry)
// loses nothing: publishers wait for it before the broker acknowledges them
// (see flow.go and the broker section of docs/PROTOCOL.md).
package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/outpost-edge/outpost/protocol"
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
	// Fleet is the fleet whose device topics the ACLs allow (default
	// "default").
	Fleet string
	// Credentials, when set, holds the devices' hashed credentials: once
	// it holds one, every device must log in and is confined to its own
	// topics.
	Credentials Credentials
	// Users maps user names (device ids) to plain passwords: the legacy
	// mqtt.users of fleet.yaml. When non-empty, the broker is locked as
	// with Credentials, and these users are devices under the same ACLs.
	Users map[string]string
	// Open lets anyone connect and use any topic, whatever Credentials
	// and Users hold: today's demos, fit only for a loopback address.
	Open bool
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
	auth *authHook
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
	if opts.Fleet == "" {
		opts.Fleet = "default"
	}
	if _, err := protocol.ArtifactsReqTopic(opts.Fleet); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	secret, err := NewSecret()
	if err != nil {
		return nil, err
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
		// Keeps ~1 MiB chunks moving without a slow client stalling them
		// (allocated only while writes queue up).
		ClientNetWriteBufferSize: 64 << 10,
		// Allocated for every connection: 64 KiB here made an idle device
		// cost 155 KiB instead of 96 (TestConnectionMemory). Packets larger
		// than the buffer are read straight into their own, so chunks and
		// telemetry batches do not need a larger one.
		ClientNetReadBufferSize: 4 << 10,
	})
	auth := &authHook{fleet: opts.Fleet, open: opts.Open, users: opts.Users, creds: opts.Credentials,
		controller: secret, srv: srv, log: opts.Logger.With("component", "mqtt-auth")}
	if err := srv.AddHook(auth, nil); err != nil {
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
	return &Broker{srv: srv, auth: auth, ln: ln, flow: fl, log: opts.Logger, opts: opts}, nil
}

// ControllerPassword is the password of ControllerUser on this broker: a
// random secret made by New, never written anywhere, so the controller in
// this process is the only client that can log in as the controller.
func (b *Broker) ControllerPassword() string { return b.auth.controller }

// Disconnect closes the connection of device, if connected, as after its
// credential was revoked: it cannot log in again without a credential.
// It reports whether a connection was closed.
func (b *Broker) Disconnect(device string) bool {
	cl, ok := b.srv.Clients.Get(device)
	if !ok || cl.Net.Inline || string(cl.Properties.Username) == ControllerUser || cl.Closed() {
		return false
	}
	_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
	b.log.Info("device disconnected", "device", device)
	return true
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
	// Carried counts messages moved from a connection whose persistent
	// session was taken over to the connection that took it (see flow.go).
	Carried uint64 `json:"carried"`
}

// Stats returns the counters.
func (b *Broker) Stats() Stats {
	s := Stats{Dropped: uint64(atomic.LoadInt64(&b.srv.Info.MessagesDropped) + atomic.LoadInt64(&b.srv.Info.InflightDropped))}
	if f := b.flow; f != nil {
		s.Stalls, s.Disconnects, s.Carried = f.stalls.Load(), f.disconnects.Load(), f.carried.Load()
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
	// The warnings come before the first client can connect: whoever
	// reads the log (or waits for the listener) sees them first.
	switch {
	case b.opts.Open:
		b.log.Warn("mqtt broker is OPEN: any client may connect and use any topic (insecure, for demos on loopback only)", "addr", b.Addr())
	case !b.auth.locked():
		b.log.Warn("mqtt broker is open until the first device is enrolled (outpost-fleet devices enroll NAME)", "addr", b.Addr())
	}
	if len(b.opts.Users) > 0 {
		b.log.Warn("mqtt.users holds plain passwords in fleet.yaml: enrol the devices (outpost-fleet devices enroll NAME) and remove it", "users", len(b.opts.Users))
	}
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: serve: %w", err)
	}
	b.log.Info("mqtt broker listening", "addr", b.Addr(), "tls", b.opts.TLS != nil, "locked", b.auth.locked())
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
