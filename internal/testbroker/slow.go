package testbroker

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// SlowOptions shape a slow-subscriber run; zero fields take the defaults.
type SlowOptions struct {
	// Publishers clients publish Messages QoS 1 messages each, of Size
	// bytes, as fast as the broker takes them. Defaults 4, 5000, 200.
	Publishers, Messages, Size int
	// Held reports, given how many publishes the broker has acknowledged,
	// that the broker is holding the backlog (publishers stalled, or every
	// publish acknowledged). The subscriber reads nothing until then.
	Held func(acked int) bool
	// Timeout is how long a phase may go without progress (no publish
	// acknowledged, no marker arrived) before the run fails. Default 60 s.
	// A slow machine only makes a run longer; a run whole is capped at
	// ten times Timeout.
	Timeout time.Duration
	// KeepAlive is the subscriber's MQTT keepalive, and its ping timeout
	// (at most 10 s); publishers keep 60 s. Default 60 s. A held phase
	// longer than it drops the subscriber (its blocked handler leaves pings
	// unanswered), as a loaded machine does with the default.
	KeepAlive time.Duration
	// Drop keeps the subscriber from reading, after Held, until its
	// connection dropped: its handler blocks paho's incoming loop, so a ping
	// goes unanswered once KeepAlive passes. Reading again, it reconnects
	// and takes its session over while publishers wait for room; what the
	// broker held for it must survive that.
	Drop bool
}

// SlowResult are the figures of a slow-subscriber run.
type SlowResult struct {
	Sent, Acked int // messages published, and acknowledged by the broker
	Retried     int // publishes that failed and were made again
	Received    int // distinct messages the subscriber got
	Duplicates  int
	// OutOfOrder counts messages that arrived, for the first time, after a
	// later message of the same publisher: a broker that keeps a session's
	// order (resends first, in order) has none.
	OutOfOrder int
	Held       time.Duration // from the first publish until Held was true
	Reconnects int           // subscriber connections after the first
	Elapsed    time.Duration // from the first publish until the end marker arrived
	// Missing lists up to 20 messages that never arrived, as publisher<<32
	// | index, the first 8 bytes of their payload.
	Missing []uint64
}

// Lost is how many acknowledged messages never reached the subscriber.
func (r SlowResult) Lost() int { return r.Acked - r.Received }

