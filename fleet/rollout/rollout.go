// Package rollout drives model rollouts: it picks the devices of each wave
// by a deterministic cohort, sends signed install commands, counts the
// devices' acks, checks the gates between waves (minimum successes, maximum
// failure ratio, bake time, wave timeout), and undoes a rollout that is
// halted by a failed gate or aborted (rollback for devices that activated the
// version, abort for those still on their way). Devices that were offline
// catch up when they return, unless the rollout was aborted or superseded.
//
// Gates need evidence. A wave passes only when at least MinSuccesses of its
// own devices committed (verified commits with RequireVerified) and none of
// its online devices is still on its way. Offline devices neither hold a
// wave nor pass it: a wave whose devices are offline waits (Status says
// why), so a broker restart, a controller restart or a site losing its
// uplink never advances a rollout. Only a wave timeout, chosen per rollout,
// ends the wait without the evidence: it halts the rollout or continues, and
// the decision is recorded.
//
// All state lives in the registry, so a restarted controller carries on where
// it stopped; the Engine only holds a wake-up channel.
package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
)

// Errors; callers test with errors.Is.
var (
	// ErrInvalid: a rollout spec is unusable (unknown model version, bad
	// waves or ratio).
	ErrInvalid = errors.New("rollout: invalid")
	// ErrState: the operation does not apply in the rollout's state
	// (resume of an aborted rollout, for example).
	ErrState = errors.New("rollout: wrong state")
)

// Sender signs a command and publishes it to its device (QoS 1). It must be
// safe for concurrent use; an error means the command may not have left.
type Sender interface {
	Send(ctx context.Context, cmd *protocol.Command) error
}

// Options for New. Registry, Sender and Fleet are required.
type Options struct {
	Registry *registry.Registry
	Sender   Sender
	Fleet    string
	// CommandTTL is how long a command stays valid; 0 means 24h. A device
	// that was offline longer gets a fresh command when it returns.
	CommandTTL time.Duration
	// ResendAfter: an online device that has not answered a command this
	// long gets it again (new id); 0 means 10 minutes.
	ResendAfter time.Duration
	// Tick is how often gates are checked without an event; 0 means 1s.
	Tick   time.Duration
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Engine runs rollouts. Its methods are safe for concurrent use.
type Engine struct {
	opts Options
	reg  *registry.Registry
	log  *slog.Logger
	kick chan struct{}
	// steps counts completed passes of Step, so a test can wait for one
	// instead of sleeping.
	steps atomic.Uint64
}

// New checks the options.
func New(opts Options) (*Engine, error) {
	if opts.Registry == nil || opts.Sender == nil {
		return nil, errors.New("rollout: Registry and Sender are required")
	}
	if _, err := protocol.ArtifactsReqTopic(opts.Fleet); err != nil {
		return nil, fmt.Errorf("rollout: %w", err)
	}
	if opts.CommandTTL <= 0 {
		opts.CommandTTL = 24 * time.Hour
	}
	if opts.ResendAfter <= 0 {
		opts.ResendAfter = 10 * time.Minute
	}
	if opts.Tick <= 0 {
		opts.Tick = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Engine{opts: opts, reg: opts.Registry, log: opts.Logger, kick: make(chan struct{}, 1)}, nil
}

// Cohort places a device in a rollout: a number in [0, 100) from the
// SHA-256 of the rollout id and the device id. Devices join a rollout in
// cohort order (ties by device id), so the same device and rollout always
// give the same place; different rollouts shuffle the fleet anew, so the
// same devices are not always first.
func Cohort(rollout, device string) float64 {
	h := sha256.Sum256([]byte(rollout + "\x00" + device))
	return float64(binary.BigEndian.Uint64(h[:8])>>11) / float64(1<<53) * 100
}

// Quota is how many of n targeted devices waves up to one of percent p
// hold: ceil(p% of n), so a wave is never empty while there are devices.
func Quota(p, n int) int {
	return (p*n + 99) / 100
}

// byCohort returns the first k of devs in cohort order for rollout id.
func byCohort(id string, devs []*registry.Device, k int) []*registry.Device {
	if k <= 0 {
		return nil
	}
	type ranked struct {
		c float64
		d *registry.Device
	}
	rs := make([]ranked, len(devs))
	for i, d := range devs {
		rs[i] = ranked{Cohort(id, d.ID), d}
	}
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].c != rs[j].c {
			return rs[i].c < rs[j].c
		}
		return rs[i].d.ID < rs[j].d.ID
	})
	out := make([]*registry.Device, 0, min(k, len(rs)))
	for _, r := range rs[:min(k, len(rs))] {
		out = append(out, r.d)
	}
	return out
}

