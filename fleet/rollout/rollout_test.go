package rollout

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/protocol"
)

func TestCohortDeterministicAndProportional(t *testing.T) {
	if Cohort("r-1", "gw-1") != Cohort("r-1", "gw-1") {
		t.Fatal("cohort differs between calls")
	}
	const n = 20000
	waves := []int{1, 10, 50, 100}
	counts := make([]int, len(waves))
	same := 0
	for i := range n {
		dev := fmt.Sprintf("gw-%d", i)
		c := Cohort("r-a", dev)
		if c < 0 || c >= 100 {
			t.Fatalf("cohort %v out of [0, 100)", c)
		}
		counts[waveOf(waves, c)]++
		if waveOf(waves, Cohort("r-b", dev)) == waveOf(waves, c) {
			same++
		}
	}
	prev := 0
	for i, w := range waves {
		want := float64(w-prev) / 100 * n
		got := float64(counts[i])
		// Binomial: 4 standard deviations.
		if sd := math.Sqrt(want * (1 - want/n)); math.Abs(got-want) > 4*sd+1 {
			t.Errorf("wave %d (%d%%): got %v devices, want %v ± %.0f", i, w, got, want, 4*sd)
		}
		prev = w
	}
	// Another rollout shuffles the fleet: the same wave for every device
	// would mean the id is ignored.
	if same == n {
		t.Fatal("two rollouts put every device in the same wave")
	}
}

// waveOf returns the index of the first wave above cohort c: where a device
// would land if waves were cut by cohort value rather than by count.
func waveOf(waves []int, c float64) int {
	for i, p := range waves {
		if c < float64(p) {
			return i
		}
	}
	return len(waves) - 1
}

func TestParseSelector(t *testing.T) {
	got, err := ParseSelector("site=north,hw=pi5")
	if err != nil || len(got) != 2 || got["site"] != "north" || got["hw"] != "pi5" {
		t.Fatalf("got %v, %v", got, err)
	}
	for _, bad := range []string{"site", "=x", "a=b,", "a b=c"} {
		if _, err := ParseSelector(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseSelector(%q): got %v, want ErrInvalid", bad, err)
		}
	}
}

// recorder is the Sender seam: it records commands instead of signing and
// publishing them, so the gates can be driven ack by ack on a fake clock.
// The controller tests run the same engine over a real broker.
type recorder struct {
	mu   sync.Mutex
	sent []protocol.Command
}

func (r *recorder) Send(_ context.Context, c *protocol.Command) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, *c)
	return nil
}

func (r *recorder) last(device string, kind protocol.CommandKind) *protocol.Command {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.sent) - 1; i >= 0; i-- {
		if r.sent[i].Device == device && r.sent[i].Kind == kind {
			c := r.sent[i]
			return &c
		}
	}
	return nil
}

type gateFixture struct {
	t   *testing.T
	reg *registry.Registry
	eng *Engine
	rec *recorder
	now time.Time
	mu  sync.Mutex
}

