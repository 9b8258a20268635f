package broker

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
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
//
// A persistent session taken over by a new connection (the controller
// reconnecting after its keepalive ran out) keeps what it holds. mochi
// (v2.7.9, inheritClientSession) copies the old connection's inflight
// messages to the new one, clears the old one's, and only afterwards lists
// the new connection under the client id. A message handed over in that
// window is stored in the old, closed connection's inflight and never sent,
// after its publisher had the PUBACK; and clearing the old inflight, one
// OnQosDropped at a time, wakes the publishers waiting here right into the
// window (measured: about 800 messages lost per takeover with a 4096 bound).
// So from OnSessionEstablish to OnSessionEstablished no publish is admitted
// for that id. A publish admitted earlier and still on its way is a hazard
// too: landing in the old connection after mochi copied its inflight and
// before mochi cleared it, it is dropped with the clearing (seen: a few
// acknowledged messages lost in runs with several takeovers on a loaded
// machine). So OnSessionEstablish, which runs just before the copy, waits
// until those publishes have been handed over: they are in the old inflight
// and copied with it. Whatever still lands in the old connection after the
// copy (a publish that outlasted that wait) moves to the new one in
// OnSessionEstablished (new packet ids, sent at once, before anything
// newer).
type flow struct {
	mochi.HookBase
	srv      *mochi.Server
	limit    int
	maxStall time.Duration
	grace    time.Duration // offlineGrace; shorter in tests
	closed   chan struct{} // closed when the server stops

	mu       sync.Mutex
	reserved map[string]int             // subscriber id -> messages admitted, not yet handed over
	held     map[string][]string        // publisher id -> subscribers it reserved for
	room     chan struct{}              // closed (and replaced) when a subscriber may have room
	waiting  int                        // publishers waiting for room
	joining  map[string]*mochi.Client   // subscriber id -> the connection taking its session over
	sweep    map[string][]*mochi.Client // subscriber id -> earlier connections, leftovers not yet carried
	handed   chan struct{}              // closed (and replaced) when reservations are released
	// order numbers each QoS 1 and 2 message in a session's inflight in
	// the order it was handed over (session id -> packet id -> number), and
	// moving holds a session's messages taken out of a connection being
	// taken over, until its successor sends them in that order.
	order  map[string]map[uint16]uint64
	next   uint64
	moving map[string][]packets.Packet

	stalls      atomic.Uint64 // publishes that had to wait
	disconnects atomic.Uint64 // publishers disconnected after maxStall
	carried     atomic.Uint64 // messages moved from a taken-over connection
}

// offlineGrace is how long after a subscriber disconnected its persistent
// session still holds publishers back.
const offlineGrace = time.Minute

// errStalled is the stop cause of a publisher disconnected after maxStall.
var errStalled = errors.New("broker: a subscriber of this topic is too far behind")

func newFlow(limit int, maxStall time.Duration) *flow {
	return &flow{limit: limit, maxStall: maxStall, grace: offlineGrace, closed: make(chan struct{}),
		reserved: map[string]int{}, held: map[string][]string{}, room: make(chan struct{}),
		joining: map[string]*mochi.Client{}, sweep: map[string][]*mochi.Client{}, handed: make(chan struct{}),
		order: map[string]map[uint16]uint64{}, moving: map[string][]packets.Packet{}}
}

func (*flow) ID() string { return "outpost-flow" }

