package rollout

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
)

func (r *recorder) count(kind protocol.CommandKind) int { return r.countFor("", kind) }

// countFor counts the commands of kind sent to device ("": to any).
func (r *recorder) countFor(device string, kind protocol.CommandKind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.sent {
		if c.Kind == kind && (device == "" || c.Device == device) {
			n++
		}
	}
	return n
}

// incr runs one pass the way Run does between reconciliations.
func (f *gateFixture) incr() {
	f.t.Helper()
	if err := f.eng.pass(context.Background(), false); err != nil {
		f.t.Fatal(err)
	}
}

// comesOnline records device's "online" a second from now and announces
// it, as the controller does when the device reconnects.
func (f *gateFixture) comesOnline(device string) {
	f.t.Helper()
	if _, err := f.reg.UpdateDevice(device, func(d *registry.Device) { d.Online, d.OnlineSince = true, f.clock().Add(time.Second) }); err != nil {
		f.t.Fatal(err)
	}
	f.eng.DeviceChanged(device)
}

func TestRateAt(t *testing.T) {
	for _, c := range []struct {
		r         registry.Rate
		successes int
		want      int
	}{
		{registry.Rate{}, 100, 0},
		{registry.Rate{PerMinute: 60}, 1000, 60},
		{registry.Rate{PerMinute: 10, Factor: 2, Every: 5}, 4, 10},
		{registry.Rate{PerMinute: 10, Factor: 2, Every: 5}, 5, 20},
		{registry.Rate{PerMinute: 10, Factor: 2, Every: 5}, 17, 80},
		{registry.Rate{PerMinute: 10, Factor: 2, Every: 5, Max: 50}, 17, 50},
		{registry.Rate{PerMinute: 10, Factor: 10, Every: 1}, 1000, 1e9},
	} {
		if got := RateAt(c.r, c.successes); got != c.want {
			t.Errorf("RateAt(%+v, %d) = %d, want %d", c.r, c.successes, got, c.want)
		}
	}
}

func TestCreateRejectsBadRates(t *testing.T) {
	f := newGateFixture(t, 1)
	for _, r := range []registry.Rate{
		{PerMinute: -1},
		{Factor: 2, Every: 10},
		{PerMinute: 10, Factor: 1, Every: 10},
		{PerMinute: 10, Factor: 11, Every: 10},
		{PerMinute: 10, Factor: 2},
		{PerMinute: 10, Every: 5},
		{PerMinute: 10, Max: 100},
		{PerMinute: 100, Factor: 2, Every: 1, Max: 50},
	} {
		if _, err := f.eng.Create(Spec{Model: "face", Version: 2, Rate: r}); !errors.Is(err, ErrInvalid) {
			t.Errorf("rate %+v: got %v, want ErrInvalid", r, err)
		}
	}
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Rate: registry.Rate{PerMinute: 10, Factor: 2, Every: 5, Max: 40}})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.rollout(ro.ID).Rate; got != (registry.Rate{PerMinute: 10, Factor: 2, Every: 5, Max: 40}) {
		t.Errorf("stored rate %+v", got)
	}
}

// The rate spreads installs over time and ramps up with successes; the
// reconciliation (Step) keeps the budget.
func TestRateLimitsInstalls(t *testing.T) {
	f := newGateFixture(t, 20)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100},
		Rate: registry.Rate{PerMinute: 120, Factor: 2, Every: 2, Max: 240}})
	if err != nil {
		t.Fatal(err)
	}
	f.step() // a second's worth of 120/min: 2
	if got := f.rec.count(protocol.CommandInstall); got != 2 {
		t.Fatalf("first pass sent %d installs, want 2", got)
	}
	f.incr()
	f.step()
	if got := f.rec.count(protocol.CommandInstall); got != 2 {
		t.Fatalf("without time passing: %d installs, want 2", got)
	}
	f.advance(500 * time.Millisecond)
	f.incr()
	if got := f.rec.count(protocol.CommandInstall); got != 3 {
		t.Fatalf("after half a second: %d installs, want 3", got)
	}
	f.advance(time.Hour) // the budget holds a second's worth, no more
	f.incr()
	if got := f.rec.count(protocol.CommandInstall); got != 5 {
		t.Fatalf("after an hour: %d installs, want 5", got)
	}
	// Two successes double the rate to 240/min: 4 a second.
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateCommitted })
	f.advance(time.Second)
	f.incr()
	if got := f.rec.count(protocol.CommandInstall); got != 9 {
		t.Fatalf("after the ramp: %d installs, want 9", got)
	}
	rep, err := f.eng.Status(ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rep.RateNow != 240 {
		t.Errorf("status rate %d, want 240 (capped)", rep.RateNow)
	}
}

// An "online" after the device answered its install sends nothing: the
// device holds the command. Every replica records every "online", a standby
// possibly after the leader sent; as leader it must not take that late write
// for a reconnection (make scale on NATS gave a device that never left two
// command ids). A device that has not answered is sent again on "online"
// (TestIncrementalPasses).
func TestOnlineAfterAnAnswerSendsNothing(t *testing.T) {
	f := newGateFixture(t, 4)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MinSuccesses: 4})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	if got := f.rec.count(protocol.CommandInstall); got != 4 {
		t.Fatalf("%d installs, want 4", got)
	}
	f.advance(time.Second)
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateDownloading })
	as, err := f.reg.Assignments(ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	dev := as[0].Device
	f.comesOnline(dev)
	f.incr()
	f.step()
	if got := f.rec.count(protocol.CommandInstall); got != 4 {
		t.Fatalf("%d installs after an online that followed the answer, want 4", got)
	}
}

