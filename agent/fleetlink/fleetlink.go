// Package fleetlink owns the device's one MQTT connection to the fleet's
// broker. Telemetry's uplink and the updater use it through small interfaces
// of their own; only the daemon wires them together.
//
// The connection is a persistent session whose client id is the device id,
// so the broker keeps the device's subscriptions and queues commands while it
// is away. Because the broker delivers that queue right after CONNACK, before
// any SUBSCRIBE could be sent, handlers are registered with Handle before Run
// and installed on every client before it connects. (Options.CleanSession
// trades that queue away, for brokers where it is costly.) After every connection
// the link subscribes to their topics, then publishes "online" (retained) on
// the state topic, with "offline" as the last will. It reconnects with
// jittered backoff (package backoff). Every connection uses a fresh paho
// client and in-memory store, so paho never replays an old publish on its
// own: the callers decide what to send again.
//
// With several brokers (the nodes of a clustered broker, which share
// sessions) the link fails over between them: each connection attempt goes
// to the next broker of the list, round robin, starting after the one that
// failed or whose connection ended; the backoff is waited after a connection
// ends and after every broker of the list failed in turn, not between the
// brokers of one round. A publish pending when its connection ended fails
// (it is never acknowledged without the broker's PUBACK), and the caller
// makes it again on the next connection, whichever broker that is.
package fleetlink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/protocol"
)

// Errors of this package; callers test with errors.Is.
var (
	// ErrNotConnected is wrapped by Publish when nothing was sent because
	// the link has no connection. Callers wait (WaitUp, Up) and try again
	// without counting it as a failed attempt.
	ErrNotConnected = errors.New("fleetlink: not connected")
	// ErrOptions is returned by New when no broker is given, a broker URL
	// is not tcp:// or ssl://, or the fleet or device name cannot be a
	// topic level.
	ErrOptions = errors.New("fleetlink: bad options")
	// ErrStarted is returned by Handle once Run has started: a handler
	// added later would miss what the broker delivers right after CONNACK.
	ErrStarted = errors.New("fleetlink: handler added after Run started")
	// errConnLost is returned when the connection dropped while a token was
	// pending: the message may or may not have arrived.
	errConnLost = errors.New("fleetlink: connection lost")
	// errTimeout is returned when a token did not complete in time.
	errTimeout = errors.New("fleetlink: timed out")
)

// Options configure a Link. Broker, Fleet and Device are required; every
// other zero value works.
type Options struct {
	// Broker is the broker URL, "tcp://host:1883" or "ssl://host:8883".
	Broker string
	// Brokers are more broker URLs, tried after Broker in this order: the
	// nodes of one clustered broker (they must share sessions, or commands
	// queued on one node wait until the device comes back to it).
	Brokers []string
	// Fleet and Device name the topics (protocol.DeviceTopics). Device is
	// also the MQTT client id: stable across restarts, so the persistent
	// session survives them (docs/PROTOCOL.md).
	Fleet, Device string

	Username, Password string
	TLSConfig          *tls.Config

	// ConnectTimeout bounds one connection attempt, subscriptions included.
	// Default 10 s.
	ConnectTimeout time.Duration
	// AckTimeout bounds the wait for a PUBACK on a live connection; a publish
	// that waits longer drops the connection. Default 30 s.
	AckTimeout time.Duration
	// KeepAlive is the MQTT keep-alive. Default 30 s.
	KeepAlive time.Duration
	// BackoffMin and BackoffMax bound the jittered reconnect backoff.
	// Defaults 500 ms and 2 min.
	BackoffMin, BackoffMax time.Duration
	// CleanSession connects with a clean session and subscribes to every
	// topic at QoS 0: the broker keeps nothing for the device while it is
	// away, and commands sent then come again from the controller once the
	// device is back online (docs/PROTOCOL.md, Transport). For brokers where
	// a persistent session is costly: on NATS each QoS 1 subscription of a
	// session is a replicated JetStream consumer (docs/SCALE.md).
	CleanSession bool

	// Logger receives the link's logs. Nil means silent.
	Logger *slog.Logger
	// Clock times the backoff and the waits; nil means the real clock.
	Clock backoff.Clock
}

// Link is the device's connection to the fleet. Its methods are safe for
// concurrent use; Run is called once.
type Link struct {
	opts    Options
	brokers []string // Broker then Brokers, without duplicates
	topics  protocol.Topics
	log     *slog.Logger

	// mu guards the fields below.
	mu       sync.Mutex
	handlers map[string]route // by topic; fixed once started
	started  bool
	conn     *conn         // the live connection, or nil
	broker   string        // the live connection's broker URL, or ""
	up       chan struct{} // closed (and replaced) when a connection comes up
}

// conn is one connection; lost is closed when it ends.
type conn struct {
	client mqtt.Client
	lost   chan struct{}
	once   sync.Once
}

