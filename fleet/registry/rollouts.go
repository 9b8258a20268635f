package registry

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// RolloutState is the life cycle of a rollout.
type RolloutState string

// Rollout states.
const (
	RolloutRunning   RolloutState = "running"
	RolloutPaused    RolloutState = "paused"
	RolloutCompleted RolloutState = "completed"
	// RolloutHalted: a gate failed; the affected devices were rolled back.
	RolloutHalted     RolloutState = "halted"
	RolloutAborted    RolloutState = "aborted"
	RolloutSuperseded RolloutState = "superseded"
)

// Active reports whether the rollout still sends installs.
func (s RolloutState) Active() bool {
	return s == RolloutRunning || s == RolloutPaused || s == RolloutCompleted
}

// Rollout is one rollout's definition and progress.
type Rollout struct {
	ID       string            `json:"id"`
	Model    string            `json:"model"`
	Version  int64             `json:"version"`
	Selector map[string]string `json:"selector,omitempty"`
	// Waves are cumulative percentages of the selected devices, rising, the
	// last 100.
	Waves []int `json:"waves"`
	// MaxFailureRatio: more failures than this share of a wave's devices
	// halts the rollout.
	MaxFailureRatio float64 `json:"max_failure_ratio"`
	// MinSuccesses a wave needs before the next starts: commits by the
	// wave's own devices (verified ones with RequireVerified). A wave with
	// fewer devices needs all of them.
	MinSuccesses int `json:"min_successes"`
	// RequireVerified counts only verified commits (probation saw its
	// minimum requests) as successes.
	RequireVerified bool `json:"require_verified,omitempty"`
	// Probation, when set, is sent in every install command and overrides
	// the devices' own probation settings.
	Probation *protocol.Probation `json:"probation,omitempty"`
	// WaveTimeout, when positive, is how long a wave may wait for its
	// evidence; OnWaveTimeout (WaveTimeoutHalt or WaveTimeoutContinue) says
	// what happens then. Zero waits forever.
	WaveTimeout   time.Duration `json:"wave_timeout,omitempty"`
	OnWaveTimeout string        `json:"on_wave_timeout,omitempty"`
	// Bake is how long a finished wave is watched before the next starts.
	Bake    time.Duration `json:"bake"`
	State   RolloutState  `json:"state"`
	Wave    int           `json:"wave"` // index into Waves of the current wave
	Reason  string        `json:"reason,omitempty"`
	Created time.Time     `json:"created"`
	Updated time.Time     `json:"updated"`
	// WaveDone is when the current wave's devices all finished; zero while
	// they have not.
	WaveDone time.Time `json:"wave_done,omitzero"`
	// WaveStarted is when the current wave started (zero in rollouts stored
	// before it existed: Created stands in).
	WaveStarted time.Time `json:"wave_started,omitzero"`
	Finished    time.Time `json:"finished,omitzero"`
	// Decisions are the gate's decisions so far, oldest first, with the
	// evidence each one was taken on.
	Decisions []Decision `json:"decisions,omitempty"`
	// Rate limits how fast install commands go out; the zero Rate sends
	// as fast as the waves allow.
	Rate Rate `json:"rate,omitzero"`
	// Shadow and Canary are the trial phases each wave goes through before
	// its promotion (nil: none).
	Shadow *TrialPhase `json:"shadow,omitempty"`
	Canary *TrialPhase `json:"canary,omitempty"`
	// Analysis is the analysis config (the JSON of an analysis.Config)
	// that judges the phases and the waves; nil: no analysis.
	Analysis json.RawMessage `json:"analysis,omitempty"`
	// Phase is the current wave's phase (PhaseShadow .. PhaseWave; empty
	// in a rollout without phases or analysis), PhaseStarted when its
	// window started (zero while it waits for the devices to hold the
	// candidate).
	Phase        string    `json:"phase,omitempty"`
	PhaseStarted time.Time `json:"phase_started,omitzero"`
	// Analyses are the analysis reports so far (the JSON list of
	// analysis.Report), oldest first: the last one of each wave and phase.
	Analyses json.RawMessage `json:"analyses,omitempty"`
}

// TrialPhase is a shadow or canary phase: the share of the requests the
// candidate sees, and how long the phase's window lasts before its analysis.
type TrialPhase struct {
	Percent  float64       `json:"percent"`
	Duration time.Duration `json:"duration"`
}

