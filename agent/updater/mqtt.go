package updater

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// Conn is the device's fleet connection as the updater's Link uses it;
// fleetlink.Link implements it, and the daemon hands the one connection to
// both the Link and telemetry. Its methods are safe for concurrent use.
type Conn interface {
	// Handle subscribes to topic with qos and routes every message arriving
	// on it to h, from the first connection on, including what the broker
	// delivers right after CONNACK (commands queued in the persistent
	// session); it must be called before the connection runs, and returns
	// an error after. h must not block.
	Handle(topic string, qos byte, h func(payload []byte)) error
	// Publish sends payload on topic with QoS 1 and returns nil once the
	// broker acknowledged it. An error wrapping fleetlink.ErrNotConnected
	// means nothing was sent. It returns soon after ctx is done.
	Publish(ctx context.Context, topic string, retained bool, payload []byte) error
	// Up returns a channel that is closed when the next connection is up,
	// its subscriptions in place.
	Up() <-chan struct{}
}

// LinkOptions configure a Link. Conn, Fleet and Device are required.
type LinkOptions struct {
	// Conn is the device's fleet connection.
	Conn          Conn
	Fleet, Device string
	// Status, if set, builds the device's status; the link publishes it
	// (retained) after every connection (Run), after every ack, and when
	// PublishStatus is called.
	Status func() protocol.Status
	// Buffer is how many received chunks may wait for the downloader
	// (default 64); more are dropped and asked for again.
	Buffer int
	// Timeout bounds a publish (default 10 s).
	Timeout time.Duration
	Logger  *slog.Logger
}

// Link is the updater's side of the device's fleet connection: it receives
// the device's cmd and chunk topics through Conn, and is the updater's
// ChunkSource (requests on artifacts/req, chunks from the chunk topic) and
// Reporter (acks on the ack topic, then the status). Run follows the
// connection: after every one it publishes the status and signals
// Connected.
//
// Methods are safe for concurrent use. Message handlers never block on the
// updater: commands go to the handler set with SetCommandHandler (which
// only verifies and queues), chunks to a buffered channel.
type Link struct {
	opts   LinkOptions
	topics protocol.Topics
	log    *slog.Logger
	chunks chan Chunk
	// up is Conn's Up channel, taken by NewLink, before the connection runs,
	// so Run cannot miss the first connection.
	up <-chan struct{}
	// connected receives after every connection (Connected).
	connected chan struct{}

	mu      sync.Mutex // guards handler
	handler func([]byte) error
}

// NewLink checks opts and registers the link's handlers on opts.Conn, so
// call it before the connection runs.
func NewLink(opts LinkOptions) (*Link, error) {
	if opts.Conn == nil {
		return nil, fmt.Errorf("%w: link without a connection", ErrOptions)
	}
	topics, err := protocol.DeviceTopics(opts.Fleet, opts.Device)
	if err != nil {
		return nil, fmt.Errorf("updater: link: %w", err)
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
	l := &Link{opts: opts, topics: topics, log: opts.Logger.With("component", "updater-link"), chunks: make(chan Chunk, opts.Buffer),
		up: opts.Conn.Up(), connected: make(chan struct{}, 1)}
	if err := opts.Conn.Handle(topics.Cmd, 1, l.onCommand); err != nil {
		return nil, fmt.Errorf("updater: link: %w", err)
	}
	// Chunks at QoS 0: the downloader asks again for what it misses.
	if err := opts.Conn.Handle(topics.Chunk, protocol.ChunkQoS, l.onChunk); err != nil {
		return nil, fmt.Errorf("updater: link: %w", err)
	}
	return l, nil
}

// SetCommandHandler sets what receives cmd-topic payloads
// (Updater.HandleCommand); set it before the connection runs.
func (l *Link) SetCommandHandler(h func(payload []byte) error) {
	l.mu.Lock()
	l.handler = h
	l.mu.Unlock()
}

// Run publishes the status after every connection of Conn (once the
// subscriptions and "online" are in place) and signals Connected, until ctx
// is done; it returns nil. Call it once.
func (l *Link) Run(ctx context.Context) error {
	up := l.up
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-up:
		}
		// Connections between the close and this call coalesce into one.
		up = l.opts.Conn.Up()
		select {
		case l.connected <- struct{}{}:
		default:
		}
		if err := l.PublishStatus(ctx); err != nil && ctx.Err() == nil {
			l.log.Warn("status after connecting", "err", err)
		}
	}
}

// Connected receives a value after every connection (several may coalesce
// into one) while Run runs, so a download in progress asks for its missing
// chunks at once: requests sent before may have been lost with the old
// connection.
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

// publish publishes through Conn for at most Timeout.
func (l *Link) publish(ctx context.Context, topic string, retained bool, payload []byte) error {
	ctx, cancel := context.WithTimeout(ctx, l.opts.Timeout)
	defer cancel()
	return l.opts.Conn.Publish(ctx, topic, retained, payload)
}

// Request implements ChunkSource.
func (l *Link) Request(ctx context.Context, r ChunkRequest) error {
	b, err := json.Marshal(protocol.ChunkRequest{Device: l.opts.Device, SHA256: r.Artifact, First: int64(r.First), Count: min(r.Count, protocol.MaxChunkWindow)})
	if err != nil {
		return err
	}
	return l.publish(ctx, l.topics.ArtifactsReq, false, b)
}

// Chunks implements ChunkSource.
func (l *Link) Chunks() <-chan Chunk { return l.chunks }

// Report implements Reporter: the ack, then the status.
func (l *Link) Report(ctx context.Context, a protocol.Ack) error {
	if err := a.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if err := l.publish(ctx, l.topics.Ack, false, b); err != nil {
		return err
	}
	return l.PublishStatus(ctx)
}

// PublishStatus publishes the status now, retained: after a change the
// updater does not know of (a model loaded by hand, new labels), or on a
// timer so the fleet sees counters move.
func (l *Link) PublishStatus(ctx context.Context) error {
	if l.opts.Status == nil {
		return nil
	}
	b, err := json.Marshal(l.opts.Status())
	if err != nil {
		return err
	}
	return l.publish(ctx, l.topics.Status, true, b)
}