// markLost closes lost once; paho calls it on a dropped connection, and we
// call it when we drop the connection ourselves (paho does not report that).
func (c *conn) markLost() { c.once.Do(func() { close(c.lost) }) }

// New checks opts and returns a link; Run connects it.
func New(opts Options) (*Link, error) {
	var brokers []string
	for _, b := range append([]string{opts.Broker}, opts.Brokers...) {
		if b == "" || slices.Contains(brokers, b) {
			continue
		}
		if !strings.HasPrefix(b, "tcp://") && !strings.HasPrefix(b, "ssl://") {
			return nil, fmt.Errorf("%w: broker %q: want tcp://host:port or ssl://host:port", ErrOptions, b)
		}
		brokers = append(brokers, b)
	}
	if len(brokers) == 0 {
		return nil, fmt.Errorf("%w: no broker", ErrOptions)
	}
	topics, err := protocol.DeviceTopics(opts.Fleet, opts.Device)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrOptions, err)
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = 30 * time.Second
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = 30 * time.Second
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = protocol.ReconnectBackoffMin
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = protocol.ReconnectBackoffMax
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = backoff.RealClock{}
	}
	return &Link{
		opts:     opts,
		brokers:  brokers,
		topics:   topics,
		log:      opts.Logger.With("component", "fleetlink"),
		handlers: map[string]route{},
		up:       make(chan struct{}),
	}, nil
}

// Topics returns the device's topics.
func (l *Link) Topics() protocol.Topics { return l.topics }

// ClientID is the MQTT client id: the device id.
func (l *Link) ClientID() string { return l.opts.Device }

// route is one subscription: its QoS and what receives its messages.
type route struct {
	qos byte
	h   func([]byte)
}

// message is the route's paho handler.
func (r route) message(_ mqtt.Client, m mqtt.Message) { r.h(m.Payload()) }

// Handle subscribes to topic with qos (0 or 1; no wildcards needed) after
// every connection and routes the messages arriving on it to h, from the
// first connection on. It must be called before Run; later it returns
// ErrStarted. QoS 1 messages published while the device is away wait in
// its persistent session; QoS 0 ones are lost then, so use 0 only for what
// the device asks for again (protocol.ChunkQoS). With Options.CleanSession
// every topic is subscribed at QoS 0. h runs on the connection's
// delivery goroutine, one message at a time, and must not block: hand the
// payload on and return. The payload is h's to keep.
func (l *Link) Handle(topic string, qos byte, h func(payload []byte)) error {
	if qos > 1 {
		return fmt.Errorf("fleetlink: handle %s: QoS %d (0 or 1)", topic, qos)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started {
		return fmt.Errorf("%w: %s", ErrStarted, topic)
	}
	l.handlers[topic] = route{qos: qos, h: h}
	return nil
}

// Broker returns the URL of the broker the link is connected to now, or ""
// when it is not connected.
func (l *Link) Broker() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.broker
}

// Connected reports whether a connection is up now.
func (l *Link) Connected() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.conn != nil
}

// Up returns a channel that is closed when the next connection comes up
// (subscribed, "online" published).
func (l *Link) Up() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.up
}