// Spec is what a rollout is asked to do.
type Spec struct {
	Model    string
	Version  int64
	Selector map[string]string
	// Waves are cumulative percentages, rising, ending at 100; nil means
	// 10, 50, 100.
	Waves []int
	// MaxFailureRatio in [0, 1]; negative means 0.1.
	MaxFailureRatio float64
	// MinSuccesses a wave needs from its own devices before the next; 0
	// means 1. A wave with fewer devices needs all of them.
	MinSuccesses int
	Bake         time.Duration
	// RequireVerified counts only verified commits as successes: an
	// unverified one neither passes nor fails a wave.
	RequireVerified bool
	// Probation, when set, goes into every install command.
	Probation *protocol.Probation
	// WaveTimeout, when positive, ends a wave's wait for evidence after
	// this long (from the wave's start) as OnWaveTimeout says:
	// registry.WaveTimeoutHalt (the default) or WaveTimeoutContinue.
	WaveTimeout   time.Duration
	OnWaveTimeout string
}

// DefaultWaves are used when a spec names none.
var DefaultWaves = []int{10, 50, 100}

// Create checks spec, stores a running rollout and supersedes any other
// active rollout of the same model.
func (e *Engine) Create(spec Spec) (*registry.Rollout, error) {
	if _, err := e.reg.Model(spec.Model, spec.Version); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if spec.Waves == nil {
		spec.Waves = DefaultWaves
	}
	if len(spec.Waves) == 0 || spec.Waves[len(spec.Waves)-1] != 100 {
		return nil, fmt.Errorf("%w: waves %v must end at 100", ErrInvalid, spec.Waves)
	}
	for i, w := range spec.Waves {
		if w < 1 || w > 100 || (i > 0 && w <= spec.Waves[i-1]) {
			return nil, fmt.Errorf("%w: waves %v must rise from 1 to 100", ErrInvalid, spec.Waves)
		}
	}
	if spec.MaxFailureRatio < 0 {
		spec.MaxFailureRatio = 0.1
	}
	if spec.MaxFailureRatio > 1 || math.IsNaN(spec.MaxFailureRatio) {
		return nil, fmt.Errorf("%w: max failure ratio %v", ErrInvalid, spec.MaxFailureRatio)
	}
	if spec.MinSuccesses <= 0 {
		spec.MinSuccesses = 1
	}
	if spec.Bake < 0 {
		return nil, fmt.Errorf("%w: bake %s", ErrInvalid, spec.Bake)
	}
	for k, v := range spec.Selector {
		if !protocol.ValidLabel(k, v) {
			return nil, fmt.Errorf("%w: selector %s=%s", ErrInvalid, k, v)
		}
	}
	if spec.WaveTimeout < 0 {
		return nil, fmt.Errorf("%w: wave timeout %s", ErrInvalid, spec.WaveTimeout)
	}
	switch spec.OnWaveTimeout {
	case "":
		if spec.WaveTimeout > 0 {
			spec.OnWaveTimeout = registry.WaveTimeoutHalt
		}
	case registry.WaveTimeoutHalt, registry.WaveTimeoutContinue:
		if spec.WaveTimeout == 0 {
			return nil, fmt.Errorf("%w: on wave timeout %q without a wave timeout", ErrInvalid, spec.OnWaveTimeout)
		}
	default:
		return nil, fmt.Errorf("%w: on wave timeout %q: want halt or continue", ErrInvalid, spec.OnWaveTimeout)
	}
	var probation *protocol.Probation
	if p := spec.Probation; p != nil && (p.MinRequests != 0 || p.MaxSeconds != 0) {
		if p.MinRequests < 0 || p.MinRequests > protocol.MaxProbationRequests || p.MaxSeconds < 0 || p.MaxSeconds > protocol.MaxProbationSeconds {
			return nil, fmt.Errorf("%w: probation %d requests, %d s", ErrInvalid, p.MinRequests, p.MaxSeconds)
		}
		probation = &protocol.Probation{MinRequests: p.MinRequests, MaxSeconds: p.MaxSeconds}
	}
	now := e.opts.Now().UTC()
	ro := &registry.Rollout{
		ID: registry.NewID("r-"), Model: spec.Model, Version: spec.Version, Selector: spec.Selector,
		Waves: append([]int(nil), spec.Waves...), MaxFailureRatio: spec.MaxFailureRatio, MinSuccesses: spec.MinSuccesses,
		RequireVerified: spec.RequireVerified, Probation: probation, WaveTimeout: spec.WaveTimeout, OnWaveTimeout: spec.OnWaveTimeout,
		Bake: spec.Bake, State: registry.RolloutRunning, Created: now, Updated: now, WaveStarted: now,
	}
	all, err := e.reg.Rollouts()
	if err != nil {
		return nil, err
	}
	for _, old := range all {
		if old.Model == ro.Model && old.State.Active() {
			if err := e.finish(old.ID, registry.RolloutSuperseded, "superseded by "+ro.ID, nil); err != nil {
				return nil, err
			}
		}
	}
	if err := e.reg.PutRollout(ro); err != nil {
		return nil, err
	}
	e.log.Info("rollout created", "rollout", ro.ID, "model", ro.Model, "version", ro.Version, "waves", ro.Waves)
	e.Kick()
	return ro, nil
}

