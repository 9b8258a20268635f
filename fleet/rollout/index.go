package rollout

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
)

// How a pass stays proportional to what changed:
//
//   - The index holds every device (id, labels, online state, models) and,
//     for each rollout with work left, its assignments, a tally per wave
//     of its devices by gate class, the devices it targets and those of
//     them not yet assigned, in cohort order.
//   - An ack or a status that changes an assignment names (rollout,
//     device); a device event (DeviceChanged) names the device. A pass
//     reads those rows again (indexed, by key), moves their tallies, and
//     checks only those devices for a catch-up send or an undo.
//   - The active rollouts come from an indexed query by state each pass;
//     a rollout seen for the first time is read whole once.
//   - Gates read the tallies (a few counters per wave), and a wave's new
//     quota is taken from the front of the unassigned devices.
//   - Reconciliation (Step, the first pass of Run, and every
//     Options.Reconcile) builds the index again from every device and
//     assignment and checks every assignment: it catches the resends due
//     after ResendAfter or CommandTTL and whatever another replica wrote
//     without telling this one.

// asKey names an assignment.
type asKey struct{ rollout, device string }

// Gate classes of an assignment (see assess).
const (
	clsVerified   = iota // committed, verified
	clsUnverified        // committed, not verified
	clsFailed            // failed or rolled back
	clsOnWay             // on its way, device online
	clsOffline           // not finished, device offline
	nClasses
)

// tally counts one wave's assignments by class.
type tally [nClasses]int

func classify(a *registry.Assignment, online bool) int {
	switch {
	case a.State == protocol.UpdateCommitted && a.Verified:
		return clsVerified
	case a.State == protocol.UpdateCommitted:
		return clsUnverified
	case a.State == protocol.UpdateFailed || a.State == protocol.UpdateRolledBack:
		return clsFailed
	case online:
		return clsOnWay
	default:
		return clsOffline
	}
}

// evidenceOf weighs wave w of ro from its tallies.
func evidenceOf(ro *registry.Rollout, ts []tally, w int) evidence {
	ev := evidence{wave: w}
	for i := 0; i <= w && i < len(ts); i++ {
		c := ts[i]
		n := 0
		for _, k := range c {
			n += k
		}
		ok := c[clsVerified]
		if !ro.RequireVerified {
			ok += c[clsUnverified]
		}
		ev.total += n
		ev.totalFailed += c[clsFailed]
		ev.totalSuccesses += ok
		if i == w {
			ev.devices, ev.successes = n, ok
			ev.verified, ev.unverified, ev.failed = c[clsVerified], c[clsUnverified], c[clsFailed]
			ev.onWay, ev.offline = c[clsOnWay], c[clsOffline]
		}
	}
	ev.needed = min(max(ro.MinSuccesses, 1), ev.devices)
	return ev
}

// assess weighs wave w of ro from its assignments.
func assess(ro *registry.Rollout, as []registry.Assignment, w int, online func(string) bool) evidence {
	ts := make([]tally, len(ro.Waves))
	for i := range as {
		a := &as[i]
		if a.Wave < 0 || a.Wave >= len(ts) {
			continue
		}
		ts[a.Wave][classify(a, online(a.Device))]++
	}
	return evidenceOf(ro, ts, w)
}

// index is what passes work on; Engine.passMu guards it.
type index struct {
	devs map[string]*registry.Device
	ros  map[string]*tracked
	// settled are finished rollouts with nothing left to undo, skipped by
	// reconciliation.
	settled map[string]bool
}

// ranked is a device's place in a rollout's cohort order.
type ranked struct {
	c  float64
	id string
}

func (r ranked) less(o ranked) bool { return r.c < o.c || (r.c == o.c && r.id < o.id) }

// tracked is one rollout with work left.
type tracked struct {
	ro *registry.Rollout
	mv *registry.ModelVersion
	as map[string]*entry
	ts []tally
	// targeted are the devices the selector matches now; have counts
	// those of them assigned; pending the others, in cohort order.
	targeted map[string]bool
	have     int
	pending  []ranked
	// budget is how many installs the rate allows now, as of refilled.
	budget   float64
	refilled time.Time
	// recheck: the phase or wave changed, so the next pass checks every
	// assignment for the command it is owed now.
	recheck bool
	// judged names the phase last analysed (rollout/wave/phase/start) and
	// judgedAt when, so a phase waiting for evidence is analysed every
	// Options.AnalyzeEvery, not every pass.
	judged   string
	judgedAt time.Time
}

