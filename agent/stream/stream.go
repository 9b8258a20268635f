// Package stream runs a model over the messages of a local MQTT topic (a
// sensor or a camera publishing on the gateway's own broker) and publishes
// one JSON result per inference on another topic.
//
// Each stream keeps one MQTT connection with a persistent session (clean
// session off, a fixed client id), so the broker keeps its subscription and
// queues QoS 1 messages while the stream is away. It reconnects with
// jittered backoff (package backoff), on a fresh paho client and in-memory
// store every time, and subscribes again on every connection; the delivery
// handler is installed before CONNECT, so the messages the broker sends
// right after CONNACK are not lost. The delivery callback only numbers
// the message and puts it in a bounded queue (count and bytes): when
// inference cannot keep up the overflow policy drops the oldest waiting
// message or the new one, and every drop is counted. One worker per stream
// decodes, runs the model by name through the agent's serving registry (so
// an update's swap applies to the next message) and publishes, so results
// leave in the order the messages came. A message is handled once: the
// registry runs each call on exactly one model instance, old or new.
//
// What is lost, and counted: messages dropped by the overflow policy, too
// large, or undecodable; messages waiting in the queue when the agent stops.
// What the broker may deliver twice: a QoS 1 message whose acknowledgement
// was lost when the connection dropped (MQTT's at-least-once). What a
// subscriber may receive twice, with the same id: a result whose publication
// was under way when the connection dropped. The worker cannot know whether
// it arrived, so it publishes it again on the next connection (counted in
// Stats.Republished) before it takes the next message; a result is never
// given up silently (Stats.PublishErrors counts those that were: at stop,
// or after repeated failures on live connections).
package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/oip"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/protocol"
)

// Errors of this package; callers test with errors.Is.
var (
	// ErrOptions is returned by New for options that cannot work.
	ErrOptions = errors.New("stream: bad options")
	// ErrBadMessage wraps every error about a message's content.
	ErrBadMessage = errors.New("stream: bad message")
	// ErrUnsupportedModel: the model's signature does not fit the decoder
	// or the window (for example an image decoder on a model with two
	// inputs).
	ErrUnsupportedModel = errors.New("stream: model does not fit the decoder")
	// errConnLost: the connection dropped while a token was pending; the
	// message may or may not have arrived.
	errConnLost = errors.New("stream: connection lost")
	// errTimeout: a token did not complete in time.
	errTimeout = errors.New("stream: timed out")
)

// Backend runs models by name; *serving.Registry is one. Both methods are
// safe for concurrent use. Infer calls prepare with the entry of the model
// instance that will run (it may call it more than once during a swap) and
// emit with each output, valid only during the call; it runs the inputs
// once, on one instance. Unknown models give errors wrapping
// catalog.ErrModelNotFound.
type Backend interface {
	Infer(ctx context.Context, name string, version int64,
		prepare func(catalog.Entry) ([][]byte, error), emit func(i int, data []byte) error,
	) (catalog.Entry, catalog.Timing, error)
	Lookup(name string, version int64) (catalog.Entry, error)
}

// Observer receives what streams do, for telemetry. It is called from the
// streams' goroutines, concurrently, and must not block.
type Observer interface {
	ObserveStream(o Observation)
}

// Observation is one inference of a stream, or messages it dropped.
type Observation struct {
	Stream string
	// Model is the instance that ran, or for a drop the one serving then
	// (empty when none is).
	Model catalog.Entry
	// Dropped, when not 0, makes this a drop: that many messages were
	// dropped unread (the overflow policy, the size limit, shutdown) and
	// the model never saw them; the other fields but Stream and Model are
	// zero.
	Dropped int
	Latency time.Duration
	// Code is empty on success, else "bad_input", "model_not_found",
	// "overload", "canceled", "internal".
	Code string
	// Inputs are the model's inputs for a successful inference, valid only
	// during the call.
	Inputs []tensor.Tensor
	// Outputs are the model's outputs for a successful inference, valid
	// only during the call.
	Outputs []tensor.Tensor
}