func newGateFixture(t *testing.T, devices int) *gateFixture {
	t.Helper()
	reg, err := registry.Open(t.TempDir(), registry.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	k, err := keyring.Init(t.TempDir(), keyring.Options{})
	if err != nil {
		t.Fatal(err)
	}
	model := []byte("model bytes")
	sum := sha256.Sum256(model)
	m := manifest.Manifest{Name: "face", Version: 2, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(model)), Runtime: "tflite",
		Inputs:  []manifest.Tensor{{Name: "i", DataType: "FP32", Shape: []int{1}}},
		Outputs: []manifest.Tensor{{Name: "o", DataType: "FP32", Shape: []int{1}}}}
	rel, err := k.SignRelease(m, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.PutModel(k.Root(), rel, bytes.NewReader(model), 4, time.Now()); err != nil {
		t.Fatal(err)
	}
	f := &gateFixture{t: t, reg: reg, rec: &recorder{}, now: time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)}
	f.eng, err = New(Options{Registry: reg, Sender: f.rec, Fleet: "acme", Now: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	for i := range devices {
		if _, err := reg.UpdateDevice(fmt.Sprintf("gw-%02d", i), func(d *registry.Device) {
			d.Online, d.Labels = true, map[string]string{"site": []string{"north", "south"}[i%2]}
		}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func (f *gateFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *gateFixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func (f *gateFixture) step() {
	f.t.Helper()
	if err := f.eng.Step(context.Background()); err != nil {
		f.t.Fatal(err)
	}
}

// answer acks the last install each assigned device got with st.
func (f *gateFixture) answer(id string, st func(device string) protocol.UpdateState) {
	f.t.Helper()
	as, err := f.reg.Assignments(id)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, a := range as {
		if a.State.Terminal() {
			continue
		}
		s := st(a.Device)
		f.eng.HandleAck(a.Device, &protocol.Ack{CommandID: a.CommandID, RolloutID: id, State: s, Time: f.clock()})
	}
}

func (f *gateFixture) rollout(id string) *registry.Rollout {
	f.t.Helper()
	ro, err := f.reg.Rollout(id)
	if err != nil {
		f.t.Fatal(err)
	}
	return ro
}

func TestGatesAdvanceAfterBake(t *testing.T) {
	f := newGateFixture(t, 40)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{25, 100}, MaxFailureRatio: 0.1, MinSuccesses: 3, Bake: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	wave1, _ := f.reg.Assignments(ro.ID)
	if len(wave1) == 0 || len(wave1) == 40 {
		t.Fatalf("wave 1 of 25%% assigned %d of 40 devices", len(wave1))
	}
	for _, a := range wave1 {
		if c := f.rec.last(a.Device, protocol.CommandInstall); c == nil || c.Install.Version != 2 || c.RolloutID != ro.ID {
			t.Fatalf("%s got no install for the rollout: %+v", a.Device, c)
		}
	}
	// Devices still working hold the wave.
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateDownloading })
	f.step()
	if r := f.rollout(ro.ID); r.Wave != 0 || !r.WaveDone.IsZero() {
		t.Fatalf("wave advanced with devices downloading: %+v", r)
	}
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateCommitted })
	f.step()
	if r := f.rollout(ro.ID); r.Wave != 0 || r.WaveDone.IsZero() {
		t.Fatalf("finished wave not marked done: %+v", r)
	}
	f.advance(4 * time.Minute)
	f.step()
	if r := f.rollout(ro.ID); r.Wave != 0 {
		t.Fatal("wave advanced before the bake time")
	}
	f.advance(time.Minute)
	f.step() // advance
	f.step() // assign wave 2
	if r := f.rollout(ro.ID); r.Wave != 1 {
		t.Fatalf("wave did not advance after the bake: %+v", r)
	}
	if as, _ := f.reg.Assignments(ro.ID); len(as) != 40 {
		t.Fatalf("wave 2 assigned %d of 40 devices", len(as))
	}
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateCommitted })
	f.step()
	f.advance(5 * time.Minute)
	f.step()
	if r := f.rollout(ro.ID); r.State != registry.RolloutCompleted {
		t.Fatalf("rollout is %s after every device committed and baked", r.State)
	}
	rep, err := f.eng.Status(ro.ID)
	if err != nil || rep.Committed != 40 || rep.Waves[0].Devices+rep.Waves[1].Devices != 40 || rep.Waves[1].Counts[CatActive] != rep.Waves[1].Devices {
		t.Fatalf("report %+v, %v", rep, err)
	}
}

func TestGateMinSuccesses(t *testing.T) {
	f := newGateFixture(t, 20)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MaxFailureRatio: 1, MinSuccesses: 1000})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	wave1, _ := f.reg.Assignments(ro.ID)
	// Every device but one fails; the ratio allows it, the minimum (capped
	// at the wave's size) does not.
	first := wave1[0].Device
	f.answer(ro.ID, func(d string) protocol.UpdateState {
		if d == first {
			return protocol.UpdateCommitted
		}
		return protocol.UpdateFailed
	})
	f.step()
	if r := f.rollout(ro.ID); r.Wave != 0 || !r.WaveDone.IsZero() || r.State != registry.RolloutRunning {
		t.Fatalf("wave with 1 success of %d passed a min-successes gate: %+v", len(wave1), r)
	}
}

