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
// it stopped. The Engine keeps an index of the active rollouts (their
// assignments, per-wave tallies and the devices still to assign, in cohort
// order) so that a pass costs what changed, not the fleet: acks and device
// events name the rows to read again, the active rollouts come from an
// indexed query, and only a rare reconciliation (Options.Reconcile) reads
// every device and assignment again (see index.go).
//
// A rollout may limit its send rate (Rate: devices per minute, with an
// optional exponential ramp on successes).
package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/analysis"
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

// Alerter stores an event for the webhooks (*alerts.Outbox). Emit must be
// safe for concurrent use, durable when it returns nil, and deliver one
// event ID once however often it is emitted.
type Alerter interface {
	Emit(ctx context.Context, ev alerts.Event) error
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
	Tick time.Duration
	// Reconcile is how often Run reads every device and assignment again
	// (catching what no event announced: changes made by another replica,
	// and the resends due after ResendAfter); 0 means the shorter of a
	// minute and ResendAfter/2.
	Reconcile time.Duration
	Logger    *slog.Logger
	// Alerts, if set, is told of every rollout that halts.
	Alerts Alerter
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Analyzer judges the phases and waves of rollouts that have them;
	// nil refuses such rollouts at Create.
	Analyzer Analyzer
	// DefaultAnalysis is the analysis config of a rollout with shadow or
	// canary phases and none of its own; nil refuses such rollouts.
	DefaultAnalysis *analysis.Config
	// AnalyzeEvery is how often a phase waiting for evidence is analysed
	// again; 0 means 10s.
	AnalyzeEvery time.Duration
}

