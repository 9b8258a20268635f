package telemetry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/protocol"
)

// MQTTOptions configures the MQTT uplink. Broker, ClientID, Fleet and Device
// are required; every other zero value works.
type MQTTOptions struct {
	// Broker is the broker URL, "tcp://host:1883" or "ssl://host:8883".
	Broker string
	// ClientID identifies the session on the broker; the device id is a good
	// choice. The session is persistent (clean session off), so it must be
	// stable across restarts and unique in the fleet.
	ClientID string
	// Fleet and Device name the topics (protocol.DeviceTopics).
	Fleet, Device string

	Username, Password string
	TLSConfig          *tls.Config

	// ConnectTimeout bounds one connection attempt. Default 10 s.
	ConnectTimeout time.Duration
	// AckTimeout bounds the wait for a PUBACK on a live connection. Default 30 s.
	AckTimeout time.Duration
	// KeepAlive is the MQTT keep-alive. Default 30 s.
	KeepAlive time.Duration
	// BackoffMin and BackoffMax bound the jittered reconnect backoff.
	// Defaults 500 ms and 2 min.
	BackoffMin, BackoffMax time.Duration

	// Routes are message handlers by topic, registered on every client
	// before it connects: with a persistent session the broker delivers
	// what it queued for the device right after CONNACK, before OnConnect
	// could subscribe, and paho drops messages no route takes.
	Routes map[string]mqtt.MessageHandler

	// OnConnect, if set, runs after every successful connection, before
	// anything is published; the daemon uses it to subscribe (cmd, chunk).
	OnConnect func(mqtt.Client)

	Logger *slog.Logger
	Clock  Clock
}

// MQTT is the paho-based Publisher. It owns the connection: Run connects with a
// persistent session, publishes "online" (retained) on the state topic with
// "offline" as the last will, and reconnects with jittered backoff. Every
// connection uses a fresh paho client and in-memory store, so paho never
// replays an old publish on its own: the queue decides what to resend.
type MQTT struct {
	opts   MQTTOptions
	topics protocol.Topics
	log    *slog.Logger

	// mu guards conn, the live connection or nil, and up, which is closed
	// (and replaced) when a connection comes up.
	mu   sync.Mutex
	conn *mqttConn
	up   chan struct{}
}

// mqttConn is one connection; lost is closed when it ends.
type mqttConn struct {
	client mqtt.Client
	lost   chan struct{}
	once   sync.Once
}

// markLost closes lost once; paho calls it on a dropped link, and we call it
// when we drop the link ourselves (paho does not report that).
func (c *mqttConn) markLost() { c.once.Do(func() { close(c.lost) }) }

// NewMQTT checks opts and returns an uplink; Run connects it.
func NewMQTT(opts MQTTOptions) (*MQTT, error) {
	if opts.Broker == "" || opts.ClientID == "" {
		return nil, ErrMQTTOptions
	}
	topics, err := protocol.DeviceTopics(opts.Fleet, opts.Device)
	if err != nil {
		return nil, fmt.Errorf("telemetry: mqtt: %w", err)
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
		opts.BackoffMin = 500 * time.Millisecond
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 2 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	return &MQTT{opts: opts, topics: topics, log: opts.Logger.With("component", "telemetry-mqtt"), up: make(chan struct{})}, nil
}

// Up returns a channel that is closed when the next connection comes up; the
// queue's uplink waits on it so it resumes as soon as the link is back.
func (m *MQTT) Up() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.up
}

// Topics returns the device's topics.
func (m *MQTT) Topics() protocol.Topics { return m.topics }

// Connected reports whether a connection is up.
func (m *MQTT) Connected() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.conn != nil
}