// Phases of a rollout's wave.
const (
	PhaseShadow = "shadow" // trial devices hold the candidate in shadow
	PhaseCanary = "canary" // trial devices serve a share with it
	// PhasePromote: every device of the wave gets a plain install, judged
	// by the install gate.
	PhasePromote = "promote"
	// PhaseWave: the wave is promoted; its devices are compared with those
	// still on the baseline before the next wave.
	PhaseWave = "wave"
)

// Rate is a rollout's send rate: PerMinute devices a minute (0: no limit).
// With a ramp (Factor > 1 and Every > 0) the rate is multiplied by Factor
// every Every successes of the rollout, up to Max (0: no cap).
type Rate struct {
	PerMinute int     `json:"per_minute,omitempty"`
	Factor    float64 `json:"factor,omitempty"`
	Every     int     `json:"every,omitempty"`
	Max       int     `json:"max,omitempty"`
}

// What happens when a wave times out.
const (
	WaveTimeoutHalt     = "halt"
	WaveTimeoutContinue = "continue"
)

// Decision is one gate decision: a wave passed, timed out or failed.
type Decision struct {
	Time time.Time `json:"time"`
	// Wave is the index of the wave decided on.
	Wave int `json:"wave"`
	// Action: "passed", "completed", "timeout-continue", "timeout-halt",
	// "failed", "resumed"; in a rollout with phases also "<phase>-started",
	// "<phase>-skipped", "<phase>-pass", "<phase>-fail", "<phase>-paused"
	// and "promoted".
	Action string `json:"action"`
	// Successes and Needed are the evidence at the time: the wave's
	// successes and the successes it needed; Devices its devices.
	Successes int    `json:"successes"`
	Needed    int    `json:"needed"`
	Devices   int    `json:"devices"`
	Detail    string `json:"detail,omitempty"`
	// Phase is the wave's phase decided on (empty in a rollout without
	// phases); Verdict and Score the analysis's, for a decision taken on
	// one.
	Phase   string  `json:"phase,omitempty"`
	Verdict string  `json:"verdict,omitempty"`
	Score   float64 `json:"score,omitempty"`
}

// Assignment is one device's part in a rollout.
type Assignment struct {
	Rollout string `json:"rollout"`
	Device  string `json:"device"`
	Wave    int    `json:"wave"`
	// CommandID is the last install sent; Sent when.
	CommandID string    `json:"command_id,omitempty"`
	Sent      time.Time `json:"sent,omitzero"`
	Sends     int       `json:"sends"`
	// State is the last state the device acked; empty while none.
	State    protocol.UpdateState `json:"state,omitempty"`
	Progress int64                `json:"progress_bytes,omitempty"`
	Total    int64                `json:"total_bytes,omitempty"`
	Error    string               `json:"error,omitempty"`
	// Requests is how many requests probation saw (as the device last
	// reported); Verified is set when the device committed after probation
	// saw its minimum requests.
	Requests int64 `json:"probation_requests,omitempty"`
	Verified bool  `json:"verified,omitempty"`
	// Activated is set once the device reported an activated state, so a
	// rollback is owed if the rollout is undone.
	Activated bool      `json:"activated,omitempty"`
	Updated   time.Time `json:"updated,omitzero"`
	// AckTime is the device's time of the last ack applied; older acks
	// (reordered or repeated) are ignored.
	AckTime time.Time `json:"ack_time,omitzero"`
	// Undo records the rollback or abort command sent, if any; UndoDone is
	// set when the device answered it with a terminal state.
	Undo     protocol.CommandKind `json:"undo,omitempty"`
	UndoID   string               `json:"undo_id,omitempty"`
	UndoSent time.Time            `json:"undo_sent,omitzero"`
	UndoDone bool                 `json:"undo_done,omitempty"`
	// Previous holds earlier command ids of this assignment (at most 8), so
	// a late ack to a command that was sent again still counts.
	Previous []string `json:"previous_commands,omitempty"`
	// Trial is the mode of the last install sent (protocol.TrialShadow or
	// TrialCanary), empty for a plain install.
	Trial protocol.TrialMode `json:"trial,omitempty"`
	// Baseline is the version the device served when it was assigned, set
	// only for a device that takes trials: such a device goes through the
	// wave's shadow and canary phases; the others wait for its promotion.
	Baseline int64 `json:"baseline,omitempty"`
}

// Remember keeps id among the assignment's earlier command ids.
func (a *Assignment) Remember(id string) {
	if id == "" {
		return
	}
	a.Previous = append(a.Previous, id)
	if len(a.Previous) > 8 {
		a.Previous = a.Previous[len(a.Previous)-8:]
	}
}