// setOnline marks devices online or offline, as their state messages do.
func (f *gateFixture) setOnline(online bool, devices ...string) {
	f.t.Helper()
	for _, d := range devices {
		if _, err := f.reg.UpdateDevice(d, func(x *registry.Device) { x.Online = online }); err != nil {
			f.t.Fatal(err)
		}
	}
}

func deviceIDs(as []registry.Assignment) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Device)
	}
	return out
}

// A wave whose devices all go offline is not passed by their silence: it
// waits, says so, and passes once a returning device commits.
func TestGateOfflineWaveWaits(t *testing.T) {
	f := newGateFixture(t, 20)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{10, 100}, MaxFailureRatio: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	wave1, _ := f.reg.Assignments(ro.ID)
	if len(wave1) != 2 {
		t.Fatalf("wave 1 of 10%% of 20 devices holds %d, want 2", len(wave1))
	}
	// One device downloads, then the whole wave drops off (a broker restart
	// publishes every last will).
	f.eng.HandleAck(wave1[0].Device, &protocol.Ack{CommandID: wave1[0].CommandID, RolloutID: ro.ID, State: protocol.UpdateDownloading, Time: f.clock()})
	f.setOnline(false, deviceIDs(wave1)...)
	for range 5 {
		f.advance(time.Hour)
		f.step()
	}
	if r := f.rollout(ro.ID); r.Wave != 0 || r.State != registry.RolloutRunning || !r.WaveDone.IsZero() {
		t.Fatalf("an all-offline wave passed: wave %d state %s done %v", r.Wave+1, r.State, r.WaveDone)
	}
	if as, _ := f.reg.Assignments(ro.ID); len(as) != 2 {
		t.Fatalf("a waiting wave 1 let %d devices in", len(as))
	}
	rep, err := f.eng.Status(ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	if want := "wave 1 waits: 2 of 2 devices offline, 0 of 1 successes needed"; rep.Waiting != want {
		t.Fatalf("got waiting %q, want %q", rep.Waiting, want)
	}
	if g := rep.Waves[0]; g.Gate != GateWaiting || g.Offline != 2 {
		t.Fatalf("wave 1 report %+v, want waiting with 2 offline", g)
	}
	// One device returns and commits; the other stays away and does not
	// hold the wave.
	f.setOnline(true, wave1[0].Device)
	f.eng.HandleAck(wave1[0].Device, &protocol.Ack{CommandID: wave1[0].CommandID, RolloutID: ro.ID, State: protocol.UpdateCommitted, Time: f.clock()})
	f.step()
	f.step()
	r := f.rollout(ro.ID)
	if r.Wave != 1 {
		t.Fatalf("wave 1 with its success did not pass: %+v", r)
	}
	if len(r.Decisions) != 1 || r.Decisions[0].Action != "passed" || r.Decisions[0].Successes != 1 || r.Decisions[0].Needed != 1 {
		t.Fatalf("decisions %+v, want wave 1 passed on 1 of 1 successes", r.Decisions)
	}
}

// The canary wave is never empty while there are devices: ceil(p% of n),
// taken in cohort order.
func TestCanaryNeverEmpty(t *testing.T) {
	f := newGateFixture(t, 3)
	for i := range 60 {
		ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{34, 100}})
		if err != nil {
			t.Fatal(err)
		}
		f.step()
		as, _ := f.reg.Assignments(ro.ID)
		if want := Quota(34, 3); len(as) != want {
			t.Fatalf("rollout %d (%s): wave 1 holds %d devices, want %d", i, ro.ID, len(as), want)
		}
		// The ones taken are the lowest cohorts.
		taken := map[string]bool{}
		worst := 0.0
		for _, a := range as {
			taken[a.Device] = true
			worst = max(worst, Cohort(ro.ID, a.Device))
		}
		for d := range 3 {
			id := fmt.Sprintf("gw-%02d", d)
			if !taken[id] && Cohort(ro.ID, id) < worst {
				t.Fatalf("rollout %s: %s (cohort %.2f) left out for a device of cohort %.2f", ro.ID, id, Cohort(ro.ID, id), worst)
			}
		}
	}
	for _, c := range []struct{ p, n, want int }{{34, 3, 2}, {10, 3, 1}, {1, 1, 1}, {10, 0, 0}, {10, 100, 10}, {10, 101, 11}, {100, 7, 7}} {
		if got := Quota(c.p, c.n); got != c.want {
			t.Errorf("Quota(%d, %d) = %d, want %d", c.p, c.n, got, c.want)
		}
	}
}