// Run keeps a connection up until ctx is done, then publishes "offline" and
// disconnects. It returns nil once disconnected.
func (m *MQTT) Run(ctx context.Context) error {
	bo := newBackoff(m.opts.BackoffMin, m.opts.BackoffMax, m.opts.Clock)
	for {
		c, err := m.connect(ctx)
		if err == nil {
			since := m.opts.Clock.Now()
			m.mu.Lock()
			m.conn = c
			close(m.up)
			m.up = make(chan struct{})
			m.mu.Unlock()
			select {
			case <-c.lost:
				m.log.Warn("connection lost")
			case <-ctx.Done():
			}
			m.mu.Lock()
			m.conn = nil
			m.mu.Unlock()
			if ctx.Err() != nil {
				t := c.client.Publish(m.topics.State, 1, true, protocol.StateOffline)
				t.WaitTimeout(time.Second)
				c.client.Disconnect(250)
				return nil
			}
			c.client.Disconnect(0)
			// Back off from scratch only after a connection that held; one
			// the broker drops at once (a duplicate client id, an ACL) keeps
			// the delay growing.
			if m.opts.Clock.Now().Sub(since) >= stableConnection {
				bo.reset()
			}
		} else {
			m.log.Warn("connect failed", "broker", m.opts.Broker, "err", err)
		}
		if bo.wait(ctx, nil) != nil {
			return nil
		}
	}
}

func (m *MQTT) connect(ctx context.Context) (*mqttConn, error) {
	c := &mqttConn{lost: make(chan struct{})}
	o := mqtt.NewClientOptions().
		AddBroker(m.opts.Broker).
		SetClientID(m.opts.ClientID).
		SetUsername(m.opts.Username).
		SetPassword(m.opts.Password).
		SetCleanSession(false).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(m.opts.ConnectTimeout).
		SetKeepAlive(m.opts.KeepAlive).
		SetWriteTimeout(m.opts.AckTimeout).
		SetStore(mqtt.NewMemoryStore()).
		SetWill(m.topics.State, protocol.StateOffline, 1, true).
		SetConnectionLostHandler(func(mqtt.Client, error) { c.markLost() })
	if m.opts.TLSConfig != nil {
		o.SetTLSConfig(m.opts.TLSConfig)
	}
	c.client = mqtt.NewClient(o)
	for topic, h := range m.opts.Routes {
		c.client.AddRoute(topic, h)
	}
	t := c.client.Connect()
	if err := waitToken(ctx, t, m.opts.ConnectTimeout+time.Second, nil); err != nil {
		c.client.Disconnect(0)
		return nil, fmt.Errorf("telemetry: mqtt: connect %s: %w", m.opts.Broker, err)
	}
	if m.opts.OnConnect != nil {
		m.opts.OnConnect(c.client)
	}
	t = c.client.Publish(m.topics.State, 1, true, protocol.StateOnline)
	if err := waitToken(ctx, t, m.opts.AckTimeout, c.lost); err != nil {
		c.client.Disconnect(0)
		return nil, fmt.Errorf("telemetry: mqtt: publish state: %w", err)
	}
	m.log.Info("connected", "broker", m.opts.Broker)
	return c, nil
}

// stableConnection is how long a connection must last for the reconnect
// backoff to start again from its minimum.
const stableConnection = 30 * time.Second

// errConnLost is returned when the connection dropped while a token was
// pending: the payload may or may not have arrived.
var errConnLost = errors.New("connection lost")

// waitToken waits for t, ctx, the timeout, or lost.
func waitToken(ctx context.Context, t mqtt.Token, timeout time.Duration, lost <-chan struct{}) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return errors.New("timed out")
	case <-lost:
		return errConnLost
	}
}

// Publish implements Publisher: QoS 1 to the events topic, returning after
// the PUBACK. If no PUBACK comes within AckTimeout the connection is dropped,
// so the next attempt starts clean.
func (m *MQTT) Publish(ctx context.Context, payload []byte) error {
	m.mu.Lock()
	c := m.conn
	m.mu.Unlock()
	if c == nil {
		return fmt.Errorf("telemetry: mqtt: publish: %w", ErrNotConnected)
	}
	t := c.client.Publish(m.topics.Events, 1, false, payload)
	err := waitToken(ctx, t, m.opts.AckTimeout, c.lost)
	if err == nil {
		return nil
	}
	if errors.Is(err, mqtt.ErrNotConnected) {
		return fmt.Errorf("telemetry: mqtt: publish: %w", ErrNotConnected)
	}
	if ctx.Err() == nil && !errors.Is(err, errConnLost) {
		// Stuck or refused: drop the link so Run starts a new connection.
		c.client.Disconnect(0)
		c.markLost()
	}
	return fmt.Errorf("telemetry: mqtt: publish: %w", err)
}