// SlowSubscriber runs, on the broker at url, a subscriber with a persistent
// session (as the fleet controller has) that stops reading while publishers
// send it a backlog, then reads again; it returns what arrived. It ends with
// an end marker each publisher sends after all its acknowledged messages:
// the broker delivers one subscriber's messages from one publisher in order,
// so once a marker has arrived everything that ever will has. It fails t
// only on a phase that made no progress for Timeout.
func SlowSubscriber(t testing.TB, url string, o SlowOptions) SlowResult {
	t.Helper()
	if o.Publishers <= 0 {
		o.Publishers = 4
	}
	if o.Messages <= 0 {
		o.Messages = 5000
	}
	if o.Size < 8 {
		o.Size = 200
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = 60 * time.Second
	}
	pingTimeout := min(o.KeepAlive, 10*time.Second)
	id := fmt.Sprintf("%d", time.Now().UnixNano())
	topic := func(p int) string { return fmt.Sprintf("slow-%s/pub-%d/events", id, p) }
	const marker = ^uint64(0)

	var (
		mu       sync.Mutex
		seen     = make([]bool, o.Publishers*o.Messages)
		received int
		dups     int
		newest   = make([]int, o.Publishers) // per publisher: highest index seen + 1
		reorders int
		markers  = map[int]bool{}
	)
	gate := make(chan struct{})
	handle := func(_ mqtt.Client, m mqtt.Message) {
		<-gate
		p := m.Payload()
		if len(p) < 8 {
			return
		}
		n := binary.BigEndian.Uint64(p)
		mu.Lock()
		defer mu.Unlock()
		if n>>32 == marker>>32 {
			markers[int(n&0xffffffff)] = true
			return
		}
		i := int(n>>32)*o.Messages + int(n&0xffffffff)
		if i >= len(seen) {
			return
		}
		if seen[i] {
			dups++
			return
		}
		seen[i] = true
		received++
		if k := int(n & 0xffffffff); k < newest[n>>32] {
			reorders++
		} else {
			newest[n>>32] = k + 1
		}
	}
	subscribed := make(chan struct{})
	var once sync.Once
	var connects atomic.Int64
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("slow-sub-" + id).
		SetCleanSession(false).SetOrderMatters(true).SetKeepAlive(o.KeepAlive).SetPingTimeout(pingTimeout).
		SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetOnConnectHandler(func(cl mqtt.Client) {
			connects.Add(1)
			tok := cl.Subscribe(fmt.Sprintf("slow-%s/+/events", id), 1, handle)
			if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
				once.Do(func() { close(subscribed) })
			}
		}))
	if tok := sub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("testbroker: subscriber connect: %v", tok.Error())
	}
	opened := false
	open := func() {
		if !opened {
			opened = true
			close(gate)
		}
	}
	defer func() { open(); sub.Disconnect(100) }()
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("testbroker: subscriber did not subscribe")
	}

	// Publishers behave as the agent's fleet link does: a fresh client per
	// connection and no automatic reconnect, so a publish whose connection
	// closed under it fails and is made again. (paho's own reconnect
	// resends a pending publish itself and can complete its token without
	// the broker's PUBACK: a publisher counting on that would count
	// messages the broker never took.)
	dialPub := func(p int) (mqtt.Client, error) {
		c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("slow-pub-%s-%d", id, p)).
			SetCleanSession(true).SetKeepAlive(60 * time.Second).SetAutoReconnect(false))
		tok := c.Connect()
		if !tok.WaitTimeout(10 * time.Second) {
			return nil, fmt.Errorf("connect timed out")
		}
		return c, tok.Error()
	}
	pubs := make([]mqtt.Client, o.Publishers)
	for p := range pubs {
		c, err := dialPub(p)
		if err != nil {
			t.Fatalf("testbroker: publisher connect: %v", err)
		}
		pubs[p] = c
	}
	defer func() {
		for _, c := range pubs {
			c.Disconnect(100)
		}
	}()

	start := time.Now()
	capAt := start.Add(10 * o.Timeout)
	var acked, failed, retried atomic.Int64
	// lastProgress is when a publish was last acknowledged (or the
	// subscriber started reading): a phase fails only when nothing moved
	// for Timeout, so a machine in a slow spell does not fail the run.
	var lastProgress atomic.Int64
	progress := func() { lastProgress.Store(time.Now().UnixNano()) }
	stalled := func() bool {
		now := time.Now()
		return now.After(capAt) || now.Sub(time.Unix(0, lastProgress.Load())) > o.Timeout
	}
	progress()
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := pubs[p]
			defer func() { pubs[p] = c }() // read after wg.Wait
			msg := func(i int) []byte {
				b := make([]byte, o.Size)
				binary.BigEndian.PutUint64(b, uint64(p)<<32|uint64(i))
				return b
			}
			toks := make([]mqtt.Token, o.Messages)
			for i := range toks {
				toks[i] = c.Publish(topic(p), 1, false, msg(i))
			}
			// A publish that fails (its connection closed under it) is
			// made again, as the agent's uplink does: what counts is the
			// broker's acknowledgement.
			for i := 0; i < len(toks); {
				tok := toks[i]
				if !tok.WaitTimeout(100 * time.Millisecond) {
					if stalled() {
						failed.Add(int64(len(toks) - i))
						return
					}
					continue
				}
				if err := tok.Error(); err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					if !c.IsConnectionOpen() {
						// Every pending publish died with the connection:
						// connect anew and make them all again, in order.
						for !stalled() {
							nc, err := dialPub(p)
							if err == nil {
								c = nc
								break
							}
							time.Sleep(50 * time.Millisecond)
						}
						for j := i; j < len(toks); j++ {
							retried.Add(1)
							toks[j] = c.Publish(topic(p), 1, false, msg(j))
						}
						continue
					}
					retried.Add(1)
					toks[i] = c.Publish(topic(p), 1, false, msg(i))
					continue
				}
				acked.Add(1)
				progress()
				i++
			}
		}()
	}
	res := SlowResult{Sent: o.Publishers * o.Messages}
	for o.Held != nil && !o.Held(int(acked.Load())) {
		if stalled() {
			t.Fatalf("testbroker: the broker did not hold the backlog: no progress for %v (%d of %d acknowledged after %v)", o.Timeout, acked.Load(), res.Sent, time.Since(start).Round(time.Second))
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.Held = time.Since(start)
	for o.Drop && sub.IsConnectionOpen() {
		if stalled() {
			t.Fatalf("testbroker: the subscriber's connection did not drop: no progress for %v", o.Timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	progress()
	open()
	wg.Wait() // bounded: publishers give up when stalled
	res.Acked, res.Retried = int(acked.Load()), int(retried.Load())
	if failed.Load() > 0 {
		t.Fatalf("testbroker: %d of %d publishes not acknowledged: no progress for %v (%d retried; first error: %v)", failed.Load(), res.Sent, o.Timeout, retried.Load(), firstErr.Load())
	}

	// End markers, again until one from every publisher arrived. The
	// subscriber draining its backlog counts as progress.
	deadline, lastReceived := time.Now().Add(o.Timeout), -1
	for {
		mu.Lock()
		all, got := len(markers) == o.Publishers, received
		mu.Unlock()
		if all {
			break
		}
		if got != lastReceived {
			deadline, lastReceived = time.Now().Add(o.Timeout), got
		}
		if time.Now().After(deadline) || time.Now().After(capAt) {
			t.Fatalf("testbroker: end markers did not arrive: no message for %v (%d received)", o.Timeout, got)
		}
		for p, c := range pubs {
			b := make([]byte, 8)
			binary.BigEndian.PutUint64(b, marker&^0xffffffff|uint64(p))
			c.Publish(topic(p), 1, false, b).WaitTimeout(time.Second)
		}
		wait := time.Now().Add(time.Second)
		for time.Now().Before(wait) {
			mu.Lock()
			all = len(markers) == o.Publishers
			mu.Unlock()
			if all {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	res.Elapsed = time.Since(start)
	mu.Lock()
	res.Received, res.Duplicates, res.OutOfOrder = received, dups, reorders
	for i, ok := range seen {
		if !ok && len(res.Missing) < 20 {
			res.Missing = append(res.Missing, uint64(i/o.Messages)<<32|uint64(i%o.Messages))
		}
	}
	mu.Unlock()
	res.Reconnects = int(connects.Load()) - 1
	return res
}