// WaitUp returns nil once a connection is up (at once if one is), or
// ctx.Err().
func (l *Link) WaitUp(ctx context.Context) error {
	for {
		l.mu.Lock()
		c, up := l.conn, l.up
		l.mu.Unlock()
		if c != nil {
			return nil
		}
		select {
		case <-up:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Run keeps a connection up until ctx is done, then publishes "offline" and
// disconnects. It returns nil once disconnected.
func (l *Link) Run(ctx context.Context) error {
	l.mu.Lock()
	l.started = true
	l.mu.Unlock()
	bo := backoff.New(l.opts.BackoffMin, l.opts.BackoffMax, l.opts.Clock)
	next, failed := 0, 0 // the broker to try next; brokers failed in a row
	for {
		broker := l.brokers[next]
		next = (next + 1) % len(l.brokers)
		c, err := l.connect(ctx, broker)
		if err == nil {
			failed = 0
			since := l.opts.Clock.Now()
			l.mu.Lock()
			l.conn, l.broker = c, broker
			close(l.up)
			l.up = make(chan struct{})
			l.mu.Unlock()
			select {
			case <-c.lost:
				l.log.Warn("connection lost")
			case <-ctx.Done():
			}
			l.mu.Lock()
			l.conn, l.broker = nil, ""
			l.mu.Unlock()
			if ctx.Err() != nil {
				t := c.client.Publish(l.topics.State, 1, true, protocol.StateOffline)
				t.WaitTimeout(time.Second)
				c.client.Disconnect(250)
				return nil
			}
			c.client.Disconnect(0)
			// Back off from scratch only after a connection that held; one
			// the broker drops at once (a duplicate client id, an ACL) keeps
			// the delay growing.
			if l.opts.Clock.Now().Sub(since) >= protocol.StableConnection {
				bo.Reset()
			}
		} else if ctx.Err() == nil {
			l.log.Warn("connect failed", "broker", broker, "err", err)
			// The next broker of this round at once; the backoff once
			// all of them failed.
			if failed++; failed < len(l.brokers) {
				continue
			}
			failed = 0
		}
		if bo.Wait(ctx, nil) != nil {
			return nil
		}
	}
}

func (l *Link) connect(ctx context.Context, broker string) (*conn, error) {
	c := &conn{lost: make(chan struct{})}
	o := mqtt.NewClientOptions().
		AddBroker(broker).
		// MQTT 3.1.1 only. Without an explicit version paho answers any
		// refused CONNECT with a second one in MQTT 3.1: a second login
		// per attempt on a broker already refusing (many devices at once
		// after an outage), and, on brokers without 3.1 (NATS), that
		// attempt's error replaces the broker's reason.
		SetProtocolVersion(4).
		SetClientID(l.opts.Device).
		SetUsername(l.opts.Username).
		SetPassword(l.opts.Password).
		SetCleanSession(l.opts.CleanSession).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(l.opts.ConnectTimeout).
		SetKeepAlive(l.opts.KeepAlive).
		SetWriteTimeout(l.opts.AckTimeout).
		SetStore(mqtt.NewMemoryStore()).
		SetWill(l.topics.State, protocol.StateOffline, 1, true).
		SetConnectionLostHandler(func(mqtt.Client, error) { c.markLost() })
	if l.opts.TLSConfig != nil {
		o.SetTLSConfig(l.opts.TLSConfig)
	}
	c.client = mqtt.NewClient(o)
	l.mu.Lock()
	routes := maps.Clone(l.handlers)
	l.mu.Unlock()
	for topic, r := range routes {
		c.client.AddRoute(topic, r.message)
	}
	fail := func(what string, err error) (*conn, error) {
		c.client.Disconnect(0)
		return nil, fmt.Errorf("fleetlink: %s: %w", what, err)
	}
	if err := l.wait(ctx, c.client.Connect(), l.opts.ConnectTimeout+time.Second, nil); err != nil {
		return fail("connect "+broker, err)
	}
	for topic, r := range routes {
		qos := r.qos
		if l.opts.CleanSession {
			qos = 0
		}
		tok := c.client.Subscribe(topic, qos, r.message)
		if err := l.wait(ctx, tok, l.opts.ConnectTimeout, c.lost); err != nil {
			return fail("subscribe "+topic, err)
		}
		if st, ok := tok.(*mqtt.SubscribeToken); ok {
			if err := protocol.Granted(st.Result()); err != nil {
				return fail("subscribe", err)
			}
		}
	}
	if err := l.wait(ctx, c.client.Publish(l.topics.State, 1, true, protocol.StateOnline), l.opts.AckTimeout, c.lost); err != nil {
		return fail("publish state", err)
	}
	l.log.Info("connected", "broker", broker, "client_id", l.opts.Device)
	return c, nil
}

// wait waits for t, ctx, the timeout on the link's clock, or lost.
func (l *Link) wait(ctx context.Context, t mqtt.Token, timeout time.Duration, lost <-chan struct{}) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-l.opts.Clock.After(timeout):
		return errTimeout
	case <-lost:
		return errConnLost
	}
}

// Publish sends payload on topic with QoS 1 and returns nil once the broker
// acknowledged it (PUBACK). An error wrapping ErrNotConnected means nothing
// was sent; any other error means the payload may or may not have reached the
// broker. If no PUBACK comes within AckTimeout, or the broker refuses, the
// connection is dropped so the next attempt starts on a fresh one. Publish
// returns soon after ctx is done.
func (l *Link) Publish(ctx context.Context, topic string, retained bool, payload []byte) error {
	l.mu.Lock()
	c := l.conn
	l.mu.Unlock()
	if c == nil {
		return fmt.Errorf("fleetlink: publish on %s: %w", topic, ErrNotConnected)
	}
	err := l.wait(ctx, c.client.Publish(topic, 1, retained, payload), l.opts.AckTimeout, c.lost)
	if err == nil {
		return nil
	}
	if errors.Is(err, mqtt.ErrNotConnected) {
		return fmt.Errorf("fleetlink: publish on %s: %w", topic, ErrNotConnected)
	}
	if ctx.Err() == nil && !errors.Is(err, errConnLost) {
		// Stuck or refused: drop the connection so Run starts a new one.
		c.client.Disconnect(0)
		c.markLost()
	}
	return fmt.Errorf("fleetlink: publish on %s: %w", topic, err)
}