// Engine runs rollouts. Its methods are safe for concurrent use.
type Engine struct {
	opts Options
	reg  *registry.Registry
	log  *slog.Logger
	kick chan struct{}

	// mu guards the changes announced since the last pass: devices to
	// read again and (rollout, device) assignments to read again.
	mu        sync.Mutex
	dirtyDevs map[string]struct{}
	dirtyAs   map[asKey]struct{}

	// passMu serialises passes and guards idx, the index they work on.
	passMu sync.Mutex
	idx    *index

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
	if opts.Reconcile <= 0 {
		opts.Reconcile = min(time.Minute, opts.ResendAfter/2)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.AnalyzeEvery <= 0 {
		opts.AnalyzeEvery = 10 * time.Second
	}
	return &Engine{opts: opts, reg: opts.Registry, log: opts.Logger, kick: make(chan struct{}, 1),
		dirtyDevs: map[string]struct{}{}, dirtyAs: map[asKey]struct{}{}}, nil
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
	// Rate limits the installs sent; the zero Rate does not.
	Rate registry.Rate
	// Shadow and Canary, when set, are phases each wave goes through
	// before its promotion, on the devices that take trials (phases.go).
	Shadow, Canary *registry.TrialPhase
	// Analysis judges the phases and, between waves, the promoted devices
	// against those still on the baseline; nil means no analysis (with
	// phases: Options.DefaultAnalysis).
	Analysis *analysis.Config
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
	if err := checkRate(spec.Rate); err != nil {
		return nil, err
	}
	if err := e.checkPhases(&spec); err != nil {
		return nil, err
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
		Bake: spec.Bake, State: registry.RolloutRunning, Created: now, Updated: now, WaveStarted: now, Rate: spec.Rate,
		Shadow: spec.Shadow, Canary: spec.Canary,
	}
	if spec.Analysis != nil {
		b, err := json.Marshal(spec.Analysis)
		if err != nil {
			return nil, fmt.Errorf("%w: analysis config: %v", ErrInvalid, err)
		}
		ro.Analysis = b
	}
	ro.Phase = firstPhase(ro)
	all, err := e.reg.RolloutsIn(registry.RolloutRunning, registry.RolloutPaused, registry.RolloutCompleted)
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
// A rollout paused in a phase for lack of evidence gets another MaxWait.
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
	ro, err := e.reg.UpdateRolloutAudited(id, func(ro *registry.Rollout) error {
		for _, f := range from {
			if ro.State == f {
				now := e.opts.Now().UTC()
				if to == registry.RolloutRunning && ro.Phase != "" {
					// The wait for the devices (phaseGate) or for the
					// analysis's evidence (judge) starts again.
					ro.Decisions = append(ro.Decisions, registry.Decision{Time: now, Wave: ro.Wave, Phase: ro.Phase, Action: "resumed"})
				}
				ro.State, ro.Updated = to, now
				return nil
			}
		}
		return fmt.Errorf("%w: %s is %s", ErrState, id, ro.State)
	}, auditRecord)
	if err == nil {
		e.log.Info("rollout "+string(to), "rollout", id)
		e.Kick()
	}
	return ro, err
}

// finish moves an active rollout to a final state, recording d if set.
func (e *Engine) finish(id string, to registry.RolloutState, reason string, d *registry.Decision) error {
	return e.finishWith(id, to, reason, d, nil)
}

// finishWith is finish that also applies more (if set) to the rollout; d
// is audited in the same transaction.
func (e *Engine) finishWith(id string, to registry.RolloutState, reason string, d *registry.Decision, more func(ro *registry.Rollout)) error {
	ro, err := e.reg.UpdateRolloutAudited(id, func(ro *registry.Rollout) error {
		if !ro.State.Active() {
			return fmt.Errorf("%w: %s is already %s", ErrState, id, ro.State)
		}
		now := e.opts.Now().UTC()
		ro.State, ro.Reason, ro.Updated, ro.Finished = to, reason, now, now
		if d != nil {
			ro.Decisions = append(ro.Decisions, *d)
		}
		if more != nil {
			more(ro)
		}
		return nil
	}, auditRecord)
	if err == nil {
		e.log.Warn("rollout "+string(to), "rollout", id, "reason", reason)
		if to == registry.RolloutHalted {
			e.alertHalted(ro)
		}
	}
	return err
}

// realertWithin: at the start of an engine, halts younger than this are
// emitted again, in case the process died between a halt and its event
// (the event's id makes a repeat a no-op while the outbox keeps its row).
const realertWithin = time.Hour

// alertHalted emits ro's halt to the webhooks.
func (e *Engine) alertHalted(ro *registry.Rollout) {
	if e.opts.Alerts == nil {
		return
	}
	if err := e.opts.Alerts.Emit(context.Background(), alerts.RolloutHaltedEvent(ro)); err != nil {
		e.log.Warn("rollout halt alert", "rollout", ro.ID, "err", err)
	}
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
	// current: the answer is to a command of this rollout and not older
	// than the assignment's; changed: this call wrote it. Replicas all
	// receive every ack and the first one to write it wins: the leader
	// must look at the assignment again even when another replica wrote it,
	// or it learns of the answer only at its next full reconcile.
	current, changed := false, false
	_, err := e.reg.UpdateAssignment(rollout, device, false, func(as *registry.Assignment) bool {
		current, changed = false, false
		if !as.Known(cmdID) {
			return false // an answer to a command this rollout did not send
		}
		if !at.IsZero() && at.Before(as.AckTime) {
			return false // older than what we have: reordered or repeated
		}
		current = true
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
	if changed || current {
		e.mu.Lock()
		e.dirtyAs[asKey{rollout, device}] = struct{}{}
		e.mu.Unlock()
		if changed && st.Terminal() {
			e.log.Info("device update "+string(st), "device", device, "rollout", rollout, "error", errText,
				"probation_requests", an.requests, "verified", an.verified)
		}
		e.Kick()
	}
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

// waveStart is when ro's current wave started.
func waveStart(ro *registry.Rollout) time.Time {
	if ro.WaveStarted.IsZero() {
		return ro.Created
	}
	return ro.WaveStarted
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
	// RateNow is the send rate in devices per minute the rollout's Rate
	// gives at its successes so far; 0 when it has no limit.
	RateNow int `json:"rate_now,omitempty"`
	// Analyses are the rollout's analysis reports, oldest first: the last
	// one of each wave and phase analysed.
	Analyses []analysis.Report `json:"analyses,omitempty"`
	// PhaseEndsAt is when the current phase's window ends (zero while it
	// has not started, or without phases).
	PhaseEndsAt time.Time `json:"phase_ends_at,omitzero"`
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
	// Phase, in a rollout with phases or analysis: the current wave's
	// phase (shadow, canary, promote, wave), "done" for a wave behind it,
	// empty for the waves to come.
	Phase string `json:"phase,omitempty"`
	// TrialDevices counts the wave's devices that take trials.
	TrialDevices int `json:"trial_devices,omitempty"`
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
	on, err := e.reg.OnlineDevices()
	if err != nil {
		return nil, err
	}
	online := func(id string) bool { return on[id] }
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
		if hasPhases(ro) {
			switch {
			case i < ro.Wave || ro.State == registry.RolloutCompleted:
				wr.Phase = "done"
			case i == ro.Wave:
				wr.Phase = ro.Phase
			}
			for j := range as {
				if as[j].Wave == i && as[j].Baseline != 0 {
					wr.TrialDevices++
				}
			}
		}
		rep.Waves = append(rep.Waves, wr)
	}
	if hasPhases(ro) {
		rep.Analyses = Analyses(ro)
		if ro.State == registry.RolloutRunning || ro.State == registry.RolloutPaused {
			tv := weighTrial(ro, func(yield func(*registry.Assignment) bool) {
				for i := range as {
					if !yield(&as[i]) {
						return
					}
				}
			}, online)
			if why, end := phaseWhy(ro, tv, e.opts.Now()); why != "" {
				rep.Waiting, rep.PhaseEndsAt = why, end
			}
		}
	}
	var length int64 // of the artifact, which a device past its download holds
	if mv, err := e.reg.Model(ro.Model, ro.Version); err == nil {
		length = mv.Length
	}
	rep.RateNow = RateAt(ro.Rate, assess(ro, as, len(ro.Waves)-1, online).totalSuccesses)
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