// Options configure a stream. Broker, Topic, Model, ResultTopic and
// Backend are required.
type Options struct {
	Name        string
	Broker      string // tcp://host:port or ssl://host:port
	Topic       string
	QoS         byte // 0 or 1
	ClientID    string
	Username    string
	Password    string
	Decoder     string     // raw, json or image
	PixelRange  [2]float32 // image decoder, FP32 inputs; zero value means [0, 1]
	WindowSize  int        // elements; 0: no window
	WindowHop   int
	Model       string
	ResultTopic string
	Queue       int   // messages; default 8
	QueueBytes  int64 // default 16 MiB
	DropNewest  bool  // overflow policy; default drop the oldest
	MaxMessage  int64 // bytes; default 4 MiB (never above QueueBytes)
	Backend     Backend
	Observer    Observer // nil: none
	Logger      *slog.Logger
	// ConnectRetry is the longest wait between reconnects (jittered
	// backoff from min(500 ms, ConnectRetry)); default 10 s.
	ConnectRetry time.Duration
	// ConnectTimeout bounds a connection attempt and its SUBACK; default
	// 10 s. AckTimeout bounds the wait for a result's PUBACK on a live
	// connection, after which the connection is dropped and the result
	// published again on the next; default 30 s.
	ConnectTimeout, AckTimeout time.Duration
	// Clock times the backoff and the timeouts; nil: the real clock.
	Clock backoff.Clock
}

// Stream is one running stream. Its methods are safe for concurrent use;
// Run is called once.
type Stream struct {
	opts Options
	log  *slog.Logger
	dec  decoder
	q    *queue

	seq         atomic.Uint64 // messages received
	results     atomic.Uint64
	published   atomic.Uint64 // results the broker acknowledged (QoS 1) or took (QoS 0)
	pubErrors   atomic.Uint64
	republished atomic.Uint64
	connected   atomic.Bool

	mu      sync.Mutex        // guards dropped, errors, conn and up
	dropped map[string]uint64 // by reason: queue_full, too_large, shutdown
	errors  map[string]uint64 // by Observation.Code
	conn    *conn             // the live connection, subscribed; nil when none
	up      chan struct{}     // closed (and replaced) when a connection comes up
}

// conn is one connection; lost is closed when it ends.
type conn struct {
	client mqtt.Client
	lost   chan struct{}
	once   sync.Once
}

// markLost closes lost once: paho calls it on a dropped connection, and the
// stream when it drops one itself (paho does not report that).
func (c *conn) markLost() { c.once.Do(func() { close(c.lost) }) }