// Known reports whether id is one of the assignment's commands.
func (a *Assignment) Known(id string) bool {
	if id == a.CommandID || id == a.UndoID {
		return true
	}
	for _, p := range a.Previous {
		if p == id {
			return true
		}
	}
	return false
}

const rolloutCols = `id, model, version, selector, waves, max_failure_ratio, min_successes, require_verified, probation, wave_timeout,
	on_wave_timeout, bake, state, wave, reason, created, updated, wave_done, wave_started, finished, decisions,
	rate_per_minute, rate_factor, rate_every, rate_max, shadow, canary, analysis, phase, phase_started, analyses`

// raw is a JSON column read into a json.RawMessage: null is nil.
func raw(b []byte) json.RawMessage {
	if len(b) == 0 || string(b) == "null" {
		return nil
	}
	return append(json.RawMessage(nil), b...)
}

// rawText is a json.RawMessage as a column: nil is null.
func rawText(m json.RawMessage) string {
	if len(m) == 0 {
		return "null"
	}
	return string(m)
}

func scanRollout(s scanner) (*Rollout, error) {
	var ro Rollout
	var selector, waves, probation, decisions, shadow, canary, analysis, analyses []byte
	var waveTimeout, bake, created, updated, waveDone, waveStarted, finished, phaseStarted int64
	if err := s.Scan(&ro.ID, &ro.Model, &ro.Version, &selector, &waves, &ro.MaxFailureRatio, &ro.MinSuccesses, &ro.RequireVerified,
		&probation, &waveTimeout, &ro.OnWaveTimeout, &bake, &ro.State, &ro.Wave, &ro.Reason, &created, &updated, &waveDone,
		&waveStarted, &finished, &decisions, &ro.Rate.PerMinute, &ro.Rate.Factor, &ro.Rate.Every, &ro.Rate.Max,
		&shadow, &canary, &analysis, &ro.Phase, &phaseStarted, &analyses); err != nil {
		return nil, notFound(err)
	}
	ro.WaveTimeout, ro.Bake = time.Duration(waveTimeout), time.Duration(bake)
	ro.Created, ro.Updated, ro.WaveDone, ro.WaveStarted, ro.Finished = fromTS(created), fromTS(updated), fromTS(waveDone), fromTS(waveStarted), fromTS(finished)
	ro.PhaseStarted = fromTS(phaseStarted)
	ro.Analysis, ro.Analyses = raw(analysis), raw(analyses)
	for _, f := range []struct {
		b []byte
		v any
	}{{selector, &ro.Selector}, {waves, &ro.Waves}, {probation, &ro.Probation}, {decisions, &ro.Decisions}, {shadow, &ro.Shadow}, {canary, &ro.Canary}} {
		if err := unjs(f.b, f.v); err != nil {
			return nil, fmt.Errorf("rollout %s: %w", ro.ID, err)
		}
	}
	return &ro, nil
}