// Pause stops a running rollout from sending new installs or advancing;
// updates under way carry on.
func (e *Engine) Pause(id string) (*registry.Rollout, error) {
	return e.transition(id, registry.RolloutPaused, registry.RolloutRunning)
}

// Resume continues a paused rollout.
func (e *Engine) Resume(id string) (*registry.Rollout, error) {
	return e.transition(id, registry.RolloutRunning, registry.RolloutPaused)
}

// Abort ends a rollout and rolls back every device it touched.
func (e *Engine) Abort(id, reason string) (*registry.Rollout, error) {
	if reason == "" {
		reason = "aborted by operator"
	}
	if err := e.finish(id, registry.RolloutAborted, reason, nil); err != nil {
		return nil, err
	}
	e.Kick()
	return e.reg.Rollout(id)
}

func (e *Engine) transition(id string, to registry.RolloutState, from ...registry.RolloutState) (*registry.Rollout, error) {
	ro, err := e.reg.UpdateRollout(id, func(ro *registry.Rollout) error {
		for _, f := range from {
			if ro.State == f {
				ro.State, ro.Updated = to, e.opts.Now().UTC()
				return nil
			}
		}
		return fmt.Errorf("%w: %s is %s", ErrState, id, ro.State)
	})
	if err == nil {
		e.log.Info("rollout "+string(to), "rollout", id)
		e.Kick()
	}
	return ro, err
}

// finish moves an active rollout to a final state, recording d if set.
func (e *Engine) finish(id string, to registry.RolloutState, reason string, d *registry.Decision) error {
	_, err := e.reg.UpdateRollout(id, func(ro *registry.Rollout) error {
		if !ro.State.Active() {
			return fmt.Errorf("%w: %s is already %s", ErrState, id, ro.State)
		}
		now := e.opts.Now().UTC()
		ro.State, ro.Reason, ro.Updated, ro.Finished = to, reason, now, now
		if d != nil {
			ro.Decisions = append(ro.Decisions, *d)
		}
		return nil
	})
	if err == nil {
		e.log.Warn("rollout "+string(to), "rollout", id, "reason", reason)
	}
	return err
}

