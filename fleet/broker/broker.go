// Package broker runs the fleet's embedded MQTT broker (mochi-mqtt), so one
// `outpost-fleet serve` gives a working fleet without an external broker.
// It listens on TCP, optionally with TLS, and optionally requires a user
// name and password. Sessions and retained messages live in memory: after a
// restart devices reconnect, publish their retained status again and
// re-subscribe, which is what the protocol expects of them anyway.
package broker

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
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
	Logger    *slog.Logger
}

// Broker is an embedded MQTT broker.
type Broker struct {
	srv  *mochi.Server
	ln   *listeners.TCP
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
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = opts.MaxPacket
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
	ln := listeners.NewTCP(listeners.Config{ID: "tcp", Address: opts.Addr, TLSConfig: opts.TLS})
	if err := srv.AddListener(ln); err != nil {
		return nil, fmt.Errorf("broker: listen %s: %w", opts.Addr, err)
	}
	return &Broker{srv: srv, ln: ln, log: opts.Logger, opts: opts}, nil
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