func (r *Registry) putRollout(tx *sql.Tx, ro *Rollout) error {
	_, err := r.exec(tx, `INSERT INTO rollouts (`+rolloutCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
			?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET model = excluded.model, version = excluded.version, selector = excluded.selector,
			waves = excluded.waves, max_failure_ratio = excluded.max_failure_ratio, min_successes = excluded.min_successes,
			require_verified = excluded.require_verified, probation = excluded.probation, wave_timeout = excluded.wave_timeout,
			on_wave_timeout = excluded.on_wave_timeout, bake = excluded.bake, state = excluded.state, wave = excluded.wave,
			reason = excluded.reason, created = excluded.created, updated = excluded.updated, wave_done = excluded.wave_done,
			wave_started = excluded.wave_started, finished = excluded.finished, decisions = excluded.decisions,
			rate_per_minute = excluded.rate_per_minute, rate_factor = excluded.rate_factor, rate_every = excluded.rate_every,
			rate_max = excluded.rate_max, shadow = excluded.shadow, canary = excluded.canary, analysis = excluded.analysis,
			phase = excluded.phase, phase_started = excluded.phase_started, analyses = excluded.analyses`,
		ro.ID, ro.Model, ro.Version, js(ro.Selector), js(ro.Waves), ro.MaxFailureRatio, ro.MinSuccesses, ro.RequireVerified,
		js(ro.Probation), int64(ro.WaveTimeout), ro.OnWaveTimeout, int64(ro.Bake), string(ro.State), ro.Wave, ro.Reason,
		ts(ro.Created), ts(ro.Updated), ts(ro.WaveDone), ts(ro.WaveStarted), ts(ro.Finished), js(ro.Decisions),
		ro.Rate.PerMinute, ro.Rate.Factor, ro.Rate.Every, ro.Rate.Max,
		js(ro.Shadow), js(ro.Canary), rawText(ro.Analysis), ro.Phase, ts(ro.PhaseStarted), rawText(ro.Analyses))
	return err
}

// PutRollout stores r (new or changed).
func (r *Registry) PutRollout(ro *Rollout) error {
	if err := r.write(func(tx *sql.Tx) error { return r.putRollout(tx, ro) }); err != nil {
		return fmt.Errorf("registry: rollout %s: %w", ro.ID, err)
	}
	return nil
}

// UpdateRollout applies fn to a stored rollout in one transaction holding
// its row; fn may return an error to leave it unchanged, and may run more
// than once.
func (r *Registry) UpdateRollout(id string, fn func(ro *Rollout) error) (*Rollout, error) {
	return r.UpdateRolloutAudited(id, fn, nil)
}

// UpdateRolloutAudited is UpdateRollout that also appends, in the same
// transaction, audit(ro, d) to the audit log for every decision d that fn
// added (none when audit is nil): a decision is in the rollout and in the
// log, or in neither.
func (r *Registry) UpdateRolloutAudited(id string, fn func(ro *Rollout) error, audit func(ro *Rollout, d *Decision) AuditRecord) (*Rollout, error) {
	var ro *Rollout
	err := r.write(func(tx *sql.Tx) error {
		var err error
		if ro, err = scanRollout(tx.QueryRow(r.q(`SELECT `+rolloutCols+` FROM rollouts WHERE id = ?`+r.eng.forUpdate), id)); err != nil {
			return err
		}
		before := len(ro.Decisions)
		if err := fn(ro); err != nil {
			return err
		}
		ro.ID = id
		if err := r.putRollout(tx, ro); err != nil {
			return err
		}
		for i := before; audit != nil && i < len(ro.Decisions); i++ {
			rec := audit(ro, &ro.Decisions[i])
			if rec.Time.IsZero() {
				rec.Time = time.Now()
			}
			rec.Time = rec.Time.UTC()
			if err := r.appendAudit(tx, &rec); err != nil {
				return fmt.Errorf("audit: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("registry: rollout %s: %w", id, err)
	}
	return ro, nil
}

// Rollout returns one rollout.
func (r *Registry) Rollout(id string) (*Rollout, error) {
	ro, err := scanRollout(r.r.QueryRow(r.q(`SELECT `+rolloutCols+` FROM rollouts WHERE id = ?`), id))
	if err != nil {
		return nil, fmt.Errorf("registry: rollout %s: %w", id, err)
	}
	return ro, nil
}

// Rollouts lists every rollout, oldest first.
func (r *Registry) Rollouts() ([]Rollout, error) {
	out, err := queryAll(r.r, `SELECT `+rolloutCols+` FROM rollouts ORDER BY created, id`, nil, scanRollout)
	if err != nil {
		return nil, fmt.Errorf("registry: rollouts: %w", err)
	}
	return out, nil
}

// RolloutsIn lists the rollouts in any of states, oldest first (an indexed
// query: the engine need not read finished rollouts).
func (r *Registry) RolloutsIn(states ...RolloutState) ([]Rollout, error) {
	if len(states) == 0 {
		return nil, nil
	}
	q := `SELECT ` + rolloutCols + ` FROM rollouts WHERE state IN (?` + strings.Repeat(", ?", len(states)-1) + `) ORDER BY created, id`
	args := make([]any, len(states))
	for i, s := range states {
		args[i] = string(s)
	}
	out, err := queryAll(r.r, r.q(q), args, scanRollout)
	if err != nil {
		return nil, fmt.Errorf("registry: rollouts: %w", err)
	}
	return out, nil
}

const assignmentCols = `rollout, device, wave, command_id, sent, sends, state, progress, total, error, requests, verified,
	activated, updated, ack_time, undo, undo_id, undo_sent, undo_done, previous, trial, baseline`

func scanAssignment(s scanner) (*Assignment, error) {
	var a Assignment
	var sent, updated, ackTime, undoSent int64
	var previous []byte
	if err := s.Scan(&a.Rollout, &a.Device, &a.Wave, &a.CommandID, &sent, &a.Sends, &a.State, &a.Progress, &a.Total, &a.Error,
		&a.Requests, &a.Verified, &a.Activated, &updated, &ackTime, &a.Undo, &a.UndoID, &undoSent, &a.UndoDone, &previous,
		&a.Trial, &a.Baseline); err != nil {
		return nil, notFound(err)
	}
	a.Sent, a.Updated, a.AckTime, a.UndoSent = fromTS(sent), fromTS(updated), fromTS(ackTime), fromTS(undoSent)
	if err := unjs(previous, &a.Previous); err != nil {
		return nil, fmt.Errorf("assignment %s/%s: %w", a.Rollout, a.Device, err)
	}
	return &a, nil
}

func (r *Registry) putAssignment(tx *sql.Tx, a *Assignment) error {
	_, err := r.exec(tx, `INSERT INTO assignments (`+assignmentCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (rollout, device) DO UPDATE SET wave = excluded.wave, command_id = excluded.command_id, sent = excluded.sent,
			sends = excluded.sends, state = excluded.state, progress = excluded.progress, total = excluded.total,
			error = excluded.error, requests = excluded.requests, verified = excluded.verified, activated = excluded.activated,
			updated = excluded.updated, ack_time = excluded.ack_time, undo = excluded.undo, undo_id = excluded.undo_id,
			undo_sent = excluded.undo_sent, undo_done = excluded.undo_done, previous = excluded.previous,
			trial = excluded.trial, baseline = excluded.baseline`,
		a.Rollout, a.Device, a.Wave, a.CommandID, ts(a.Sent), a.Sends, string(a.State), a.Progress, a.Total, a.Error,
		a.Requests, a.Verified, a.Activated, ts(a.Updated), ts(a.AckTime), string(a.Undo), a.UndoID, ts(a.UndoSent), a.UndoDone,
		js(a.Previous), string(a.Trial), a.Baseline)
	return err
}

// errNoChange ends a transaction whose callback chose to store nothing.
var errNoChange = errors.New("registry: no change")

// UpdateAssignment applies fn to the (rollout, device) assignment, creating
// it when missing if create is set; fn returns false to store nothing. It
// runs in one transaction holding the row; fn may run more than once.
func (r *Registry) UpdateAssignment(rollout, device string, create bool, fn func(a *Assignment) bool) (*Assignment, error) {
	var a *Assignment
	err := r.write(func(tx *sql.Tx) error {
		if create {
			// A row to lock; rolled back with the rest if fn stores nothing.
			if _, err := r.exec(tx, `INSERT INTO assignments (rollout, device) VALUES (?, ?) ON CONFLICT (rollout, device) DO NOTHING`, rollout, device); err != nil {
				return err
			}
		}
		var err error
		a, err = scanAssignment(tx.QueryRow(r.q(`SELECT `+assignmentCols+` FROM assignments WHERE rollout = ? AND device = ?`+r.eng.forUpdate), rollout, device))
		if err != nil {
			return err
		}
		if !fn(a) {
			return errNoChange
		}
		a.Rollout, a.Device = rollout, device
		return r.putAssignment(tx, a)
	})
	if errors.Is(err, errNoChange) {
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("registry: assignment %s/%s: %w", rollout, device, err)
	}
	return a, nil
}

// Assignments lists a rollout's assignments by device.
func (r *Registry) Assignments(rollout string) ([]Assignment, error) {
	out, err := queryAll(r.r, r.q(`SELECT `+assignmentCols+` FROM assignments WHERE rollout = ? ORDER BY device`), []any{rollout}, scanAssignment)
	if err != nil {
		return nil, fmt.Errorf("registry: assignments of %s: %w", rollout, err)
	}
	return out, nil
}

// AssignmentsIn lists a rollout's assignments whose last acked state is
// one of states ("" for none yet), by device: an indexed query.
func (r *Registry) AssignmentsIn(rollout string, states ...protocol.UpdateState) ([]Assignment, error) {
	if len(states) == 0 {
		return nil, nil
	}
	args := []any{rollout}
	for _, s := range states {
		args = append(args, string(s))
	}
	q := `SELECT ` + assignmentCols + ` FROM assignments WHERE rollout = ? AND state IN (?` + strings.Repeat(", ?", len(states)-1) + `) ORDER BY device`
	out, err := queryAll(r.r, r.q(q), args, scanAssignment)
	if err != nil {
		return nil, fmt.Errorf("registry: assignments of %s: %w", rollout, err)
	}
	return out, nil
}

// Assignment returns the (rollout, device) assignment, or ErrNotFound.
func (r *Registry) Assignment(rollout, device string) (*Assignment, error) {
	a, err := scanAssignment(r.r.QueryRow(r.q(`SELECT `+assignmentCols+` FROM assignments WHERE rollout = ? AND device = ?`), rollout, device))
	if err != nil {
		return nil, fmt.Errorf("registry: assignment %s/%s: %w", rollout, device, err)
	}
	return a, nil
}