// Kick makes Run step soon.
func (e *Engine) Kick() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// HandleAck records a device's ack against its assignment. Acks for unknown
// rollouts or devices without an assignment are ignored (a late answer to a
// rollout that was deleted, or a device acting on its own).
func (e *Engine) HandleAck(device string, a *protocol.Ack) {
	e.apply(device, a.RolloutID, a.CommandID, answer{a.State, a.Progress, a.Total, a.Requests, a.Verified, a.Error, a.Time})
}

// HandleStatus takes the update a device reports in its status as an ack,
// so a rollout learns a result whose ack was lost.
func (e *Engine) HandleStatus(device string, u *protocol.UpdateStatus) {
	if u == nil || u.State == protocol.UpdateIdle {
		return
	}
	e.apply(device, u.RolloutID, u.CommandID, answer{u.State, u.Progress, u.Total, u.Requests, u.Verified, u.Error, u.Time})
}

// answer is what an ack or a status says about a command.
type answer struct {
	st                        protocol.UpdateState
	progress, total, requests int64
	verified                  bool
	errText                   string
	at                        time.Time
}

func (e *Engine) apply(device, rollout, cmdID string, an answer) {
	st, progress, total, errText, at := an.st, an.progress, an.total, an.errText, an.at
	changed := false
	_, err := e.reg.UpdateAssignment(rollout, device, false, func(as *registry.Assignment) bool {
		changed = false
		if !as.Known(cmdID) {
			return false // an answer to a command this rollout did not send
		}
		if !at.IsZero() && at.Before(as.AckTime) {
			return false // older than what we have: reordered or repeated
		}
		if as.State == st && as.Progress == progress && as.Requests == an.requests && as.Verified == an.verified {
			return false
		}
		as.State, as.Progress, as.Total, as.Error = st, progress, total, errText
		as.Requests, as.Verified = an.requests, an.verified && st == protocol.UpdateCommitted
		if !at.IsZero() {
			as.AckTime = at
		}
		as.Updated = e.opts.Now().UTC()
		if st.Activated() {
			as.Activated = true
		}
		if cmdID == as.UndoID && st.Terminal() {
			as.UndoDone = true
		}
		changed = true
		return true
	})
	if err != nil && !errors.Is(err, registry.ErrNotFound) {
		e.log.Warn("ack", "device", device, "rollout", rollout, "err", err)
	}
	if changed {
		if st.Terminal() {
			e.log.Info("device update "+string(st), "device", device, "rollout", rollout, "error", errText,
				"probation_requests", an.requests, "verified", an.verified)
		}
		e.Kick()
	}
}