// A device that joins during wave 1 goes to wave 1 only while its quota has
// room; waves fill in cohort order and earlier waves keep their devices.
func TestLateJoinerPlacement(t *testing.T) {
	f := newGateFixture(t, 10)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{10, 50, 100}})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	if as, _ := f.reg.Assignments(ro.ID); len(as) != 1 {
		t.Fatalf("wave 1 of 10%% of 10 holds %d", len(as))
	}
	// An 11th device: ceil(10% of 11) = 2, so wave 1 takes one more.
	f.setOnline(true, "gw-10")
	f.step()
	as, _ := f.reg.Assignments(ro.ID)
	if len(as) != 2 {
		t.Fatalf("wave 1 of 10%% of 11 holds %d, want 2", len(as))
	}
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateCommitted })
	f.step()
	f.step()
	f.step()
	if r := f.rollout(ro.ID); r.Wave != 1 {
		t.Fatalf("wave 1 did not pass: %+v", r)
	}
	as, _ = f.reg.Assignments(ro.ID)
	waves := map[int]int{}
	for _, a := range as {
		waves[a.Wave]++
	}
	if waves[0] != 2 || waves[1] != Quota(50, 11)-2 {
		t.Fatalf("devices per wave %v, want 2 then %d", waves, Quota(50, 11)-2)
	}
}

// Without a timeout a wave waits forever; with one it halts (rolling back
// what it touched) or continues as told, and says so.
func TestWaveTimeout(t *testing.T) {
	for _, action := range []string{"", registry.WaveTimeoutHalt, registry.WaveTimeoutContinue} {
		t.Run("on="+action, func(t *testing.T) {
			f := newGateFixture(t, 10)
			ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{20, 100}, WaveTimeout: 30 * time.Minute, OnWaveTimeout: action})
			if err != nil {
				t.Fatal(err)
			}
			f.step()
			wave1, _ := f.reg.Assignments(ro.ID)
			first := wave1[0].Device
			f.answer(ro.ID, func(d string) protocol.UpdateState {
				if d == first {
					return protocol.UpdateCommitted
				}
				return protocol.UpdateDownloading
			})
			f.setOnline(false, deviceIDs(wave1)[1:]...)
			f.eng.Kick()
			// MinSuccesses 2: one commit is not enough.
			_, _ = f.reg.UpdateRollout(ro.ID, func(r *registry.Rollout) error { r.MinSuccesses = 2; return nil })
			f.advance(29 * time.Minute)
			f.step()
			if r := f.rollout(ro.ID); r.State != registry.RolloutRunning || r.Wave != 0 {
				t.Fatalf("before the timeout: %s wave %d", r.State, r.Wave+1)
			}
			rep, _ := f.eng.Status(ro.ID)
			if rep.TimeoutAt.IsZero() || !strings.Contains(rep.Waiting, "1 of 2 devices offline") {
				t.Fatalf("report before the timeout: waiting %q, timeout at %v", rep.Waiting, rep.TimeoutAt)
			}
			f.advance(time.Minute)
			f.step()
			r := f.rollout(ro.ID)
			if len(r.Decisions) != 1 || r.Decisions[0].Successes != 1 || r.Decisions[0].Needed != 2 {
				t.Fatalf("decisions %+v, want one timeout on 1 of 2 successes", r.Decisions)
			}
			if action == registry.WaveTimeoutContinue {
				if r.State != registry.RolloutRunning || r.Wave != 1 || r.Decisions[0].Action != "timeout-continue" {
					t.Fatalf("continue: %s wave %d, decision %+v", r.State, r.Wave+1, r.Decisions[0])
				}
				rep, _ := f.eng.Status(ro.ID)
				if rep.Waves[0].Gate != GateTimedOut {
					t.Fatalf("wave 1 gate %q, want %q", rep.Waves[0].Gate, GateTimedOut)
				}
				return
			}
			if r.State != registry.RolloutHalted || r.Decisions[0].Action != "timeout-halt" || !strings.Contains(r.Reason, "timed out after 30m0s") {
				t.Fatalf("halt: %s (%q), decision %+v", r.State, r.Reason, r.Decisions[0])
			}
			f.step() // undo
			if rb := f.rec.last(first, protocol.CommandRollback); rb == nil {
				t.Fatalf("%s committed before the halt and got no rollback", first)
			}
		})
	}
	// No timeout: waits on.
	f := newGateFixture(t, 10)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{20, 100}})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	wave1, _ := f.reg.Assignments(ro.ID)
	f.setOnline(false, deviceIDs(wave1)...)
	f.advance(90 * 24 * time.Hour)
	f.step()
	if r := f.rollout(ro.ID); r.State != registry.RolloutRunning || r.Wave != 0 || len(r.Decisions) != 0 {
		t.Fatalf("without a timeout: %s wave %d %+v", r.State, r.Wave+1, r.Decisions)
	}
	for _, bad := range []Spec{{OnWaveTimeout: "continue"}, {WaveTimeout: time.Minute, OnWaveTimeout: "skip"}, {WaveTimeout: -time.Second}} {
		bad.Model, bad.Version = "face", 2
		if _, err := f.eng.Create(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: got %v, want ErrInvalid", bad, err)
		}
	}
}

