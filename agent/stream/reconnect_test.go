//go:build cgo

package stream

import (
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// proxy is a loopback TCP relay between a stream and a real broker that can
// swallow what its current connections send upstream (the broker never sees
// a publication nor its acknowledgements, as on a link that died without a
// word) and cut them.
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex // guards conns
	conns map[*relay]struct{}
	wg    sync.WaitGroup // the accept loop and every relay goroutine
}

type relay struct {
	client, server net.Conn
	mu             sync.Mutex // guards hole
	hole           bool
}

func (r *relay) holed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hole
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target, conns: map[*relay]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) URL() string { return "tcp://" + p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		r := &relay{client: c, server: s}
		p.mu.Lock()
		p.conns[r] = struct{}{}
		p.mu.Unlock()
		closeBoth := func() {
			c.Close()
			s.Close()
			p.mu.Lock()
			delete(p.conns, r)
			p.mu.Unlock()
		}
		p.wg.Go(func() {
			defer closeBoth()
			_, _ = io.Copy(c, s)
		})
		p.wg.Go(func() {
			defer closeBoth()
			buf := make([]byte, 32<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 && !r.holed() {
					if _, werr := s.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		})
	}
}

// blackhole swallows from now on what the current connections send to the
// broker; new connections are relayed normally.
func (p *proxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for r := range p.conns {
		r.mu.Lock()
		r.hole = true
		r.mu.Unlock()
	}
}

// cut closes the current connections.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for r := range p.conns {
		r.client.Close()
		r.server.Close()
	}
}

// TestStreamRepublish: a result whose publication the broker never
// acknowledged is published again on the next connection, on a fresh
// client, whether the connection drops under it or the stream drops it for
// want of a PUBACK; it reaches a subscriber with its id, and the persistent
// session redelivers the message whose acknowledgement was lost too.
func TestStreamRepublish(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	px := startProxy(t, strings.TrimPrefix(mq.URL(), "tcp://"))
	reg, _ := registry(t, hand)
	s, err := New(Options{Name: "cam", Broker: px.URL(), Topic: "cam/frames", Decoder: "image",
		Model: "m", ResultTopic: "cam/results", Backend: reg, QoS: 1, Queue: 16,
		ConnectRetry: 200 * time.Millisecond, AckTimeout: 2 * time.Second})
	require.NoError(t, err)
	res := collect(t, mq.URL(), "cam/results")
	run(t, s)
	waitConnected(t, s)
	pub := client(t, mq.URL(), "camera")
	ids := func(rs []result) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	has := func(id string) func([]result) bool {
		return func(rs []result) bool { return slices.Contains(ids(rs), id) }
	}
	publish(t, pub, "cam/frames", 1, frame(t, 0))
	res.waitFor(t, 30*time.Second, "result 1", has("1"))

	// The connection drops while result 2 waits for its PUBACK.
	px.blackhole()
	publish(t, pub, "cam/frames", 1, frame(t, 1))
	waitStats(t, s, "result 2 computed", func(st Stats) bool { return st.Results == 2 })
	assert.False(t, has("2")(res.results()), "the broker cannot have result 2 yet")
	px.cut()
	res.waitFor(t, 30*time.Second, "result 2, published again", has("2"))
	// The broker never got the stream's PUBACK for frame 2 either, so its
	// session delivers it again: the same frame answered as message 3.
	rs := res.waitFor(t, 30*time.Second, "frame 2 delivered again as 3", has("3"))
	for _, r := range rs {
		assert.Empty(t, r.Error)
	}
	st := waitStats(t, s, "results published", func(st Stats) bool { return st.Published == st.Results })
	assert.Positive(t, st.Republished, "counted as published again")
	assert.Zero(t, st.PublishErrors)

	// No PUBACK, and the connection stays up: after AckTimeout the stream
	// drops it itself and publishes again on a new one.
	rep := st.Republished
	px.blackhole()
	publish(t, pub, "cam/frames", 1, frame(t, 2))
	res.waitFor(t, 30*time.Second, "result 4 after the ack timeout", has("4"))
	st = waitStats(t, s, "results published", func(st Stats) bool { return st.Published == st.Results && st.Republished > rep })
	assert.Zero(t, st.PublishErrors)
	t.Logf("ids seen by the subscriber: %v; stats %+v", ids(res.results()), st)
}

// waitStats waits until cond holds on the stream's stats, or fails after
// 30 s.
func waitStats(t *testing.T, s *Stream, what string, cond func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := s.Stats()
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %+v", what, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// manualClock is a backoff.Clock that moves only when the test says.
type manualClock struct {
	mu     sync.Mutex // guards the fields below
	now    time.Time
	timers []*manualTimer
	added  chan struct{} // gets a token when a timer is added
}

type manualTimer struct {
	at    time.Time
	d     time.Duration
	ch    chan time.Time
	fired bool
}

func newManualClock() *manualClock {
	return &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), added: make(chan struct{}, 1)}
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	tm := &manualTimer{at: c.now.Add(d), d: d, ch: make(chan time.Time, 1)}
	c.timers = append(c.timers, tm)
	select {
	case c.added <- struct{}{}:
	default:
	}
	return tm.ch
}