// Run steps every rollout on every kick and tick until ctx is cancelled.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.opts.Tick)
	defer t.Stop()
	for {
		if err := e.Step(ctx); err != nil && ctx.Err() == nil {
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

// Steps is how many passes Step has completed.
func (e *Engine) Steps() uint64 { return e.steps.Load() }

// Step does one pass over every rollout that still has work.
func (e *Engine) Step(ctx context.Context) error {
	defer e.steps.Add(1)
	rollouts, err := e.reg.Rollouts()
	if err != nil {
		return err
	}
	devs, err := e.reg.Devices()
	if err != nil {
		return err
	}
	byID := make(map[string]*registry.Device, len(devs))
	for i := range devs {
		byID[devs[i].ID] = &devs[i]
	}
	var errs []error
	for i := range rollouts {
		if err := e.step(ctx, &rollouts[i], devs, byID); err != nil {
			errs = append(errs, fmt.Errorf("rollout %s: %w", rollouts[i].ID, err))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}

func (e *Engine) step(ctx context.Context, ro *registry.Rollout, devs []registry.Device, byID map[string]*registry.Device) error {
	as, err := e.reg.Assignments(ro.ID)
	if err != nil {
		return err
	}
	if !ro.State.Active() {
		return e.undo(ctx, ro, as, byID)
	}
	mv, err := e.reg.Model(ro.Model, ro.Version)
	if err != nil {
		return err
	}
	now := e.opts.Now()
	assigned := make(map[string]bool, len(as))
	var errs []error
	for i := range as {
		a := &as[i]
		assigned[a.Device] = true
		d := byID[a.Device]
		if d == nil || a.State.Terminal() || !d.Online {
			continue
		}
		// Catch up a device that came back, or that has not answered.
		last := a.Sent
		if a.Updated.After(last) {
			last = a.Updated
		}
		if d.OnlineSince.After(a.Sent) || now.Sub(last) >= e.opts.ResendAfter || !now.Before(a.Sent.Add(e.opts.CommandTTL)) {
			errs = append(errs, e.sendInstall(ctx, ro, mv, a.Device, a.Wave))
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
		var free []*registry.Device
		targeted, have := 0, 0
		for i := range devs {
			d := &devs[i]
			if !matches(d.Labels, ro.Selector) {
				continue
			}
			targeted++
			if assigned[d.ID] {
				have++
			} else {
				free = append(free, d)
			}
		}
		need := Quota(ro.Waves[ro.Wave], targeted) - have
		if need <= 0 {
			free = nil
		}
		for _, d := range byCohort(ro.ID, free, need) {
			w := ro.Wave
			if d.Running(ro.Model) == ro.Version {
				// Already there (an earlier rollout, or an offline install).
				_, err := e.reg.UpdateAssignment(ro.ID, d.ID, true, func(a *registry.Assignment) bool {
					a.Wave, a.State, a.Updated = w, protocol.UpdateCommitted, now.UTC()
					return true
				})
				errs = append(errs, err)
				continue
			}
			errs = append(errs, e.sendInstall(ctx, ro, mv, d.ID, w))
		}
	}
	if ro.State == registry.RolloutRunning {
		if err := e.gate(ro, byID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (e *Engine) sendInstall(ctx context.Context, ro *registry.Rollout, mv *registry.ModelVersion, device string, wave int) error {
	now := e.opts.Now().UTC()
	cmd := &protocol.Command{
		ID: registry.NewID(""), Kind: protocol.CommandInstall, Fleet: e.opts.Fleet, Device: device, RolloutID: ro.ID,
		Issued: now, Expires: now.Add(e.opts.CommandTTL),
		Install: &protocol.Install{Model: mv.Name, Version: mv.Version, Artifact: mv.Artifact(), Release: mv.Release,
			Probation: ro.Probation},
	}
	// Record before sending: an ack can then never arrive for a command the
	// registry does not know.
	if _, err := e.reg.UpdateAssignment(ro.ID, device, true, func(a *registry.Assignment) bool {
		a.Wave = wave
		a.Remember(a.CommandID)
		a.CommandID, a.Sent = cmd.ID, now
		a.Sends++
		return true
	}); err != nil {
		return err
	}
	if err := e.opts.Sender.Send(ctx, cmd); err != nil {
		return fmt.Errorf("send install to %s: %w", device, err)
	}
	return nil
}

// evidence is what a wave's gate decides on.
type evidence struct {
	wave int
	// The wave's own devices: all, successes (commits that count),
	// commits verified and not, failed or rolled back, online and still
	// on their way, offline and not finished.
	devices, successes, verified, unverified, failed, onWay, offline int
	// needed successes: MinSuccesses, or every device of a smaller wave.
	needed int
	// Over every wave up to this one: devices, failures and successes.
	total, totalFailed, totalSuccesses int
}

// assess weighs wave w of ro.
func assess(ro *registry.Rollout, as []registry.Assignment, w int, online func(string) bool) evidence {
	ev := evidence{wave: w}
	for _, a := range as {
		if a.Wave > w {
			continue
		}
		ok := a.State == protocol.UpdateCommitted && (a.Verified || !ro.RequireVerified)
		bad := a.State == protocol.UpdateFailed || a.State == protocol.UpdateRolledBack
		ev.total++
		if bad {
			ev.totalFailed++
		}
		if ok {
			ev.totalSuccesses++
		}
		if a.Wave != w {
			continue
		}
		ev.devices++
		switch {
		case a.State == protocol.UpdateCommitted:
			if a.Verified {
				ev.verified++
			} else {
				ev.unverified++
			}
			if ok {
				ev.successes++
			}
		case bad:
			ev.failed++
		case online(a.Device):
			ev.onWay++
		default:
			ev.offline++ // neither holds the wave nor passes it
		}
	}
	ev.needed = min(max(ro.MinSuccesses, 1), ev.devices)
	return ev
}

// done reports whether the wave has its evidence: enough successes and no
// online device still on its way. A wave without devices passes only after
// an earlier one gave successes (its share of a small fleet rounded to
// nothing); a first wave without devices waits for some.
func (ev evidence) done() bool {
	if ev.onWay > 0 {
		return false
	}
	if ev.devices == 0 {
		return ev.wave > 0 && ev.totalSuccesses > 0
	}
	return ev.successes >= ev.needed
}

// why says, for a wave that is not done, what it lacks.
func (ev evidence) why(requireVerified bool) string {
	w := ev.wave + 1
	if ev.devices == 0 {
		return fmt.Sprintf("wave %d waits: no devices", w)
	}
	var parts []string
	if ev.onWay > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d devices updating", ev.onWay, ev.devices))
	}
	if ev.offline > 0 {
		parts = append(parts, fmt.Sprintf("%d of %d devices offline", ev.offline, ev.devices))
	}
	if ev.failed > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", ev.failed))
	}
	if requireVerified && ev.unverified > 0 {
		parts = append(parts, fmt.Sprintf("%d committed (unverified)", ev.unverified))
	}
	succ := "successes"
	if requireVerified {
		succ = "verified commits"
	}
	parts = append(parts, fmt.Sprintf("%d of %d %s needed", ev.successes, ev.needed, succ))
	verb := "waits"
	if ev.onWay > 0 {
		verb = "in progress"
	}
	return fmt.Sprintf("wave %d %s: %s", w, verb, strings.Join(parts, ", "))
}

func (ev evidence) decision(now time.Time, action, detail string) *registry.Decision {
	return &registry.Decision{Time: now, Wave: ev.wave, Action: action, Successes: ev.successes, Needed: ev.needed,
		Devices: ev.devices, Detail: detail}
}

func onlineIn(byID map[string]*registry.Device) func(string) bool {
	return func(id string) bool {
		d := byID[id]
		return d != nil && d.Online
	}
}

// waveStart is when ro's current wave started.
func waveStart(ro *registry.Rollout) time.Time {
	if ro.WaveStarted.IsZero() {
		return ro.Created
	}
	return ro.WaveStarted
}

// gate checks the current wave and advances, completes or halts.
func (e *Engine) gate(ro *registry.Rollout, byID map[string]*registry.Device) error {
	as, err := e.reg.Assignments(ro.ID)
	if err != nil {
		return err
	}
	ev := assess(ro, as, ro.Wave, onlineIn(byID))
	now := e.opts.Now().UTC()
	if ev.totalFailed > 0 && float64(ev.totalFailed) > ro.MaxFailureRatio*float64(ev.total) {
		reason := fmt.Sprintf("gate failed in wave %d (%d%%): %d of %d devices failed, more than %.0f%%",
			ro.Wave+1, ro.Waves[ro.Wave], ev.totalFailed, ev.total, ro.MaxFailureRatio*100)
		if err := e.finish(ro.ID, registry.RolloutHalted, reason, ev.decision(now, "failed", reason)); err != nil {
			return err
		}
		e.Kick() // undo on the next step
		return nil
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
	_, err = e.reg.UpdateRollout(ro.ID, func(cur *registry.Rollout) error {
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
		default:
			cur.Decisions = append(cur.Decisions, *ev.decision(now, "passed", ""))
			cur.Wave++
			cur.WaveDone, cur.WaveStarted = time.Time{}, now
			e.log.Info("rollout wave", "rollout", cur.ID, "wave", cur.Wave+1, "percent", cur.Waves[cur.Wave],
				"evidence", fmt.Sprintf("%d of %d successes needed", ev.successes, ev.needed))
		}
		cur.Updated = now
		return nil
	})
	if errors.Is(err, errNoChange) {
		return nil
	}
	if err == nil {
		e.Kick()
	}
	return err
}

var errNoChange = errors.New("no change")

// undo sends rollback to devices that activated the rollout's version and
// abort to devices with an update under way. A superseded rollout only
// aborts: the rollout that replaced it moves activated devices on.
func (e *Engine) undo(ctx context.Context, ro *registry.Rollout, as []registry.Assignment, byID map[string]*registry.Device) error {
	now := e.opts.Now().UTC()
	var errs []error
	for _, a := range as {
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
		d := byID[a.Device]
		if a.UndoID != "" && a.Undo == kind &&
			(d == nil || !d.Online || (!d.OnlineSince.After(a.UndoSent) && now.Sub(a.UndoSent) < e.opts.ResendAfter)) {
			continue // sent; wait for the answer or for the device to return
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
		if _, err := e.reg.UpdateAssignment(ro.ID, a.Device, false, func(x *registry.Assignment) bool {
			x.Remember(x.UndoID)
			x.Undo, x.UndoID, x.UndoSent, x.UndoDone = kind, cmd.ID, now, false
			return true
		}); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := e.opts.Sender.Send(ctx, cmd); err != nil {
			errs = append(errs, fmt.Errorf("send %s to %s: %w", kind, a.Device, err))
		}
	}
	return errors.Join(errs...)
}

// ParseSelector parses "k=v,k2=v2" into labels; empty gives none.
func ParseSelector(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !protocol.ValidLabel(k, v) {
			return nil, fmt.Errorf("%w: selector %q: want k=v[,k=v...]", ErrInvalid, s)
		}
		out[k] = v
	}
	return out, nil
}

// matches reports whether labels has every key=value of sel.
func matches(labels, sel map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// Progress categories shown per wave.
const (
	CatPending     = "pending"
	CatDownloading = "downloading"
	CatValidating  = "validating"
	CatActive      = "active"
	CatFailed      = "failed"
	CatRolledBack  = "rolled_back"
)

// Category maps an assignment's state to what rollout status shows.
func Category(s protocol.UpdateState) string {
	switch s {
	case protocol.UpdateDownloading:
		return CatDownloading
	case protocol.UpdateVerifying, protocol.UpdateStaged, protocol.UpdateValidating, protocol.UpdateActivating:
		return CatValidating
	case protocol.UpdateProbation, protocol.UpdateCommitted:
		return CatActive
	case protocol.UpdateFailed:
		return CatFailed
	case protocol.UpdateRollingBack, protocol.UpdateRolledBack:
		return CatRolledBack
	default:
		return CatPending
	}
}

// Gate states of a wave in a report.
const (
	GatePending    = "pending"     // a later wave
	GateInProgress = "in progress" // devices on their way
	GateWaiting    = "waiting"     // lacks evidence and nothing is on its way
	GateBaking     = "baking"      // has its evidence; bake time running
	GatePassed     = "passed"
	GateTimedOut   = "timed out"
)

// Report is a rollout with its progress per wave.
type Report struct {
	registry.Rollout
	Waves []WaveReport `json:"wave_progress"`
	// Committed counts devices that committed the version; Verified those
	// of them whose commit is verified.
	Committed int `json:"committed"`
	Verified  int `json:"verified"`
	Devices   int `json:"devices"`
	// Waiting says why the current wave of a running or paused rollout
	// has not passed ("wave 1 waits: 2 of 3 devices offline, ..."); empty
	// when it has its evidence.
	Waiting string `json:"waiting,omitempty"`
	// TimeoutAt is when the current wave times out, if it can.
	TimeoutAt time.Time `json:"timeout_at,omitzero"`
	// BytesMoved is how much of the artifact the devices hold, as they
	// last acked (a device past its download counts its whole artifact).
	BytesMoved int64 `json:"bytes_moved"`
}

// WaveReport counts one wave's devices by category, with its gate.
type WaveReport struct {
	Percent int            `json:"percent"`
	Devices int            `json:"devices"`
	Counts  map[string]int `json:"counts"`
	// Verified and Unverified split the wave's commits.
	Verified   int `json:"verified"`
	Unverified int `json:"unverified"`
	// Offline counts devices not finished that are offline.
	Offline int `json:"offline"`
	// Successes the gate counts and the successes it needs.
	Successes int    `json:"successes"`
	Needed    int    `json:"needed"`
	Gate      string `json:"gate"`
}

// Status reports a rollout's progress.
func (e *Engine) Status(id string) (*Report, error) {
	ro, err := e.reg.Rollout(id)
	if err != nil {
		return nil, err
	}
	as, err := e.reg.Assignments(id)
	if err != nil {
		return nil, err
	}
	devs, err := e.reg.Devices()
	if err != nil {
		return nil, err
	}
	byID := make(map[string]*registry.Device, len(devs))
	for i := range devs {
		byID[devs[i].ID] = &devs[i]
	}
	online := onlineIn(byID)
	rep := &Report{Rollout: *ro, Devices: len(as)}
	timedOut := map[int]bool{}
	for _, d := range ro.Decisions {
		if strings.HasPrefix(d.Action, "timeout") {
			timedOut[d.Wave] = true
		}
	}
	for i, p := range ro.Waves {
		ev := assess(ro, as, i, online)
		wr := WaveReport{Percent: p, Counts: map[string]int{}, Verified: ev.verified, Unverified: ev.unverified,
			Offline: ev.offline, Successes: ev.successes, Needed: ev.needed}
		active := ro.State == registry.RolloutRunning || ro.State == registry.RolloutPaused
		switch {
		case timedOut[i]:
			wr.Gate = GateTimedOut
		case i < ro.Wave || (i == ro.Wave && ro.State == registry.RolloutCompleted):
			wr.Gate = GatePassed
		case i > ro.Wave:
			wr.Gate = GatePending
		case ev.done():
			wr.Gate = GateBaking
		case ev.onWay > 0:
			wr.Gate = GateInProgress
		default:
			wr.Gate = GateWaiting
		}
		if i == ro.Wave && active && !ev.done() {
			rep.Waiting = ev.why(ro.RequireVerified)
			if ro.WaveTimeout > 0 {
				rep.TimeoutAt = waveStart(ro).Add(ro.WaveTimeout)
			}
		}
		rep.Waves = append(rep.Waves, wr)
	}
	var length int64 // of the artifact, which a device past its download holds
	if mv, err := e.reg.Model(ro.Model, ro.Version); err == nil {
		length = mv.Length
	}
	sort.Slice(as, func(i, j int) bool { return as[i].Device < as[j].Device })
	for _, a := range as {
		if a.Wave < 0 || a.Wave >= len(rep.Waves) {
			continue
		}
		w := &rep.Waves[a.Wave]
		w.Devices++
		w.Counts[Category(a.State)]++
		moved := a.Progress
		if c := Category(a.State); c == CatValidating || c == CatActive {
			moved = max(moved, a.Total, length)
		}
		rep.BytesMoved += moved
		if a.State == protocol.UpdateCommitted {
			rep.Committed++
			if a.Verified {
				rep.Verified++
			}
		}
	}
	return rep, nil
}