func (*flow) Provides(b byte) bool {
	switch b {
	case mochi.OnPublish, mochi.OnPublished, mochi.OnQosPublish, mochi.OnQosComplete, mochi.OnQosDropped,
		mochi.OnDisconnect, mochi.OnClientExpired, mochi.OnStopped,
		mochi.OnSessionEstablish, mochi.OnSessionEstablished:
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
		if j, ok := f.joining[id]; ok {
			if !j.Closed() {
				return nil, false // its session is being taken over; see flow
			}
			delete(f.joining, id) // mochi gave up on it before OnSessionEstablished
		}
		sub, ok := f.srv.Clients.Get(id)
		if !ok {
			continue
		}
		if sub.Closed() && sub.StopTime() > 0 && time.Since(time.Unix(sub.StopTime(), 0)) > f.grace {
			continue
		}
		if sub.State.Inflight.Len()+len(f.moving[id])+f.reserved[id] >= f.limit {
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
	if len(f.joining) > 0 {
		close(f.handed)
		f.handed = make(chan struct{})
	}
}

// handOverWait bounds how long a takeover waits for the publishes admitted
// before it to be handed over. They normally are within microseconds; one
// whose publisher stopped between admission and hand-over keeps its
// reservation until that publisher is gone.
const handOverWait = 5 * time.Second

// OnSessionEstablish: cl is connecting and may take a session over; no
// publish is admitted for its id until OnSessionEstablished. Before mochi
// copies the session (right after this hook returns), the publishes
// admitted earlier are handed over: one still on its way could otherwise
// land in the old connection between the copy and mochi clearing it, and
// be dropped with the clearing. The connection listed under the id joins
// those whose leftovers the next established takeover carries over (a
// takeover can itself be taken over, or fail, before it is established).
// See flow.
func (f *flow) OnSessionEstablish(cl *mochi.Client, _ packets.Packet) {
	if cl.Net.Inline {
		return
	}
	old, _ := f.srv.Clients.Get(cl.ID)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.joining[cl.ID] = cl
	// As mochi decides whether the session is inherited.
	inherits := old != nil && !cl.Properties.Clean && !(old.Properties.Clean && old.Properties.ProtocolVersion < 5)
	if !inherits {
		return
	}
	if !slices.Contains(f.sweep[cl.ID], old) {
		f.sweep[cl.ID] = append(f.sweep[cl.ID], old)
	}
	f.awaitHandOver(cl.ID)
	// mochi would copy the inflight and resend it sorted by the low 16 bits
	// of each message's creation time in seconds (v2.7.9, Inflight.GetAll),
	// which within a second is no order at all: a message could reach the
	// subscriber after newer ones. Take the messages out instead; the
	// successor sends them in order in OnSessionEstablished.
	f.moving[cl.ID] = append(f.moving[cl.ID], takeInflight(old)...)
}

// takeInflight removes old's QoS 1 and 2 publishes from its inflight and
// returns them.
func takeInflight(old *mochi.Client) []packets.Packet {
	var out []packets.Packet
	for _, pk := range old.State.Inflight.GetAll(false) {
		if pk.FixedHeader.Type == packets.Publish && old.State.Inflight.Delete(pk.PacketID) {
			out = append(out, pk)
		}
	}
	return out
}

// awaitHandOver waits, f.mu held (and released while waiting), until the
// publishes admitted for subscriber id have been handed over to mochi, at
// most handOverWait.
func (f *flow) awaitHandOver(id string) {
	deadline := time.Now().Add(handOverWait)
	for f.reserved[id] > 0 && time.Now().Before(deadline) && !isClosed(f.closed) {
		handed := f.handed
		f.mu.Unlock()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-handed:
		case <-t.C:
		case <-f.closed:
		}
		t.Stop()
		f.mu.Lock()
	}
}

// OnSessionEstablished: cl is listed under its id with the session's
// messages. What publishes admitted before the takeover left in the earlier
// connections (normally nothing since OnSessionEstablish waits for them;
// one that outlasted that wait) moves to cl; then publishes for cl may go
// on.
func (f *flow) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	f.mu.Lock()
	if f.joining[cl.ID] != cl {
		f.mu.Unlock() // taken over in turn, or closed: the next one carries
		return
	}
	f.awaitHandOver(cl.ID)
	olds := f.sweep[cl.ID]
	delete(f.sweep, cl.ID)
	pks := f.moving[cl.ID]
	delete(f.moving, cl.ID)
	f.mu.Unlock()
	for _, old := range olds {
		if old != cl {
			pks = append(pks, takeInflight(old)...)
		}
	}
	f.resend(cl, pks)
	f.mu.Lock()
	if f.joining[cl.ID] == cl {
		delete(f.joining, cl.ID)
	}
	f.mu.Unlock()
	f.wake()
}