// pending waits for a timer of at most limit that has not fired, and
// returns its duration.
func (c *manualClock) pending(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		c.mu.Lock()
		for _, tm := range c.timers {
			if !tm.fired && tm.d <= limit {
				c.mu.Unlock()
				return tm.d
			}
		}
		c.mu.Unlock()
		select {
		case <-c.added:
		case <-deadline:
			t.Fatalf("no timer of at most %v within 30 s", limit)
		}
	}
}

// advance moves the clock by d and fires the timers due.
func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, tm := range c.timers {
		if !tm.fired && !tm.at.After(c.now) {
			tm.fired = true
			tm.ch <- c.now
		}
	}
}

// TestStreamReconnectBackoff: while the broker is down the stream tries
// again after jittered, growing delays on its clock (here one the test
// moves), bounded by ConnectRetry; it connects only when its clock lets it
// try again.
func TestStreamReconnectBackoff(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	mq.Stop()
	reg, _ := registry(t, hand)
	clk := newManualClock()
	const retry = 4 * time.Second
	s, err := New(Options{Name: "cam", Broker: mq.URL(), Topic: "cam/frames", Decoder: "image",
		Model: "m", ResultTopic: "cam/results", Backend: reg, QoS: 1,
		ConnectRetry: retry, ConnectTimeout: time.Minute, Clock: clk})
	require.NoError(t, err)
	run(t, s)
	var delays []time.Duration
	for i := range 6 {
		d := clk.pending(t, retry) // the connect and subscribe timeouts are a minute
		delays = append(delays, d)
		assert.GreaterOrEqual(t, d, 250*time.Millisecond, "delay %d", i)
		assert.LessOrEqual(t, d, min(500*time.Millisecond<<i, retry), "delay %d", i)
		clk.advance(d)
	}
	t.Logf("delays while the broker was down: %v", delays)
	mq.Start()
	d := clk.pending(t, retry)
	assert.False(t, s.Stats().Connected, "no attempt before the clock says so")
	clk.advance(d)
	waitConnected(t, s)
}

// dropResults is a hook of the embedded broker that drops a client's
// connection whenever it publishes on topic, until let is set: the
// publication never gets a PUBACK, as from a broker that fails on it.
type dropResults struct {
	mochi.HookBase
	topic string
	mu    sync.Mutex // guards let and drops
	let   bool
	drops int
}

func (*dropResults) ID() string { return "drop-results" }

func (*dropResults) Provides(b byte) bool { return b == mochi.OnPublish }

func (h *dropResults) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if pk.TopicName == h.topic && !h.let {
		h.drops++
		cl.Stop(errors.New("refused"))
		return pk, packets.ErrRejectPacket
	}
	return pk, nil
}

// TestStreamGivesUpAResult: a result the broker fails on every time is
// published on 5 connections, then given up and counted as a publish error,
// never silently; the stream goes on with the next message.
func TestStreamGivesUpAResult(t *testing.T) {
	addr := testbroker.FreeAddr(t)
	srv, _ := testbroker.Start(t, addr)
	hook := &dropResults{topic: "cam/results"}
	require.NoError(t, srv.AddHook(hook, nil))
	url := "tcp://" + addr
	reg, _ := registry(t, hand)
	s, err := New(Options{Name: "cam", Broker: url, Topic: "cam/frames", Decoder: "image",
		Model: "m", ResultTopic: "cam/results", Backend: reg, QoS: 1, Queue: 16,
		ConnectRetry: 100 * time.Millisecond, AckTimeout: 2 * time.Second})
	require.NoError(t, err)
	res := collect(t, url, "cam/results")
	run(t, s)
	waitConnected(t, s)
	pub := client(t, url, "camera")
	publish(t, pub, "cam/frames", 1, frame(t, 0))
	st := waitStats(t, s, "the result given up", func(st Stats) bool { return st.PublishErrors == 1 })
	hook.mu.Lock()
	drops := hook.drops
	hook.let = true
	hook.mu.Unlock()
	assert.Equal(t, 5, drops, "publications of the result")
	assert.Equal(t, uint64(4), st.Republished)
	assert.Zero(t, st.Published)
	// The stream goes on: the next message's result arrives.
	publish(t, pub, "cam/frames", 1, frame(t, 1))
	rs := res.waitFor(t, 30*time.Second, "the next result", func(rs []result) bool { return len(rs) >= 1 })
	assert.Empty(t, rs[len(rs)-1].Error)
	waitStats(t, s, "the next result published", func(st Stats) bool { return st.Published >= 1 })
}
