package updater

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/protocol"
)

// LinkOptions configure a Link. Fleet and Device are required.
type LinkOptions struct {
	Fleet, Device string
	// Status, if set, builds the device's status; the link publishes it
	// (retained) after every connection and after every ack.
	Status func() protocol.Status
	// Buffer is how many received chunks may wait for the downloader
	// (default 64); more are dropped and asked for again.
	Buffer int
	// Timeout bounds a subscribe or publish (default 10 s).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Link is the updater's side of the MQTT connection the telemetry uplink
// owns: hand its OnConnect to telemetry.MQTTOptions.OnConnect and it
// subscribes to the device's cmd and chunk topics on every connection. It is
// the updater's ChunkSource (requests on artifacts/req, chunks from the chunk
// topic) and Reporter (acks on the ack topic, then the status).
//
// Methods are safe for concurrent use. Message handlers never block on the
// updater: commands go to the handler set with SetCommandHandler (which
// only verifies and queues), chunks to a buffered channel.
type Link struct {
	opts   LinkOptions
	topics protocol.Topics
	log    *slog.Logger
	chunks chan Chunk
	// connected receives after every connection (ConnectNotifier).
	connected chan struct{}

	mu      sync.Mutex // guards client, handler
	client  mqtt.Client
	handler func([]byte) error
}

// NewLink checks opts.
func NewLink(opts LinkOptions) (*Link, error) {
	topics, err := protocol.DeviceTopics(opts.Fleet, opts.Device)
	if err != nil {
		return nil, fmt.Errorf("updater: mqtt: %w", err)
	}
	if opts.Buffer <= 0 {
		opts.Buffer = 64
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Link{opts: opts, topics: topics, log: opts.Logger.With("component", "updater-mqtt"), chunks: make(chan Chunk, opts.Buffer),
		connected: make(chan struct{}, 1)}, nil
}

// SetCommandHandler sets what receives cmd-topic payloads
// (Updater.HandleCommand); set it before the first connection.
func (l *Link) SetCommandHandler(h func(payload []byte) error) {
	l.mu.Lock()
	l.handler = h
	l.mu.Unlock()
}

// Routes are the link's handlers by topic; pass them as
// telemetry.MQTTOptions.Routes so commands the broker queued for the
// persistent session while the device was away are not dropped before
// OnConnect subscribes.
func (l *Link) Routes() map[string]mqtt.MessageHandler {
	return map[string]mqtt.MessageHandler{
		l.topics.Cmd:   func(_ mqtt.Client, m mqtt.Message) { l.onCommand(m.Payload()) },
		l.topics.Chunk: func(_ mqtt.Client, m mqtt.Message) { l.onChunk(m.Payload()) },
	}
}

// OnConnect subscribes to the cmd and chunk topics on c and publishes the
// status; pass it as telemetry.MQTTOptions.OnConnect.
func (l *Link) OnConnect(c mqtt.Client) {
	l.mu.Lock()
	l.client = c
	l.mu.Unlock()
	for topic, h := range l.Routes() {
		t := c.Subscribe(topic, 1, h)
		if !t.WaitTimeout(l.opts.Timeout) || t.Error() != nil {
			l.log.Warn("subscribe", "topic", topic, "err", t.Error())
		}
	}
	if err := l.publishStatus(c); err != nil {
		l.log.Warn("status", "err", err)
	}
	select {
	case l.connected <- struct{}{}:
	default:
	}
}

// Connected implements ConnectNotifier: a download in progress asks for its
// missing chunks as soon as the subscriptions are in place.
func (l *Link) Connected() <-chan struct{} { return l.connected }

func (l *Link) onCommand(p []byte) {
	l.mu.Lock()
	h := l.handler
	l.mu.Unlock()
	if h == nil {
		l.log.Warn("command received before a handler was set")
		return
	}
	if err := h(p); err != nil {
		l.log.Debug("command", "err", err) // HandleCommand logged why
	}
}

func (l *Link) onChunk(p []byte) {
	c, err := protocol.ParseChunk(p)
	if err != nil {
		l.log.Warn("bad chunk", "err", err)
		return
	}
	ch := Chunk{Artifact: hex.EncodeToString(c.Artifact[:]), Index: int(c.Index), Hash: c.Digest, Data: c.Data}
	if c.Kind == protocol.ChunkError {
		ch.Err = string(c.Data)
		if ch.Err == "" {
			ch.Err = "the controller cannot serve the artifact"
		}
	}
	select {
	case l.chunks <- ch:
	default: // the downloader asks again
	}
}

func (l *Link) conn() (mqtt.Client, error) {
	l.mu.Lock()
	c := l.client
	l.mu.Unlock()
	if c == nil || !c.IsConnectionOpen() {
		return nil, ErrNotConnected
	}
	return c, nil
}

func (l *Link) publish(ctx context.Context, c mqtt.Client, topic string, retained bool, payload []byte) error {
	t := c.Publish(topic, 1, retained, payload)
	timer := time.NewTimer(l.opts.Timeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return fmt.Errorf("updater: mqtt: publish on %s timed out", topic)
	}
}

// Request implements ChunkSource.
func (l *Link) Request(ctx context.Context, r ChunkRequest) error {
	c, err := l.conn()
	if err != nil {
		return err
	}
	b, err := json.Marshal(protocol.ChunkRequest{Device: l.opts.Device, SHA256: r.Artifact, First: int64(r.First), Count: min(r.Count, protocol.MaxChunkWindow)})
	if err != nil {
		return err
	}
	return l.publish(ctx, c, l.topics.ArtifactsReq, false, b)
}

// Chunks implements ChunkSource.
func (l *Link) Chunks() <-chan Chunk { return l.chunks }

// Report implements Reporter: the ack, then the status.
func (l *Link) Report(ctx context.Context, a protocol.Ack) error {
	c, err := l.conn()
	if err != nil {
		return err
	}
	if err := a.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if err := l.publish(ctx, c, l.topics.Ack, false, b); err != nil {
		return err
	}
	return l.publishStatus(c)
}

// PublishStatus publishes the status now (after a change the updater does
// not know of: a model loaded by hand, new labels).
func (l *Link) PublishStatus() error {
	c, err := l.conn()
	if err != nil {
		return err
	}
	return l.publishStatus(c)
}

func (l *Link) publishStatus(c mqtt.Client) error {
	if l.opts.Status == nil {
		return nil
	}
	b, err := json.Marshal(l.opts.Status())
	if err != nil {
		return err
	}
	return l.publish(context.Background(), c, l.topics.Status, true, b)
}