// New checks opts and returns a stream; Run connects it.
func New(opts Options) (*Stream, error) {
	switch {
	case opts.Broker == "" || opts.Topic == "" || opts.ResultTopic == "" || opts.Model == "":
		return nil, fmt.Errorf("%w: broker, topic, result topic and model are required", ErrOptions)
	case opts.Backend == nil:
		return nil, fmt.Errorf("%w: no backend", ErrOptions)
	case opts.QoS > 1:
		return nil, fmt.Errorf("%w: qos %d", ErrOptions, opts.QoS)
	case opts.WindowSize < 0 || opts.WindowHop < 0 || opts.WindowHop > opts.WindowSize || (opts.WindowSize > 0 && opts.WindowHop == 0):
		return nil, fmt.Errorf("%w: window size %d, hop %d", ErrOptions, opts.WindowSize, opts.WindowHop)
	}
	if opts.PixelRange == ([2]float32{}) {
		opts.PixelRange = [2]float32{0, 1}
	}
	dec, err := newDecoder(opts.Decoder, opts.PixelRange)
	if err != nil {
		return nil, err
	}
	if opts.WindowSize > 0 && opts.Decoder == "image" {
		return nil, fmt.Errorf("%w: a window needs the raw or json decoder", ErrOptions)
	}
	if opts.Name == "" {
		opts.Name = opts.Topic
	}
	if opts.ClientID == "" {
		opts.ClientID = "outpost-stream-" + opts.Name
	}
	if opts.Queue <= 0 {
		opts.Queue = 8
	}
	if opts.QueueBytes <= 0 {
		opts.QueueBytes = 16 << 20
	}
	if opts.MaxMessage <= 0 {
		opts.MaxMessage = 4 << 20
	}
	opts.MaxMessage = min(opts.MaxMessage, opts.QueueBytes)
	if opts.ConnectRetry <= 0 {
		opts.ConnectRetry = 10 * time.Second
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = 30 * time.Second
	}
	if opts.Clock == nil {
		opts.Clock = backoff.RealClock{}
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Stream{
		opts: opts, log: log.With("stream", opts.Name), dec: dec,
		q:       newQueue(opts.Queue, opts.QueueBytes, !opts.DropNewest),
		dropped: map[string]uint64{}, errors: map[string]uint64{}, up: make(chan struct{}),
	}, nil
}

// Name is the stream's name.
func (s *Stream) Name() string { return s.opts.Name }

// Run connects, subscribes and handles messages until ctx is done. It
// returns nil after a clean stop; a broker that is down is waited for, not
// an error.
func (s *Stream) Run(ctx context.Context) error {
	// The worker stops taking messages when ctx ends, and finishes the one
	// in hand (its inference and the publication of the result) within
	// shutdownGrace; only then is the connection closed.
	linkCtx, stopLink := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLink()
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var link, work sync.WaitGroup
	link.Go(func() { s.keepConnected(linkCtx) })
	work.Go(func() { s.work(workCtx, ctx.Done()) })
	<-ctx.Done()
	grace := time.AfterFunc(shutdownGrace, cancelWork)
	work.Wait()
	grace.Stop()
	stopLink()
	link.Wait()
	// What still waits in the queue is dropped and counted.
	if n := s.q.close(); n > 0 {
		s.drop("shutdown", n)
	}
	return nil
}

// keepConnected keeps a subscribed connection up until ctx is done, then
// disconnects.
func (s *Stream) keepConnected(ctx context.Context) {
	clock := s.opts.Clock
	bo := backoff.New(min(500*time.Millisecond, s.opts.ConnectRetry), s.opts.ConnectRetry, clock)
	for {
		c, err := s.connect(ctx)
		if err == nil {
			since := clock.Now()
			s.mu.Lock()
			s.conn = c
			close(s.up)
			s.up = make(chan struct{})
			s.mu.Unlock()
			s.connected.Store(true)
			s.log.Info("stream subscribed", "broker", s.opts.Broker, "topic", s.opts.Topic)
			select {
			case <-c.lost:
				s.log.Warn("stream connection lost", "broker", s.opts.Broker)
			case <-ctx.Done():
			}
			s.connected.Store(false)
			s.mu.Lock()
			s.conn = nil
			s.mu.Unlock()
			if ctx.Err() != nil {
				c.client.Disconnect(250)
				return
			}
			c.client.Disconnect(0)
			// Back off from scratch only after a connection that held; one
			// the broker drops at once (a duplicate client id, an ACL) keeps
			// the delay growing.
			if clock.Now().Sub(since) >= stableConnection {
				bo.Reset()
			}
		} else if ctx.Err() == nil {
			s.log.Warn("stream connect failed", "broker", s.opts.Broker, "err", err)
		}
		if bo.Wait(ctx, nil) != nil {
			return
		}
	}
}

// stableConnection is how long a connection must last for the reconnect
// backoff to start again from its minimum.
const stableConnection = 30 * time.Second

// connect makes a fresh client, connects it and subscribes.
func (s *Stream) connect(ctx context.Context) (*conn, error) {
	c := &conn{lost: make(chan struct{})}
	c.client = mqtt.NewClient(mqtt.NewClientOptions().
		AddBroker(s.opts.Broker).
		SetClientID(s.opts.ClientID).
		SetUsername(s.opts.Username).
		SetPassword(s.opts.Password).
		SetCleanSession(false).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(s.opts.ConnectTimeout).
		SetKeepAlive(30 * time.Second).
		SetWriteTimeout(s.opts.AckTimeout).
		SetStore(mqtt.NewMemoryStore()). // nothing replayed behind the worker's back
		SetOrderMatters(true).           // the callback runs in order, and only enqueues
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { s.receive(m.Payload()) }).
		SetConnectionLostHandler(func(mqtt.Client, error) { c.markLost() }))
	fail := func(what string, err error) (*conn, error) {
		c.client.Disconnect(0)
		return nil, fmt.Errorf("stream: %s: %w", what, err)
	}
	if err := s.wait(ctx, c.client.Connect(), s.opts.ConnectTimeout+time.Second, nil); err != nil {
		return fail("connect "+s.opts.Broker, err)
	}
	// A persistent session keeps the subscription; subscribing again covers
	// a broker that lost its sessions.
	tok := c.client.Subscribe(s.opts.Topic, s.opts.QoS, nil)
	if err := s.wait(ctx, tok, s.opts.ConnectTimeout, c.lost); err != nil {
		return fail("subscribe "+s.opts.Topic, err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		if err := protocol.Granted(st.Result()); err != nil {
			return fail("subscribe", err)
		}
	}
	return c, nil
}

// wait waits for t, ctx, the timeout on the stream's clock, or lost.
func (s *Stream) wait(ctx context.Context, t mqtt.Token, timeout time.Duration, lost <-chan struct{}) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-s.opts.Clock.After(timeout):
		return errTimeout
	case <-lost:
		return errConnLost
	}
}

