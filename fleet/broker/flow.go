package broker

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Why flow control: mochi acknowledges a QoS 1 publish (PUBACK) before it
// hands the message to the subscribers, and it drops, for good, a message
// for a subscriber that already has MaximumInflight messages unacknowledged
// or MaximumClientWritesPending messages waiting to be written. A device
// deletes telemetry once it has the PUBACK, so a controller that falls
// behind (its handlers hold its MQTT client back while the registry writes)
// would lose telemetry, acks and status between broker and controller.
//
// flow holds the PUBACK instead: a QoS 1 publish from a network client waits
// in OnPublish, before mochi acknowledges it, until every client subscribed
// to its topic has fewer than limit messages outstanding (unacknowledged,
// plus those admitted and not yet handed over). The publisher's TCP
// connection stops being read meanwhile, so the backlog stays on the
// devices' disks, where the queue is bounded and durable, rather than in the
// broker's memory. A publisher that has waited maxStall is disconnected
// without a PUBACK; it reconnects and publishes again, so nothing is lost
// even when a subscriber is stuck. A persistent session that went offline
// counts for offlineGrace (the controller reconnecting); after that it no
// longer holds publishers back, and mochi drops what exceeds its bounds, so
// an abandoned session cannot stop a fleet's traffic for good.
type flow struct {
	mochi.HookBase
	srv      *mochi.Server
	limit    int
	maxStall time.Duration
	grace    time.Duration // offlineGrace; shorter in tests
	closed   chan struct{} // closed when the server stops

	mu       sync.Mutex
	reserved map[string]int      // subscriber id -> messages admitted, not yet handed over
	held     map[string][]string // publisher id -> subscribers it reserved for
	room     chan struct{}       // closed (and replaced) when a subscriber may have room
	waiting  int                 // publishers waiting for room

	stalls      atomic.Uint64 // publishes that had to wait
	disconnects atomic.Uint64 // publishers disconnected after maxStall
}

// offlineGrace is how long after a subscriber disconnected its persistent
// session still holds publishers back.
const offlineGrace = time.Minute

// errStalled is the stop cause of a publisher disconnected after maxStall.
var errStalled = errors.New("broker: a subscriber of this topic is too far behind")

func newFlow(limit int, maxStall time.Duration) *flow {
	return &flow{limit: limit, maxStall: maxStall, grace: offlineGrace, closed: make(chan struct{}),
		reserved: map[string]int{}, held: map[string][]string{}, room: make(chan struct{})}
}

func (*flow) ID() string { return "outpost-flow" }

func (*flow) Provides(b byte) bool {
	switch b {
	case mochi.OnPublish, mochi.OnPublished, mochi.OnQosComplete, mochi.OnQosDropped,
		mochi.OnDisconnect, mochi.OnClientExpired, mochi.OnStopped:
		return true
	}
	return false
}

// OnPublish admits a QoS 1 or 2 publish once its subscribers have room; see
// flow.
func (f *flow) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	if pk.FixedHeader.Qos == 0 || cl.Net.Inline {
		return pk, nil
	}
	f.release(cl.ID) // a reservation left by a publish mochi did not complete
	deadline := time.Now().Add(f.maxStall)
	stalled := false
	for {
		f.mu.Lock()
		subs, ok := f.admit(cl.ID, pk.TopicName)
		if ok {
			if len(subs) > 0 {
				f.held[cl.ID] = subs
			}
			if stalled {
				f.waiting--
			}
			f.mu.Unlock()
			return pk, nil
		}
		if !stalled {
			stalled = true
			f.waiting++
			f.stalls.Add(1)
		}
		room := f.room
		f.mu.Unlock()

		wait := time.Until(deadline)
		if wait > 100*time.Millisecond {
			wait = 100 * time.Millisecond // to notice a publisher that went away
		}
		t := time.NewTimer(wait)
		select {
		case <-room:
		case <-t.C:
		case <-f.closed:
		}
		t.Stop()
		if cl.Closed() || time.Now().After(deadline) || isClosed(f.closed) {
			f.mu.Lock()
			f.waiting--
			f.mu.Unlock()
			if !cl.Closed() && !isClosed(f.closed) {
				f.disconnects.Add(1)
				cl.Stop(errStalled)
			}
			return pk, packets.ErrRejectPacket
		}
	}
}

// admit reserves room for one message on every subscriber of topic but the
// publisher itself, or reserves nothing and reports false when one of them
// is full. f.mu is held.
func (f *flow) admit(publisher, topic string) ([]string, bool) {
	s := f.srv.Topics.Subscribers(topic)
	ids := make([]string, 0, len(s.Subscriptions)+len(s.Shared))
	for id := range s.Subscriptions {
		ids = append(ids, id)
	}
	// A shared group gets one copy, but mochi picks the member at random:
	// every member must have room.
	for _, group := range s.Shared {
		for id := range group {
			ids = append(ids, id)
		}
	}
	var subs []string
	for _, id := range ids {
		if id == publisher {
			continue // its PUBACKs are read by the goroutine that waits here
		}
		sub, ok := f.srv.Clients.Get(id)
		if !ok {
			continue
		}
		if sub.Closed() && sub.StopTime() > 0 && time.Since(time.Unix(sub.StopTime(), 0)) > f.grace {
			continue
		}
		if sub.State.Inflight.Len()+f.reserved[id] >= f.limit {
			return nil, false
		}
		subs = append(subs, id)
	}
	for _, id := range subs {
		f.reserved[id]++
	}
	return subs, true
}

// release drops the reservations of publisher's last admitted publish.
func (f *flow) release(publisher string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, id := range f.held[publisher] {
		if f.reserved[id]--; f.reserved[id] <= 0 {
			delete(f.reserved, id)
		}
	}
	delete(f.held, publisher)
}

// wake tells waiting publishers that a subscriber may have room.
func (f *flow) wake() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.waiting > 0 {
		close(f.room)
		f.room = make(chan struct{})
	}
}

// OnPublished: the message is in its subscribers' inflight now.
func (f *flow) OnPublished(cl *mochi.Client, pk packets.Packet) {
	if pk.FixedHeader.Qos > 0 && !cl.Net.Inline {
		f.release(cl.ID)
	}
}

// OnQosComplete wakes the waiting publishers once a client's outstanding
// messages fall an eighth below the bound, rather than at every PUBACK: the
// waiters then find room for a batch of publishes at once.
func (f *flow) OnQosComplete(cl *mochi.Client, _ packets.Packet) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.waiting > 0 && cl.State.Inflight.Len()+f.reserved[cl.ID] <= f.limit-f.limit/8 {
		close(f.room)
		f.room = make(chan struct{})
	}
}

func (f *flow) OnQosDropped(*mochi.Client, packets.Packet) { f.wake() }

func (f *flow) OnDisconnect(cl *mochi.Client, _ error, _ bool) {
	f.release(cl.ID)
	f.wake()
}

func (f *flow) OnClientExpired(*mochi.Client) { f.wake() }

func (f *flow) OnStopped() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !isClosed(f.closed) {
		close(f.closed)
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