type entry struct {
	a   registry.Assignment
	cls int
}

// put stores a in the index and moves its tally.
func (t *tracked) put(a *registry.Assignment, online bool) {
	if old := t.as[a.Device]; old != nil {
		if old.a.Wave >= 0 && old.a.Wave < len(t.ts) {
			t.ts[old.a.Wave][old.cls]--
		}
	} else if t.targeted[a.Device] {
		t.have++
		t.unpend(a.Device)
	}
	en := &entry{a: *a, cls: classify(a, online)}
	t.as[a.Device] = en
	if a.Wave >= 0 && a.Wave < len(t.ts) {
		t.ts[a.Wave][en.cls]++
	}
}

// reclass moves device's tally after its online state changed.
func (t *tracked) reclass(device string, online bool) {
	if en := t.as[device]; en != nil {
		t.put(&en.a, online)
	}
}

func (t *tracked) pend(device string) {
	r := ranked{Cohort(t.ro.ID, device), device}
	i := sort.Search(len(t.pending), func(i int) bool { return !t.pending[i].less(r) })
	if i < len(t.pending) && t.pending[i].id == device {
		return
	}
	t.pending = append(t.pending, ranked{})
	copy(t.pending[i+1:], t.pending[i:])
	t.pending[i] = r
}

func (t *tracked) unpend(device string) {
	r := ranked{Cohort(t.ro.ID, device), device}
	i := sort.Search(len(t.pending), func(i int) bool { return !t.pending[i].less(r) })
	if i < len(t.pending) && t.pending[i].id == device {
		t.pending = append(t.pending[:i], t.pending[i+1:]...)
	}
}

// target records whether the selector matches device d (nil: gone).
func (t *tracked) target(id string, d *registry.Device) {
	is := d != nil && matches(d.Labels, t.ro.Selector)
	if is == t.targeted[id] {
		return
	}
	_, assigned := t.as[id]
	if is {
		t.targeted[id] = true
		if assigned {
			t.have++
		} else {
			t.pend(id)
		}
		return
	}
	delete(t.targeted, id)
	if assigned {
		t.have--
	} else {
		t.unpend(id)
	}
}

// successes counts the rollout's successes over every wave.
func (t *tracked) successes() int {
	return evidenceOf(t.ro, t.ts, len(t.ts)-1).totalSuccesses
}

// allowance is how many installs the rate allows now; -1 for no limit.
// The budget fills at the current rate and holds at most a second's
// worth (at least one), so a pause does not turn into a burst.
func (t *tracked) allowance(now time.Time) int {
	rate := RateAt(t.ro.Rate, t.successes())
	if rate <= 0 {
		return -1
	}
	burst := float64(max(1, rate/60))
	if t.refilled.IsZero() {
		t.budget = burst
	} else if d := now.Sub(t.refilled); d > 0 {
		t.budget = math.Min(burst, t.budget+d.Minutes()*float64(rate))
	}
	t.refilled = now
	return int(t.budget)
}

// RateAt is the send rate, devices per minute, that r gives after
// successes; 0 means no limit.
func RateAt(r registry.Rate, successes int) int {
	if r.PerMinute <= 0 {
		return 0
	}
	rate := float64(r.PerMinute)
	if r.Factor > 1 && r.Every > 0 {
		rate *= math.Pow(r.Factor, float64(successes/r.Every))
	}
	if r.Max > 0 && rate > float64(r.Max) {
		rate = float64(r.Max)
	}
	return int(math.Min(rate, 1e9))
}

// checkRate validates a spec's rate.
func checkRate(r registry.Rate) error {
	ramp := r.Factor != 0 || r.Every != 0 || r.Max != 0
	switch {
	case r.PerMinute < 0:
		return fmt.Errorf("%w: rate %d per minute", ErrInvalid, r.PerMinute)
	case ramp && r.PerMinute == 0:
		return fmt.Errorf("%w: a rate ramp needs a rate", ErrInvalid)
	case r.Factor != 0 && (r.Factor <= 1 || r.Factor > 10 || math.IsNaN(r.Factor)):
		return fmt.Errorf("%w: rate factor %v: want more than 1, at most 10", ErrInvalid, r.Factor)
	case (r.Factor != 0) != (r.Every != 0) || r.Every < 0:
		return fmt.Errorf("%w: a rate ramp needs both a factor and a number of successes", ErrInvalid)
	case r.Max != 0 && (r.Factor == 0 || r.Max < r.PerMinute):
		return fmt.Errorf("%w: rate max %d needs a ramp and at least the rate %d", ErrInvalid, r.Max, r.PerMinute)
	}
	return nil
}