// With RequireVerified an unverified commit neither passes nor fails a wave;
// the probation policy goes out in every install.
func TestRequireVerified(t *testing.T) {
	f := newGateFixture(t, 10)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{10, 100}, RequireVerified: true,
		Probation: &protocol.Probation{MinRequests: 50, MaxSeconds: 600}})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	wave1, _ := f.reg.Assignments(ro.ID)
	dev := wave1[0].Device
	in := f.rec.last(dev, protocol.CommandInstall)
	if in == nil || in.Install.Probation == nil || in.Install.Probation.MinRequests != 50 || in.Install.Probation.MaxSeconds != 600 {
		t.Fatalf("install without the rollout's probation: %+v", in)
	}
	ack := func(st protocol.UpdateState, requests int64, verified bool) {
		f.eng.HandleAck(dev, &protocol.Ack{CommandID: wave1[0].CommandID, RolloutID: ro.ID, State: st, Requests: requests, Verified: verified, Time: f.clock()})
		f.advance(time.Second)
	}
	ack(protocol.UpdateCommitted, 7, false)
	f.step()
	f.step()
	r := f.rollout(ro.ID)
	if r.Wave != 0 || r.State != registry.RolloutRunning {
		t.Fatalf("an unverified commit passed the wave: %s wave %d", r.State, r.Wave+1)
	}
	rep, _ := f.eng.Status(ro.ID)
	if !strings.Contains(rep.Waiting, "1 committed (unverified)") || rep.Waves[0].Unverified != 1 || rep.Waves[0].Verified != 0 {
		t.Fatalf("report: waiting %q, wave %+v", rep.Waiting, rep.Waves[0])
	}
	if as, _ := f.reg.Assignments(ro.ID); as[0].Requests != 7 || as[0].Verified {
		t.Fatalf("assignment records %d requests, verified %v", as[0].Requests, as[0].Verified)
	}
	// The device's status later says verified (the same command).
	f.eng.HandleStatus(dev, &protocol.UpdateStatus{CommandID: wave1[0].CommandID, RolloutID: ro.ID, Model: "face", Version: 2,
		State: protocol.UpdateCommitted, Requests: 55, Verified: true, Time: f.clock()})
	f.step()
	f.step()
	if r := f.rollout(ro.ID); r.Wave != 1 {
		t.Fatalf("a verified commit did not pass the wave: %+v", r)
	}
	rep, _ = f.eng.Status(ro.ID)
	if rep.Waves[0].Verified != 1 || rep.Verified != 1 {
		t.Fatalf("report after verification: %+v", rep.Waves[0])
	}
	if _, err := f.eng.Create(Spec{Model: "face", Version: 2, Probation: &protocol.Probation{MinRequests: -1}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative probation: %v", err)
	}
}