// TestOnlineAfterAnUndoAnswerSendsNothing: the same for a rollback. A
// device that answered the rollback (rolling back, not done yet) holds it;
// an "online" recorded after that sends no second rollback id, while one
// with no answer since the rollback sends it again.
func TestOnlineAfterAnUndoAnswerSendsNothing(t *testing.T) {
	f := newGateFixture(t, 2)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MinSuccesses: 2})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateCommitted })
	for range 3 {
		f.incr()
	}
	if _, err := f.eng.Abort(ro.ID, "test"); err != nil {
		t.Fatal(err)
	}
	f.incr()
	if got := f.rec.count(protocol.CommandRollback); got != 2 {
		t.Fatalf("rollbacks %d, want 2", got)
	}
	f.advance(time.Second)
	answered, silent := "gw-00", "gw-01"
	rb := f.rec.last(answered, protocol.CommandRollback)
	f.eng.HandleAck(answered, &protocol.Ack{CommandID: rb.ID, RolloutID: ro.ID, State: protocol.UpdateRollingBack, Time: f.clock()})
	f.comesOnline(answered)
	f.comesOnline(silent)
	f.incr()
	if got := f.rec.last(answered, protocol.CommandRollback); got.ID != rb.ID {
		t.Errorf("%s answered its rollback and got another (%s) on an online recorded after", answered, got.ID)
	}
	if n := f.rec.countFor(silent, protocol.CommandRollback); n != 2 {
		t.Errorf("%s came back without answering: %d rollbacks, want 2", silent, n)
	}
}

// Between reconciliations a pass works from acks and device events only:
// it advances the gate on acks, fills the next wave, and places a device
// announced by DeviceChanged.
func TestIncrementalPasses(t *testing.T) {
	f := newGateFixture(t, 10)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MinSuccesses: 5})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	if got := f.rec.count(protocol.CommandInstall); got != 5 {
		t.Fatalf("wave 1: %d installs, want 5", got)
	}
	// A device going offline, announced, moves from on its way to offline.
	as, err := f.reg.Assignments(ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	off := as[0].Device
	if _, err := f.reg.UpdateDevice(off, func(d *registry.Device) { d.Online = false }); err != nil {
		t.Fatal(err)
	}
	f.eng.DeviceChanged(off)
	f.incr()
	ev := evidenceOf(f.eng.idx.ros[ro.ID].ro, f.eng.idx.ros[ro.ID].ts, 0)
	if ev.offline != 1 || ev.onWay != 4 {
		t.Fatalf("after the device left: offline %d, on its way %d; want 1, 4", ev.offline, ev.onWay)
	}
	f.comesOnline(off)
	f.incr()
	if got := f.rec.count(protocol.CommandInstall); got != 6 {
		t.Fatalf("after the device returned: %d installs, want 6 (a catch-up)", got)
	}
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateCommitted })
	f.incr() // wave done
	f.incr() // passes (no bake), the next wave fills on the kick
	f.incr()
	if got := f.rollout(ro.ID).Wave; got != 1 {
		t.Fatalf("wave index %d, want 1", got)
	}
	if got := f.rec.count(protocol.CommandInstall); got != 11 {
		t.Fatalf("wave 2: %d installs, want 11", got)
	}
	if _, err := f.reg.UpdateDevice("gw-new", func(d *registry.Device) { d.Online = true }); err != nil {
		t.Fatal(err)
	}
	f.eng.DeviceChanged("gw-new")
	f.incr()
	if c := f.rec.last("gw-new", protocol.CommandInstall); c == nil {
		t.Fatal("a device announced after the rollout started got no install")
	}
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateCommitted })
	for range 3 {
		f.incr()
	}
	if got := f.rollout(ro.ID); got.State != registry.RolloutCompleted {
		t.Fatalf("rollout %s, want completed", got.State)
	}
	// Abort rolls back every device from the index, then settles.
	if _, err := f.eng.Abort(ro.ID, "test"); err != nil {
		t.Fatal(err)
	}
	f.incr()
	if got := f.rec.count(protocol.CommandRollback); got != 11 {
		t.Fatalf("rollbacks %d, want 11", got)
	}
}

// TestAckRecordedByAnotherReplica: replicas all receive every ack, and the
// standby may write it before the leader does. The leader's incremental
// passes must still see it (and not only its next full reconcile).
func TestAckRecordedByAnotherReplica(t *testing.T) {
	f := newGateFixture(t, 4)
	standby, err := New(Options{Registry: f.reg, Sender: &recorder{}, Fleet: "acme", Now: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MinSuccesses: 2})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	if got := f.rec.count(protocol.CommandInstall); got != 2 {
		t.Fatalf("wave 1: %d installs, want 2", got)
	}
	as, err := f.reg.Assignments(ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		ack := &protocol.Ack{CommandID: a.CommandID, RolloutID: ro.ID, State: protocol.UpdateCommitted, Time: f.clock()}
		standby.HandleAck(a.Device, ack) // first: it writes the assignment
		f.eng.HandleAck(a.Device, ack)   // the leader finds it written
	}
	for range 3 {
		f.incr()
	}
	if got := f.rollout(ro.ID).Wave; got != 1 {
		t.Fatalf("wave index %d after incremental passes, want 1 (the leader did not see the acks the standby recorded)", got)
	}
	if got := f.rec.count(protocol.CommandInstall); got != 4 {
		t.Fatalf("wave 2: %d installs, want 4", got)
	}
}