// liveConn returns the live connection, waiting for one until ctx is done.
// A connection that was lost is never returned, even before keepConnected
// has cleared it.
func (s *Stream) liveConn(ctx context.Context) (*conn, error) {
	for {
		s.mu.Lock()
		c, up := s.conn, s.up
		s.mu.Unlock()
		if c != nil {
			select {
			case <-c.lost: // ended, not yet cleared: wait for the next one
			default:
				return c, nil
			}
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// shutdownGrace bounds how long a stopping stream waits for the message in
// hand.
const shutdownGrace = 2 * time.Second

// receive runs on paho's delivery goroutine: number the message, queue it,
// never block.
func (s *Stream) receive(payload []byte) {
	seq := s.seq.Add(1)
	if int64(len(payload)) > s.opts.MaxMessage {
		s.drop("too_large", 1)
		return
	}
	n, closed := s.q.push(message{seq: seq, payload: payload})
	switch {
	case closed:
		s.drop("shutdown", n)
	case n > 0:
		s.drop("queue_full", n)
	}
}

func (s *Stream) drop(reason string, n int) {
	s.mu.Lock()
	s.dropped[reason] += uint64(n)
	s.mu.Unlock()
	if s.opts.Observer != nil {
		e, _ := s.opts.Backend.Lookup(s.opts.Model, 0)
		s.opts.Observer.ObserveStream(Observation{Stream: s.opts.Name, Model: e, Dropped: n})
	}
}

// work handles queued messages one at a time, in order, until stop is
// closed; ctx bounds the handling of each.
func (s *Stream) work(ctx context.Context, stop <-chan struct{}) {
	w := &worker{s: s}
	for {
		// pop prefers a waiting message to a closed stop: look first, so
		// the worker takes no new message once the stream stops.
		select {
		case <-stop:
			return
		default:
		}
		m, ok := s.q.pop(stop)
		if !ok {
			return
		}
		w.handle(ctx, m)
	}
}

// worker holds the state of a stream's one worker goroutine.
type worker struct {
	s    *Stream
	out  []byte
	resp oip.Response
	// outBufs keep each output's data; inTensors the inputs observed.
	outBufs    [][]byte
	inTensors  []tensor.Tensor
	outTensors []tensor.Tensor
	// window state: the elements kept, the datatype they are in, the seq
	// of the last message added, and how many windows have run.
	win     []byte
	winType tensor.DataType
	lastSeq uint64
	windows uint64
}

func (w *worker) handle(ctx context.Context, m message) {
	s := w.s
	if s.opts.WindowSize == 0 {
		w.infer(ctx, strconv.FormatUint(m.seq, 10), func(e catalog.Entry) ([][]byte, error) {
			return s.dec.inputs(m.payload, e)
		})
		return
	}
	e, err := s.opts.Backend.Lookup(s.opts.Model, 0)
	if err != nil {
		w.fail(ctx, strconv.FormatUint(m.seq, 10), catalog.Entry{}, 0, err)
		return
	}
	elems, err := s.dec.elements(m.payload, e)
	if err != nil {
		w.fail(ctx, strconv.FormatUint(m.seq, 10), e, 0, err)
		return
	}
	in := e.Inputs[0]
	n, _ := tensor.NumElements(in.Shape)
	if n != s.opts.WindowSize {
		w.fail(ctx, strconv.FormatUint(m.seq, 10), e, 0, fmt.Errorf("%w: window size %d, input %q of %s takes %d elements", ErrUnsupportedModel, s.opts.WindowSize, in.Name, e.Name, n))
		return
	}
	// A window never spans a gap (a dropped or bad message) nor two
	// datatypes (a swap to a model with another input type).
	if m.seq != w.lastSeq+1 || in.DataType != w.winType {
		w.win = w.win[:0]
	}
	w.lastSeq, w.winType = m.seq, in.DataType
	es := in.DataType.Size()
	size, hop := s.opts.WindowSize*es, s.opts.WindowHop*es
	w.win = append(w.win, elems...)
	for len(w.win) >= size {
		w.windows++
		win := w.win[:size]
		w.infer(ctx, strconv.FormatUint(m.seq, 10)+":"+strconv.FormatUint(w.windows, 10), func(e catalog.Entry) ([][]byte, error) {
			if e.Inputs[0].DataType != in.DataType || len(e.Inputs) != 1 {
				return nil, fmt.Errorf("%w: the model changed its input during the window", ErrUnsupportedModel)
			}
			return [][]byte{win}, nil
		})
		w.win = w.win[:copy(w.win, w.win[hop:])]
	}
	// Keep the buffer from growing without bound on large messages.
	if cap(w.win) > 4*size {
		w.win = append([]byte(nil), w.win...)
	}
}

// infer runs the model and publishes the result (or the error) as id.
func (w *worker) infer(ctx context.Context, id string, prepare func(catalog.Entry) ([][]byte, error)) {
	s := w.s
	start := time.Now()
	var used catalog.Entry
	var inputs [][]byte
	e, _, err := s.opts.Backend.Infer(ctx, s.opts.Model, 0, func(e catalog.Entry) ([][]byte, error) {
		used = e
		in, err := prepare(e)
		inputs = in
		return in, err
	}, func(i int, data []byte) error {
		// data is valid only during the call: keep a copy.
		for len(w.outBufs) <= i {
			w.outBufs = append(w.outBufs, nil)
		}
		w.outBufs[i] = append(w.outBufs[i][:0], data...)
		return nil
	})
	latency := time.Since(start)
	if err != nil {
		w.fail(ctx, id, e, latency, err)
		return
	}
	r := &w.resp
	r.Reset()
	r.ModelName, r.ModelVersion, r.ModelDigest, r.ID = e.Name, strconv.FormatInt(e.Version, 10), e.Digest, id
	for i, info := range used.Outputs {
		r.Outputs = append(r.Outputs, oip.Output{Tensor: tensor.Tensor{Name: info.Name, DataType: info.DataType, Shape: info.Shape, Data: w.outBufs[i]}})
	}
	w.out, _ = oip.AppendResponse(w.out[:0], r)
	s.results.Add(1)
	w.publish(ctx, w.out)
	if s.opts.Observer != nil {
		o := Observation{Stream: s.opts.Name, Model: e, Latency: latency, Inputs: w.inTensors[:0]}
		for i, in := range used.Inputs {
			if i < len(inputs) {
				o.Inputs = append(o.Inputs, tensor.Tensor{Name: in.Name, DataType: in.DataType, Shape: in.Shape, Data: inputs[i]})
			}
		}
		w.inTensors = o.Inputs
		o.Outputs = w.outTensors[:0]
		for i := range r.Outputs {
			o.Outputs = append(o.Outputs, r.Outputs[i].Tensor)
		}
		w.outTensors = o.Outputs
		s.opts.Observer.ObserveStream(o)
	}
}

// fail counts err, logs it, and publishes it as the result for id:
// {"id": ..., "error": ...}.
func (w *worker) fail(ctx context.Context, id string, e catalog.Entry, latency time.Duration, err error) {
	s := w.s
	code := errorCode(err)
	s.mu.Lock()
	s.errors[code]++
	s.mu.Unlock()
	s.log.Debug("stream message failed", "id", id, "code", code, "err", err)
	if s.opts.Observer != nil {
		if e.Name == "" {
			e, _ = s.opts.Backend.Lookup(s.opts.Model, 0)
		}
		s.opts.Observer.ObserveStream(Observation{Stream: s.opts.Name, Model: e, Latency: latency, Code: code})
	}
	w.out = append(w.out[:0], `{"id":`...)
	w.out = strconv.AppendQuote(w.out, id)
	w.out = append(w.out, `,"error":`...)
	w.out = strconv.AppendQuote(w.out, err.Error())
	w.out = append(w.out, '}')
	w.publish(ctx, w.out)
}

// errorCode is the short code an error is counted by.
func errorCode(err error) string {
	switch {
	case errors.Is(err, ErrBadMessage), errors.Is(err, ErrUnsupportedModel), errors.Is(err, catalog.ErrBadInput):
		return "bad_input"
	case errors.Is(err, catalog.ErrModelNotFound), errors.Is(err, catalog.ErrVersionNotFound):
		return "model_not_found"
	case errors.Is(err, catalog.ErrOverloaded):
		return "overload"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	}
	return "internal"
}

// publish sends a result; paho copies the payload. It waits for the
// broker to take it (a PUBACK for QoS 1, a loopback round trip), so while
// the broker is away the worker waits for it to come back and the queue's
// policy applies to whatever arrives meanwhile: memory stays bounded however
// long it is away. A publication that the connection's end leaves unsure is
// made again on the next connection (the subscriber may see it twice, with
// the same id); one without a PUBACK within AckTimeout drops the connection
// first. It gives up, counting a publish error, only when ctx ends or after
// maxPublishAttempts failures on live connections.
func (w *worker) publish(ctx context.Context, payload []byte) {
	s := w.s
	for attempt := 1; ; attempt++ {
		c, err := s.liveConn(ctx)
		if err != nil {
			s.pubErrors.Add(1)
			s.log.Warn("stream result not published: stopping", "topic", s.opts.ResultTopic)
			return
		}
		err = s.wait(ctx, c.client.Publish(s.opts.ResultTopic, s.opts.QoS, false, payload), s.opts.AckTimeout, c.lost)
		switch {
		case err == nil:
			s.published.Add(1)
			return
		case ctx.Err() != nil:
			s.pubErrors.Add(1)
			s.log.Warn("stream result not published: stopping", "topic", s.opts.ResultTopic, "err", err)
			return
		case errors.Is(err, mqtt.ErrNotConnected):
			// Nothing was sent: wait for the next connection, no attempt
			// spent.
			attempt--
			select {
			case <-c.lost:
				continue
			case <-ctx.Done():
				s.pubErrors.Add(1)
				return
			}
		case !errors.Is(err, errConnLost):
			// Stuck or refused: drop the connection so a fresh one is made.
			c.client.Disconnect(0)
			c.markLost()
		}
		if attempt >= maxPublishAttempts {
			s.pubErrors.Add(1)
			s.log.Error("stream result not published: giving up", "topic", s.opts.ResultTopic, "attempts", attempt, "err", err)
			return
		}
		s.republished.Add(1)
		s.log.Debug("stream result publication unsure; publishing it again on the next connection", "err", err)
	}
}

// maxPublishAttempts bounds the publications of one result that fail on a
// live connection (a broker that drops the connection on this very
// message would otherwise stop the stream for good).
const maxPublishAttempts = 5