func TestGateFailureHaltsAndRollsBack(t *testing.T) {
	f := newGateFixture(t, 30)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MaxFailureRatio: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	wave1, _ := f.reg.Assignments(ro.ID)
	if len(wave1) < 4 {
		t.Fatalf("wave 1 has %d devices; the test needs a few", len(wave1))
	}
	// Two activate then fail probation, one is still validating, the rest
	// committed: 2 of n failed > 10%.
	states := map[string]protocol.UpdateState{}
	for i, a := range wave1 {
		switch i {
		case 0, 1:
			states[a.Device] = protocol.UpdateRolledBack
		case 2:
			states[a.Device] = protocol.UpdateValidating
		default:
			states[a.Device] = protocol.UpdateCommitted
		}
	}
	f.answer(ro.ID, func(d string) protocol.UpdateState {
		if states[d] == protocol.UpdateRolledBack {
			return protocol.UpdateProbation
		}
		return states[d]
	})
	f.answer(ro.ID, func(d string) protocol.UpdateState { return states[d] })
	f.step()
	if r := f.rollout(ro.ID); r.State != registry.RolloutHalted {
		t.Fatalf("rollout is %s with %d of %d failed, want halted", r.State, 2, len(wave1))
	}
	f.step() // undo
	for i, a := range wave1 {
		rb, ab := f.rec.last(a.Device, protocol.CommandRollback), f.rec.last(a.Device, protocol.CommandAbort)
		switch {
		case i < 2: // already rolled back by themselves
			if rb != nil || ab != nil {
				t.Errorf("%s rolled back on its own but got %v %v", a.Device, rb, ab)
			}
		case i == 2:
			if ab == nil || rb != nil {
				t.Errorf("%s was validating: want an abort, got rollback %v abort %v", a.Device, rb, ab)
			}
		default:
			if rb == nil || rb.Rollback.Version != 2 || rb.Rollback.Model != "face" {
				t.Errorf("%s committed v2: want a rollback of face v2, got %+v", a.Device, rb)
			}
		}
	}
	// No device outside wave 1 ever got an install.
	as, _ := f.reg.Assignments(ro.ID)
	if len(as) != len(wave1) {
		t.Fatalf("halted rollout assigned %d devices, wave 1 had %d", len(as), len(wave1))
	}
	// Undo is sent once, not on every step.
	n := len(f.rec.sent)
	f.step()
	if len(f.rec.sent) != n {
		t.Fatalf("undo sent again without cause: %d commands, then %d", n, len(f.rec.sent))
	}
}

func TestSelectorAndSupersede(t *testing.T) {
	f := newGateFixture(t, 10)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, Selector: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	f.step()
	as, _ := f.reg.Assignments(ro.ID)
	if len(as) != 5 {
		t.Fatalf("selector site=north assigned %d of 10 devices, want 5", len(as))
	}
	f.answer(ro.ID, func(string) protocol.UpdateState { return protocol.UpdateDownloading })
	ro2, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}})
	if err != nil {
		t.Fatal(err)
	}
	if r := f.rollout(ro.ID); r.State != registry.RolloutSuperseded {
		t.Fatalf("old rollout is %s, want superseded", r.State)
	}
	f.step()
	for _, a := range as {
		if f.rec.last(a.Device, protocol.CommandAbort) == nil {
			t.Errorf("%s was downloading for the superseded rollout and got no abort", a.Device)
		}
	}
	if _, err := f.eng.Resume(ro.ID); !errors.Is(err, ErrState) {
		t.Fatalf("resume of a superseded rollout: %v", err)
	}
	if _, err := f.eng.Create(Spec{Model: "face", Version: 9}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("unknown version: %v", err)
	}
	for _, w := range [][]int{{50}, {50, 40, 100}, {0, 100}} {
		if _, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: w}); !errors.Is(err, ErrInvalid) {
			t.Errorf("waves %v: got %v, want ErrInvalid", w, err)
		}
	}
	_ = ro2
}