// resend gives pks, messages taken from the connections cl took over, to
// cl in the order they were first handed over, under new packet ids, and
// sends them, before anything newer can be admitted for cl.
func (f *flow) resend(cl *mochi.Client, pks []packets.Packet) {
	if len(pks) == 0 {
		return
	}
	type ranked struct {
		pk   packets.Packet
		rank uint64
	}
	rs := make([]ranked, len(pks))
	f.mu.Lock()
	seen := f.order[cl.ID]
	for i, pk := range pks {
		n, ok := seen[pk.PacketID]
		if !ok {
			n = ^uint64(0) // unknown: after the known ones, in the order given
		}
		rs[i] = ranked{pk, n}
	}
	delete(f.order, cl.ID) // the session's inflight is empty: numbered anew below
	f.mu.Unlock()
	slices.SortStableFunc(rs, func(a, b ranked) int { return cmp.Compare(a.rank, b.rank) })
	var failed error
	for _, r := range rs {
		pk := r.pk
		id, err := cl.NextPacketID()
		if err != nil {
			continue // mochi counts this as dropped too
		}
		pk.PacketID = uint16(id)
		pk.FixedHeader.Dup = true
		cl.State.Inflight.Set(pk)
		f.number(cl.ID, pk.PacketID)
		f.carried.Add(1)
		if failed == nil {
			failed = cl.WritePacket(pk)
		}
	}
	if failed != nil {
		// A write that failed (its deadline passed while the subscriber
		// was slow) must not be overtaken by newer messages on this
		// connection, which a later write could send once mochi refreshes
		// the deadline: close it, and the next takeover sends everything
		// from the first unsent message on, in order.
		cl.Stop(fmt.Errorf("broker: resending to a taken-over session: %w", failed))
	}
}

// number records that the message with packet id is the session's newest.
func (f *flow) number(session string, id uint16) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.order[session]
	if m == nil {
		m = map[uint16]uint64{}
		f.order[session] = m
	}
	f.next++
	m[id] = f.next
}

// forget drops the number of a message that left the session's inflight.
func (f *flow) forget(session string, id uint16) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m := f.order[session]; m != nil {
		delete(m, id)
		if len(m) == 0 {
			delete(f.order, session)
		}
	}
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

// OnQosPublish numbers a message handed to a subscriber's inflight (a
// resend by mochi keeps its number).
func (f *flow) OnQosPublish(cl *mochi.Client, pk packets.Packet, _ int64, resends int) {
	if pk.FixedHeader.Type != packets.Publish || cl.Net.Inline || resends > 0 || pk.FixedHeader.Dup {
		return
	}
	f.number(cl.ID, pk.PacketID)
}

// OnQosComplete wakes the waiting publishers once a client's outstanding
// messages fall an eighth below the bound, rather than at every PUBACK: the
// waiters then find room for a batch of publishes at once.
func (f *flow) OnQosComplete(cl *mochi.Client, pk packets.Packet) {
	f.forget(cl.ID, pk.PacketID)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.waiting > 0 && cl.State.Inflight.Len()+f.reserved[cl.ID] <= f.limit-f.limit/8 {
		close(f.room)
		f.room = make(chan struct{})
	}
}

func (f *flow) OnQosDropped(cl *mochi.Client, pk packets.Packet) {
	f.forget(cl.ID, pk.PacketID)
	f.wake()
}

func (f *flow) OnDisconnect(cl *mochi.Client, _ error, _ bool) {
	f.mu.Lock()
	if f.joining[cl.ID] == cl {
		delete(f.joining, cl.ID)
	}
	f.mu.Unlock()
	f.release(cl.ID)
	f.wake()
}

func (f *flow) OnClientExpired(cl *mochi.Client) {
	f.mu.Lock()
	delete(f.sweep, cl.ID)
	delete(f.moving, cl.ID)
	delete(f.order, cl.ID)
	f.mu.Unlock()
	f.wake()
}

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