// DeviceChanged tells the engine that device's row changed (online state,
// labels, models); the next pass reads it again. Safe for concurrent use.
func (e *Engine) DeviceChanged(device string) {
	e.mu.Lock()
	e.dirtyDevs[device] = struct{}{}
	e.mu.Unlock()
	e.Kick()
}

// Run passes on every kick and tick until ctx is cancelled, reconciling
// on its first pass and every Options.Reconcile.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.opts.Tick)
	defer t.Stop()
	var last time.Time
	for {
		full := last.IsZero() || time.Since(last) >= e.opts.Reconcile
		if full {
			last = time.Now()
		}
		if err := e.pass(ctx, full); err != nil && ctx.Err() == nil {
			e.log.Warn("rollout step", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		case <-e.kick:
		}
	}
}

// Steps is how many passes have completed.
func (e *Engine) Steps() uint64 { return e.steps.Load() }

// Step reconciles: one pass over every rollout that still has work, from
// every device and assignment read again.
func (e *Engine) Step(ctx context.Context) error { return e.pass(ctx, true) }

var activeStates = []registry.RolloutState{registry.RolloutRunning, registry.RolloutPaused, registry.RolloutCompleted}

func (e *Engine) pass(ctx context.Context, full bool) error {
	e.passMu.Lock()
	defer e.passMu.Unlock()
	defer e.steps.Add(1)
	e.mu.Lock()
	devs, as := e.dirtyDevs, e.dirtyAs
	e.dirtyDevs, e.dirtyAs = map[string]struct{}{}, map[asKey]struct{}{}
	e.mu.Unlock()
	if full || e.idx == nil {
		return e.reconcile(ctx)
	}
	x := e.idx
	var errs []error
	changed := make([]string, 0, len(devs))
	for id := range devs {
		d, err := e.reg.Device(id)
		if err != nil && !errors.Is(err, registry.ErrNotFound) {
			errs = append(errs, err)
			continue
		}
		if d == nil {
			delete(x.devs, id)
		} else {
			x.devs[id] = d
		}
		for _, t := range x.ros {
			t.target(id, d)
			t.reclass(id, d != nil && d.Online)
		}
		changed = append(changed, id)
	}
	for k := range as {
		t := x.ros[k.rollout]
		if t == nil {
			continue
		}
		a, err := e.reg.Assignment(k.rollout, k.device)
		if err != nil {
			if !errors.Is(err, registry.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		t.put(a, x.online(k.device))
	}
	active, err := e.reg.RolloutsIn(activeStates...)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	seen := make(map[string]bool, len(active))
	for i := range active {
		ro := &active[i]
		seen[ro.ID] = true
		t := x.ros[ro.ID]
		if t == nil {
			if t, err = e.track(ro, x); err != nil {
				errs = append(errs, err)
				continue
			}
			x.ros[ro.ID] = t
			errs = append(errs, e.stepActive(ctx, t, nil, true))
			continue
		}
		t.ro = ro
		errs = append(errs, e.stepActive(ctx, t, changed, false))
	}
	for id, t := range x.ros {
		all := false
		if t.ro.State.Active() && !seen[id] {
			ro, err := e.reg.Rollout(id) // it finished since the last pass
			if errors.Is(err, registry.ErrNotFound) {
				delete(x.ros, id)
				continue
			}
			if err != nil {
				errs = append(errs, err)
				continue
			}
			t.ro, all = ro, true
		}
		if !t.ro.State.Active() {
			errs = append(errs, e.undoTracked(ctx, t, changed, all))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return wrapJoin(errs)
}

func wrapJoin(errs []error) error {
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("rollout: %w", err)
	}
	return nil
}

func (x *index) online(device string) bool {
	d := x.devs[device]
	return d != nil && d.Online
}

// reconcile builds the index again and checks every assignment.
func (e *Engine) reconcile(ctx context.Context) error {
	devs, err := e.reg.Devices()
	if err != nil {
		return err
	}
	prev := e.idx
	x := &index{devs: make(map[string]*registry.Device, len(devs)), ros: map[string]*tracked{}, settled: map[string]bool{}}
	if prev != nil {
		x.settled = prev.settled
	}
	for i := range devs {
		x.devs[devs[i].ID] = &devs[i]
	}
	ros, err := e.reg.RolloutsIn(append(activeStates, registry.RolloutHalted, registry.RolloutAborted, registry.RolloutSuperseded)...)
	if err != nil {
		return err
	}
	e.idx = x
	var errs []error
	for i := range ros {
		ro := &ros[i]
		if x.settled[ro.ID] {
			continue
		}
		t, err := e.track(ro, x)
		if err != nil {
			errs = append(errs, fmt.Errorf("rollout %s: %w", ro.ID, err))
			continue
		}
		if prev != nil && prev.ros[ro.ID] != nil {
			t.budget, t.refilled = prev.ros[ro.ID].budget, prev.ros[ro.ID].refilled
		}
		x.ros[ro.ID] = t
		if prev == nil && ro.State == registry.RolloutHalted && e.opts.Now().Sub(ro.Finished) < realertWithin {
			e.alertHalted(ro)
		}
		if ro.State.Active() {
			err = e.stepActive(ctx, t, nil, true)
		} else {
			err = e.undoTracked(ctx, t, nil, true)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("rollout %s: %w", ro.ID, err))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}

// track reads a rollout's assignments and builds its entry.
func (e *Engine) track(ro *registry.Rollout, x *index) (*tracked, error) {
	as, err := e.reg.Assignments(ro.ID)
	if err != nil {
		return nil, err
	}
	t := &tracked{ro: ro, as: make(map[string]*entry, len(as)), ts: make([]tally, len(ro.Waves)), targeted: map[string]bool{}}
	for i := range as {
		t.put(&as[i], x.online(as[i].Device))
	}
	if !ro.State.Active() {
		return t, nil
	}
	if t.mv, err = e.reg.Model(ro.Model, ro.Version); err != nil {
		return nil, err
	}
	for id, d := range x.devs {
		if !matches(d.Labels, ro.Selector) {
			continue
		}
		t.targeted[id] = true
		if _, ok := t.as[id]; ok {
			t.have++
		} else {
			t.pending = append(t.pending, ranked{Cohort(ro.ID, id), id})
		}
	}
	sort.Slice(t.pending, func(i, j int) bool { return t.pending[i].less(t.pending[j]) })
	return t, nil
}

// stepActive catches up the devices in check (every device with all),
// fills the current wave's quota within the rate, and checks the gate.
func (e *Engine) stepActive(ctx context.Context, t *tracked, check []string, all bool) error {
	ro, x := t.ro, e.idx
	now := e.opts.Now()
	var errs []error
	catchUp := func(en *entry) {
		a := &en.a
		d := x.devs[a.Device]
		if d == nil || a.State.Terminal() || !d.Online {
			return
		}
		hold, tr := want(ro, a.Wave, a.Baseline)
		if hold {
			return
		}
		mode := protocol.TrialMode("")
		if tr != nil {
			mode = tr.Mode
		}
		if a.CommandID == "" || a.Trial != mode {
			// Released from a hold, or owed the next phase's command.
			errs = append(errs, e.sendInstall(ctx, t, a.Device, a.Wave, a.Baseline, tr))
			return
		}
		// Catch up a device that came back, or that has not answered. A
		// device holding the candidate on trial has answered.
		last := a.Sent
		if a.Updated.After(last) {
			last = a.Updated
		}
		cameBack := backWithoutAnswer(d, a, a.Sent)
		// A trial lasts as long as its command: one held past half its
		// life is renewed (the same trial, a new id and expiry), so that a
		// rollout paused for long does not lose its candidates.
		holding := tr != nil && a.State == tr.State()
		ttl := e.commandTTL(ro, tr)
		renew := holding && !now.Before(a.Sent.Add(ttl/2))
		if cameBack || (!holding && now.Sub(last) >= e.opts.ResendAfter) || !now.Before(a.Sent.Add(ttl)) || renew {
			errs = append(errs, e.sendInstall(ctx, t, a.Device, a.Wave, a.Baseline, tr))
		}
	}
	if t.recheck {
		t.recheck, all = false, true
	}
	if all {
		ids := make([]string, 0, len(t.as))
		for id := range t.as {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		check = ids
	}
	for _, id := range check {
		if en := t.as[id]; en != nil {
			catchUp(en)
		}
	}
	// Waves fill in cohort order up to their quota of the devices targeted
	// now. An assigned device keeps its wave; a device that joins later (a
	// new device, a label change) is placed in the current wave if the
	// current quota, counted with it, has room, and otherwise waits for a
	// later wave, so the waves already passed keep the devices they were
	// judged on. A completed rollout keeps assigning (its quota is every
	// device): a device that joins the fleet later gets the version too.
	if ro.State == registry.RolloutRunning || ro.State == registry.RolloutCompleted {
		need := Quota(ro.Waves[ro.Wave], len(t.targeted)) - t.have
		allow := -1
		for need > 0 && len(t.pending) > 0 && ctx.Err() == nil {
			id := t.pending[0].id
			d := x.devs[id]
			if d == nil {
				t.pending = t.pending[1:] // gone since; a reconciliation drops it too
				continue
			}
			w := ro.Wave
			if d.Running(ro.Model) == ro.Version {
				// Already there (an earlier rollout, or an offline install).
				a, err := e.reg.UpdateAssignment(ro.ID, id, true, func(a *registry.Assignment) bool {
					a.Wave, a.State, a.Updated = w, protocol.UpdateCommitted, now.UTC()
					return true
				})
				if err != nil {
					errs = append(errs, err)
					break
				}
				t.put(a, x.online(id))
				need--
				continue
			}
			if allow == -1 {
				if allow = t.allowance(now); allow == -1 {
					allow = math.MaxInt
				}
			}
			base := trialBaseline(ro, d)
			if hold, _ := want(ro, w, base); hold {
				// Waits for the wave's promotion; no command yet.
				a, err := e.reg.UpdateAssignment(ro.ID, id, true, func(a *registry.Assignment) bool {
					a.Wave, a.Baseline, a.Updated = w, 0, now.UTC()
					return true
				})
				if err != nil {
					errs = append(errs, err)
					break
				}
				t.put(a, x.online(id))
				need--
				continue
			}
			if allow == 0 {
				break // the rate's budget is spent; the next tick adds to it
			}
			_, tr := want(ro, w, base)
			if tr == nil {
				base = 0 // joins after the trials: a plain install, as a device without them
			}
			if err := e.sendInstall(ctx, t, id, w, base, tr); err != nil {
				errs = append(errs, err)
				if _, ok := t.as[id]; !ok {
					break // not even recorded: try again on the next pass
				}
			}
			allow--
			if t.refilled.Equal(now) {
				t.budget--
			}
			need--
		}
	}
	if ro.State == registry.RolloutRunning {
		if hasPhases(ro) {
			errs = append(errs, e.phaseGate(ctx, t))
		} else {
			errs = append(errs, e.gate(t))
		}
	}
	return errors.Join(errs...)
}

// sendInstall records an install for device in t and sends it: with trial
// tr (nil: plain), baseline being the version the device serves beside a
// trial (0: not a trial device).
func (e *Engine) sendInstall(ctx context.Context, t *tracked, device string, wave int, baseline int64, tr *protocol.Trial) error {
	ro, mv := t.ro, t.mv
	now := e.opts.Now().UTC()
	cmd := &protocol.Command{
		ID: registry.NewID(""), Kind: protocol.CommandInstall, Fleet: e.opts.Fleet, Device: device, RolloutID: ro.ID,
		Issued: now, Expires: now.Add(e.commandTTL(ro, tr)),
		Install: &protocol.Install{Model: mv.Name, Version: mv.Version, Artifact: mv.Artifact(), Release: mv.Release,
			Probation: ro.Probation, Trial: tr},
	}
	mode := protocol.TrialMode("")
	if tr != nil {
		mode = tr.Mode
	}
	// Record before sending: an ack can then never arrive for a command the
	// registry does not know.
	a, err := e.reg.UpdateAssignment(ro.ID, device, true, func(a *registry.Assignment) bool {
		a.Wave, a.Baseline, a.Trial = wave, baseline, mode
		a.Remember(a.CommandID)
		a.CommandID, a.Sent = cmd.ID, now
		a.Sends++
		return true
	})
	if err != nil {
		return err
	}
	t.put(a, e.idx.online(device))
	if err := e.opts.Sender.Send(ctx, cmd); err != nil {
		return fmt.Errorf("send install to %s: %w", device, err)
	}
	return nil
}

// gate checks the current wave and advances, completes or halts.
func (e *Engine) gate(t *tracked) error {
	ro := t.ro
	ev := evidenceOf(ro, t.ts, ro.Wave)
	now := e.opts.Now().UTC()
	if halted, err := e.failureGate(t, ev, now); halted || err != nil {
		return err
	}
	done := ev.done()
	timedOut := !done && ro.WaveTimeout > 0 && !now.Before(waveStart(ro).Add(ro.WaveTimeout))
	if timedOut && ro.OnWaveTimeout != registry.WaveTimeoutContinue {
		reason := fmt.Sprintf("wave %d timed out after %s, halting: %s", ro.Wave+1, ro.WaveTimeout, ev.why(ro.RequireVerified))
		if err := e.finish(ro.ID, registry.RolloutHalted, reason, ev.decision(now, "timeout-halt", reason)); err != nil {
			return err
		}
		e.Kick()
		return nil
	}
	if !done && !timedOut && ro.WaveDone.IsZero() {
		return nil // nothing to write: spare the store a transaction
	}
	if done && !ro.WaveDone.IsZero() && now.Sub(ro.WaveDone) < ro.Bake {
		return nil
	}
	// With an analysis, a promoted wave is compared with the devices still
	// on the baseline before the next (phases.go).
	waveAnalysis := false
	if done && !ro.WaveDone.IsZero() && ro.Analysis != nil {
		_, waveAnalysis = e.waveRequest(t, ro.WaveDone, now)
	}
	cur, err := e.reg.UpdateRolloutAudited(ro.ID, func(cur *registry.Rollout) error {
		if cur.State != registry.RolloutRunning || cur.Wave != ro.Wave {
			return errNoChange
		}
		last := cur.Wave == len(cur.Waves)-1
		switch {
		case timedOut:
			detail := fmt.Sprintf("wave %d timed out after %s, continuing: %s", cur.Wave+1, cur.WaveTimeout, ev.why(cur.RequireVerified))
			cur.Decisions = append(cur.Decisions, *ev.decision(now, "timeout-continue", detail))
			e.log.Warn("rollout wave timed out", "rollout", cur.ID, "wave", cur.Wave+1, "action", "continue", "detail", detail)
			if last {
				cur.State, cur.Finished, cur.Reason = registry.RolloutCompleted, now, detail
			} else {
				cur.Wave++
				cur.WaveDone, cur.WaveStarted = time.Time{}, now
				cur.Phase, cur.PhaseStarted = firstPhase(cur), time.Time{}
			}
		case !done:
			if cur.WaveDone.IsZero() {
				return errNoChange
			}
			cur.WaveDone = time.Time{} // a new device joined the wave
		case cur.WaveDone.IsZero():
			cur.WaveDone = now
		case now.Sub(cur.WaveDone) < cur.Bake:
			return errNoChange
		case last:
			cur.State, cur.Finished = registry.RolloutCompleted, now
			cur.Decisions = append(cur.Decisions, *ev.decision(now, "completed", ""))
			e.log.Info("rollout completed", "rollout", cur.ID, "devices", ev.total, "ok", ev.totalSuccesses, "failed", ev.totalFailed)
		case waveAnalysis:
			d := ev.decision(now, "promoted", fmt.Sprintf("wave %d promoted: %d of %d successes needed; compared with the devices on the baseline for %s",
				cur.Wave+1, ev.successes, ev.needed, waveWindow(cur)))
			d.Phase = registry.PhasePromote
			cur.Decisions = append(cur.Decisions, *d)
			cur.Phase, cur.PhaseStarted = registry.PhaseWave, cur.WaveDone
		default:
			d := ev.decision(now, "passed", "")
			if cur.Phase != "" {
				d.Phase, d.Detail = cur.Phase, fmt.Sprintf("wave %d promoted: %d of %d successes needed", cur.Wave+1, ev.successes, ev.needed)
				if cur.Analysis != nil {
					d.Detail += "; no wave analysis: no device left on a baseline"
				}
			}
			cur.Decisions = append(cur.Decisions, *d)
			cur.Wave++
			cur.WaveDone, cur.WaveStarted = time.Time{}, now
			cur.Phase, cur.PhaseStarted = firstPhase(cur), time.Time{}
			e.log.Info("rollout wave", "rollout", cur.ID, "wave", cur.Wave+1, "percent", cur.Waves[cur.Wave],
				"evidence", fmt.Sprintf("%d of %d successes needed", ev.successes, ev.needed))
		}
		cur.Updated = now
		return nil
	}, auditRecord)
	if errors.Is(err, errNoChange) {
		return nil
	}
	if err == nil {
		if cur.Wave != ro.Wave || cur.Phase != ro.Phase {
			t.recheck = true
		}
		t.ro = cur
		e.Kick()
	}
	return err
}

var errNoChange = errors.New("no change")

// undoTracked sends rollback to devices that activated the rollout's
// version and abort to devices with an update under way, checking the
// devices in check (every device with all). A superseded rollout only
// aborts: the rollout that replaced it moves activated devices on. A
// rollout whose every device is answered is settled and leaves the index.
func (e *Engine) undoTracked(ctx context.Context, t *tracked, check []string, all bool) error {
	ro, x := t.ro, e.idx
	now := e.opts.Now().UTC()
	if all {
		check = make([]string, 0, len(t.as))
		for id := range t.as {
			check = append(check, id)
		}
		sort.Strings(check)
	}
	var errs []error
	owed := false
	for _, id := range check {
		en := t.as[id]
		if en == nil {
			continue
		}
		a := &en.a
		var kind protocol.CommandKind
		switch {
		case a.Activated && a.State != protocol.UpdateRolledBack && ro.State != registry.RolloutSuperseded:
			kind = protocol.CommandRollback
		case !a.Activated && a.CommandID != "" && !a.State.Terminal():
			kind = protocol.CommandAbort
		default:
			continue
		}
		if a.Undo == kind && a.UndoDone {
			continue // answered (a rollback with nothing to return to fails for good)
		}
		owed = true
		d := x.devs[a.Device]
		if a.UndoID != "" && a.Undo == kind &&
			(d == nil || !d.Online || (!backWithoutAnswer(d, a, a.UndoSent) && now.Sub(a.UndoSent) < e.opts.ResendAfter)) {
			continue // sent; wait for the answer, the device's return or ResendAfter
		}
		cmd := &protocol.Command{
			ID: registry.NewID(""), Kind: kind, Fleet: e.opts.Fleet, Device: a.Device, RolloutID: ro.ID,
			Issued: now, Expires: now.Add(e.opts.CommandTTL),
		}
		if kind == protocol.CommandRollback {
			cmd.Rollback = &protocol.Rollback{Model: ro.Model, Version: ro.Version, Reason: ro.Reason}
		} else {
			cmd.Abort = &protocol.Abort{Reason: ro.Reason}
		}
		got, err := e.reg.UpdateAssignment(ro.ID, a.Device, false, func(y *registry.Assignment) bool {
			y.Remember(y.UndoID)
			y.Undo, y.UndoID, y.UndoSent, y.UndoDone = kind, cmd.ID, now, false
			return true
		})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.put(got, x.online(a.Device))
		if err := e.opts.Sender.Send(ctx, cmd); err != nil {
			errs = append(errs, fmt.Errorf("send %s to %s: %w", kind, a.Device, err))
		}
	}
	if all && !owed && len(errs) == 0 {
		x.settled[ro.ID] = true
		delete(x.ros, ro.ID)
	}
	return errors.Join(errs...)
}

// backWithoutAnswer reports whether device d came back online after a
// command sent at sent and has not answered a's commands since: the
// command may have gone with the old connection (a clean session, a broker
// that lost its sessions), so it is sent again. A device that answered
// holds the command and goes on by itself. "After" is as the replica that
// wrote OnlineSince saw it: every replica records every "online", a standby
// possibly after the leader sent, so without the answer test a new leader
// would send again to devices that never left.
func backWithoutAnswer(d *registry.Device, a *registry.Assignment, sent time.Time) bool {
	return d.OnlineSince.After(sent) && !a.Updated.After(sent)
}
