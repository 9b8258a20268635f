package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
)

// Phases of a wave (docs/API.md, Rollouts). A rollout with a shadow or a
// canary phase takes each wave through them before its promotion:
//
//	shadow  -> devices that take trials (status features "trial") and serve
//	           a version of the model get the install with trial shadow;
//	           the others are held (no command). Once every online trial
//	           device answered (shadow, or failed) and at least one holds the
//	           candidate, the phase's window starts (PhaseStarted); after
//	           its duration the analysis judges [PhaseStarted, now].
//	canary  -> the same devices get the install again with trial canary
//	           (a new command id); the same window and analysis.
//	promote -> every device of the wave gets the plain install; the install
//	           gate (successes, failures, bake) as in a rollout without
//	           phases.
//	wave    -> with an analysis config and devices left on the baseline: the
//	           wave's devices against those, over [promotion done, + window].
//
// A verdict of pass moves to the next phase (or wave); fail halts the
// rollout, which aborts every trial and rolls back every activated device;
// wait (too little evidence) and marginal analyse again (every
// Options.AnalyzeEvery) until the config's MaxWait after the window's end,
// then wait pauses the rollout for the operator and marginal fails it. A
// wave whose devices take no trials skips to its promotion. Every
// transition is a Decision of the rollout and a record of the audit log
// (actor system, name rollout), with its numbers; each analysis report is
// kept in the rollout (the last one per wave and phase).
//
// All of it is in the store (phase, phase_started, analyses), so a new
// leader carries on the phase where the old one was.

// Analyzer judges a candidate against its baseline over a window
// (*analysis.Analyzer). It must be safe for concurrent use. A report's
// Verdict is pass, marginal, fail or wait (too little evidence); an error
// is taken as a wait, so an analyzer that keeps failing pauses the rollout
// after MaxWait rather than passing it.
type Analyzer interface {
	Analyze(ctx context.Context, req analysis.Request) (analysis.Report, error)
}

// hasPhases reports whether ro goes through phases or analyses at all.
func hasPhases(ro *registry.Rollout) bool {
	return ro.Shadow != nil || ro.Canary != nil || ro.Analysis != nil
}

// firstPhase is the phase a wave of ro starts in.
func firstPhase(ro *registry.Rollout) string {
	switch {
	case ro.Shadow != nil:
		return registry.PhaseShadow
	case ro.Canary != nil:
		return registry.PhaseCanary
	case ro.Analysis != nil:
		return registry.PhasePromote
	}
	return ""
}

// nextPhase follows phase p of ro within a wave.
func nextPhase(ro *registry.Rollout, p string) string {
	if p == registry.PhaseShadow && ro.Canary != nil {
		return registry.PhaseCanary
	}
	return registry.PhasePromote
}

// trialPhase returns the settings and trial of phase p of ro, or nil.
func trialPhase(ro *registry.Rollout, p string) (*registry.TrialPhase, *protocol.Trial) {
	switch {
	case p == registry.PhaseShadow && ro.Shadow != nil:
		return ro.Shadow, &protocol.Trial{Mode: protocol.TrialShadow, Percent: ro.Shadow.Percent}
	case p == registry.PhaseCanary && ro.Canary != nil:
		return ro.Canary, &protocol.Trial{Mode: protocol.TrialCanary, Percent: ro.Canary.Percent}
	}
	return nil, nil
}

// config decodes ro's analysis config (the zero Config without one).
func config(ro *registry.Rollout) analysis.Config {
	var c analysis.Config
	if len(ro.Analysis) > 0 {
		_ = json.Unmarshal(ro.Analysis, &c) // written by Create from a Config
	}
	return c
}

// Analyses decodes ro's analysis reports, oldest first.
func Analyses(ro *registry.Rollout) []analysis.Report {
	var out []analysis.Report
	if len(ro.Analyses) > 0 {
		_ = json.Unmarshal(ro.Analyses, &out) // written by the engine
	}
	return out
}

// checkPhases validates spec's phases and analysis, taking the default
// analysis config when it has phases but no config.
func (e *Engine) checkPhases(spec *Spec) error {
	for _, p := range []struct {
		name string
		ph   *registry.TrialPhase
	}{{"shadow", spec.Shadow}, {"canary", spec.Canary}} {
		if p.ph == nil {
			continue
		}
		if !(p.ph.Percent > 0 && p.ph.Percent <= 100) {
			return fmt.Errorf("%w: %s %v%%: want above 0 and at most 100", ErrInvalid, p.name, p.ph.Percent)
		}
		if p.ph.Duration < time.Second {
			return fmt.Errorf("%w: %s for %s: want at least a second", ErrInvalid, p.name, p.ph.Duration)
		}
	}
	phases := spec.Shadow != nil || spec.Canary != nil
	if spec.Analysis == nil && phases {
		if e.opts.DefaultAnalysis == nil {
			return fmt.Errorf("%w: shadow and canary phases need an analysis config, and this controller has no default", ErrInvalid)
		}
		c := *e.opts.DefaultAnalysis
		spec.Analysis = &c
	}
	if spec.Analysis == nil {
		return nil
	}
	if e.opts.Analyzer == nil {
		return fmt.Errorf("%w: this controller has no analyzer: rollouts with shadow, canary or analysis cannot run", ErrInvalid)
	}
	c := spec.Analysis.WithDefaults()
	if err := c.Validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	spec.Analysis = &c
	// A trial's command must outlive its phases (commandTTL), and no
	// device takes a command meant to live longer than MaxCommandLifetime.
	if phases {
		ttl := e.opts.CommandTTL + 2*c.MaxWait
		for _, p := range []*registry.TrialPhase{spec.Shadow, spec.Canary} {
			if p != nil {
				ttl += p.Duration
			}
		}
		if ttl > protocol.MaxCommandLifetime {
			return fmt.Errorf("%w: the trial commands would have to live %s (command ttl %s, the phases, and twice max_wait %s); devices take commands of at most %s",
				ErrInvalid, ttl, e.opts.CommandTTL, c.MaxWait, protocol.MaxCommandLifetime)
		}
	}
	return nil
}

// trialBaseline is the version device d serves that a trial of ro would
// compare with, or 0 when d gets only the plain install (no trial phases,
// an agent without trials, nothing of the model served).
func trialBaseline(ro *registry.Rollout, d *registry.Device) int64 {
	if ro.Shadow == nil && ro.Canary == nil || d == nil || !d.Supports(protocol.FeatureTrial) {
		return 0
	}
	if v := d.Running(ro.Model); v != ro.Version {
		return v
	}
	return 0
}

// want says what assignment a of ro should have been sent now: hold (no
// command yet: a device without trials in a trial phase), or an install
// with trial tr (nil: the plain install).
func want(ro *registry.Rollout, wave int, baseline int64) (hold bool, tr *protocol.Trial) {
	if ro.State == registry.RolloutCompleted || wave != ro.Wave {
		return false, nil
	}
	if _, tr := trialPhase(ro, ro.Phase); tr != nil {
		if baseline == 0 {
			return true, nil
		}
		return false, tr
	}
	return false, nil
}

// commandTTL is how long an install with trial tr stays valid: a trial
// must outlast its phase, the wait for its devices before the window and
// the analysis's wait for evidence after it (MaxWait each).
func (e *Engine) commandTTL(ro *registry.Rollout, tr *protocol.Trial) time.Duration {
	ttl := e.opts.CommandTTL
	if tr == nil {
		return ttl
	}
	for _, p := range []*registry.TrialPhase{ro.Shadow, ro.Canary} {
		if p != nil {
			ttl += p.Duration
		}
	}
	return ttl + 2*config(ro).MaxWait
}

// trialEvidence is where a wave's trial devices are in a trial phase.
type trialEvidence struct {
	devices, holding, onWay, offline, failed int
	// ids are the devices holding the candidate; baseline the version most
	// of them serve beside it.
	ids      []string
	baseline int64
}

func (tv trialEvidence) String() string {
	s := fmt.Sprintf("%d of %d trial devices hold the candidate", tv.holding, tv.devices)
	if tv.onWay > 0 {
		s += fmt.Sprintf(", %d on their way", tv.onWay)
	}
	if tv.offline > 0 {
		s += fmt.Sprintf(", %d offline", tv.offline)
	}
	if tv.failed > 0 {
		s += fmt.Sprintf(", %d failed", tv.failed)
	}
	return s
}

// weighTrial counts the trial devices of ro's current wave in its phase.
func weighTrial(ro *registry.Rollout, as func(yield func(*registry.Assignment) bool), online func(string) bool) trialEvidence {
	var tv trialEvidence
	_, tr := trialPhase(ro, ro.Phase)
	if tr == nil {
		return tv
	}
	bases := map[int64]int{}
	for a := range as {
		if a.Wave != ro.Wave || a.Baseline == 0 {
			continue
		}
		tv.devices++
		switch {
		case a.State == tr.State() && a.Trial == tr.Mode:
			tv.holding++
			tv.ids = append(tv.ids, a.Device)
			bases[a.Baseline]++
		case a.State.Terminal():
			tv.failed++
		case !online(a.Device):
			tv.offline++
		default:
			tv.onWay++
		}
	}
	sort.Strings(tv.ids)
	tv.baseline = mostCommon(bases)
	return tv
}

// mostCommon returns the version counted most often (the lowest of a tie).
func mostCommon(n map[int64]int) int64 {
	var best int64
	for v, c := range n {
		if best == 0 || c > n[best] || (c == n[best] && v < best) {
			best = v
		}
	}
	return best
}

func (t *tracked) assignments(yield func(*registry.Assignment) bool) {
	for _, en := range t.as {
		if !yield(&en.a) {
			return
		}
	}
}

// waveWindow is how long a wave's devices are watched after its promotion
// before the wave analysis: the bake time, or the longest trial phase, or
// a minute.
func waveWindow(ro *registry.Rollout) time.Duration {
	w := ro.Bake
	for _, p := range []*registry.TrialPhase{ro.Shadow, ro.Canary} {
		if w <= 0 && p != nil {
			w = max(w, p.Duration)
		}
	}
	if w <= 0 {
		w = time.Minute
	}
	return w
}

// waveRequest is the wave analysis of ro's current wave: its committed
// devices against the devices not yet in the rollout that serve the
// baseline. ok is false when there is nothing to compare with (no analysis,
// the last wave, no device left on a baseline).
func (e *Engine) waveRequest(t *tracked, from, to time.Time) (analysis.Request, bool) {
	ro, x := t.ro, e.idx
	if ro.Analysis == nil || ro.Wave >= len(ro.Waves)-1 {
		return analysis.Request{}, false
	}
	bases := map[int64]int{}
	for _, p := range t.pending {
		if d := x.devs[p.id]; d != nil {
			if v := d.Running(ro.Model); v != 0 && v != ro.Version {
				bases[v]++
			}
		}
	}
	base := mostCommon(bases)
	if base == 0 {
		return analysis.Request{}, false
	}
	req := analysis.Request{Phase: analysis.PhaseWave, Model: ro.Model, Baseline: base, Candidate: ro.Version,
		From: from, To: to, Config: config(ro)}
	for _, p := range t.pending {
		if d := x.devs[p.id]; d != nil && d.Running(ro.Model) == base {
			req.BaselineDevices = append(req.BaselineDevices, p.id)
		}
	}
	for a := range t.assignments {
		if a.Wave == ro.Wave && a.State == protocol.UpdateCommitted {
			req.Devices = append(req.Devices, a.Device)
		}
	}
	sort.Strings(req.BaselineDevices)
	sort.Strings(req.Devices)
	return req, true
}

// phaseGate checks the current wave's phase of a running rollout with
// phases: the install gate in promotion, the trial and wave phases' windows
// and analyses otherwise.
func (e *Engine) phaseGate(ctx context.Context, t *tracked) error {
	ro := t.ro
	switch ro.Phase {
	case registry.PhaseShadow, registry.PhaseCanary:
	case registry.PhaseWave:
		return e.wavePhase(ctx, t)
	default:
		return e.gate(t)
	}
	now := e.opts.Now().UTC()
	ev := evidenceOf(ro, t.ts, ro.Wave)
	if halted, err := e.failureGate(t, ev, now); halted || err != nil {
		return err
	}
	ph, tr := trialPhase(ro, ro.Phase)
	tv := weighTrial(ro, t.assignments, e.idx.online)
	if tv.devices == 0 || (ro.PhaseStarted.IsZero() && tv.devices == tv.failed) {
		// Nothing of the wave takes trials (or every trial failed, and the
		// failure gate let it be): on to the promotion, once the wave has
		// its devices.
		if Quota(ro.Waves[ro.Wave], len(t.targeted)) > t.have && len(t.pending) > 0 {
			return nil
		}
		next := nextPhase(ro, ro.Phase)
		why := fmt.Sprintf("none of its %d devices takes trials with a serving version", ev.devices)
		if tv.devices > 0 {
			why = fmt.Sprintf("every one of its %d trial devices failed the trial", tv.devices)
		}
		d := &registry.Decision{Time: now, Wave: ro.Wave, Phase: ro.Phase, Action: ro.Phase + "-skipped", Devices: ev.devices,
			Detail: fmt.Sprintf("wave %d %s skipped: %s", ro.Wave+1, ro.Phase, why)}
		return e.movePhase(t, d, nil, func(cur *registry.Rollout) { cur.Phase, cur.PhaseStarted = next, time.Time{} })
	}
	if ro.PhaseStarted.IsZero() {
		// Offline devices do not hold the phase; the others must answer,
		// for at most the config's MaxWait since the phase began: then the
		// window starts with the devices holding the candidate (a late one
		// joins the analysis when it arrives), or, with none, the rollout
		// pauses for the operator.
		wait := config(ro).MaxWait
		late := !now.Before(phaseEntered(ro).Add(wait))
		switch {
		case tv.holding > 0 && (tv.onWay == 0 || late):
		case tv.holding == 0 && late:
			reason := fmt.Sprintf("wave %d %s: no trial device holds the candidate %s after the phase began (%s), paused for the operator",
				ro.Wave+1, ro.Phase, wait, tv)
			d := &registry.Decision{Time: now, Wave: ro.Wave, Phase: ro.Phase, Action: ro.Phase + "-paused", Devices: tv.devices, Detail: reason}
			return e.movePhase(t, d, nil, func(cur *registry.Rollout) { cur.State, cur.Reason = registry.RolloutPaused, reason })
		default:
			return nil
		}
		d := &registry.Decision{Time: now, Wave: ro.Wave, Phase: ro.Phase, Action: ro.Phase + "-started", Devices: tv.devices, Successes: tv.holding,
			Detail: fmt.Sprintf("wave %d %s (%g%% of requests) started for %s: %s", ro.Wave+1, ro.Phase, tr.Percent, ph.Duration, tv)}
		return e.movePhase(t, d, nil, func(cur *registry.Rollout) { cur.PhaseStarted = now })
	}
	end := ro.PhaseStarted.Add(ph.Duration)
	if now.Before(end) {
		return nil
	}
	req := analysis.Request{Phase: analysis.Phase(ro.Phase), Model: ro.Model, Baseline: tv.baseline, Candidate: ro.Version,
		Devices: tv.ids, From: ro.PhaseStarted, To: now, Config: config(ro)}
	next := nextPhase(ro, ro.Phase)
	return e.judge(ctx, t, req, end, func(cur *registry.Rollout) { cur.Phase, cur.PhaseStarted = next, time.Time{} })
}

// phaseEntered is when ro's current wave entered its phase, or the
// operator last resumed it: the wave's start or its latest decision.
func phaseEntered(ro *registry.Rollout) time.Time {
	at := waveStart(ro)
	for _, d := range ro.Decisions {
		if d.Wave == ro.Wave && d.Time.After(at) {
			at = d.Time
		}
	}
	return at
}

// wavePhase runs the wave analysis of a promoted wave.
func (e *Engine) wavePhase(ctx context.Context, t *tracked) error {
	ro := t.ro
	now := e.opts.Now().UTC()
	ev := evidenceOf(ro, t.ts, ro.Wave)
	if halted, err := e.failureGate(t, ev, now); halted || err != nil {
		return err
	}
	end := ro.PhaseStarted.Add(waveWindow(ro))
	if now.Before(end) {
		return nil
	}
	advance := func(cur *registry.Rollout) {
		cur.Wave++
		cur.WaveDone, cur.WaveStarted = time.Time{}, now
		cur.Phase, cur.PhaseStarted = firstPhase(cur), time.Time{}
	}
	req, ok := e.waveRequest(t, ro.PhaseStarted, now)
	if !ok {
		d := ev.decision(now, "passed", fmt.Sprintf("wave %d analysis skipped: no device left on a baseline", ro.Wave+1))
		d.Phase = registry.PhaseWave
		return e.movePhase(t, d, nil, advance)
	}
	return e.judge(ctx, t, req, end, advance)
}

// failureGate halts ro when too many of its devices failed; halted
// reports whether it did.
func (e *Engine) failureGate(t *tracked, ev evidence, now time.Time) (halted bool, err error) {
	ro := t.ro
	if ev.totalFailed == 0 || float64(ev.totalFailed) <= ro.MaxFailureRatio*float64(ev.total) {
		return false, nil
	}
	reason := fmt.Sprintf("gate failed in wave %d (%d%%): %d of %d devices failed, more than %.0f%%",
		ro.Wave+1, ro.Waves[ro.Wave], ev.totalFailed, ev.total, ro.MaxFailureRatio*100)
	d := ev.decision(now, "failed", reason)
	d.Phase = ro.Phase
	if err := e.finish(ro.ID, registry.RolloutHalted, reason, d); err != nil {
		return false, err
	}
	e.Kick() // undo on the next step
	return true, nil
}

// judge analyses req (a phase whose window ended at end) and acts on the
// verdict: pass applies next; fail halts; wait and marginal wait for more
// evidence until the config's MaxWait after end (or after the operator
// resumed a rollout paused for it), then wait pauses and marginal fails.
func (e *Engine) judge(ctx context.Context, t *tracked, req analysis.Request, end time.Time, next func(cur *registry.Rollout)) error {
	ro := t.ro
	now := e.opts.Now().UTC()
	key := fmt.Sprintf("%s/%d/%s/%d", ro.ID, ro.Wave, ro.Phase, ro.PhaseStarted.UnixNano())
	if t.judged == key && now.Sub(t.judgedAt) < e.opts.AnalyzeEvery {
		return nil
	}
	rep, err := e.opts.Analyzer.Analyze(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		rep = analysis.Report{Verdict: analysis.Wait, Reason: "analysis failed: " + err.Error()}
	}
	switch rep.Verdict {
	case analysis.Pass, analysis.Fail, analysis.Marginal, analysis.Wait:
	default:
		rep.Reason = fmt.Sprintf("analysis gave verdict %q: taken as wait; %s", rep.Verdict, rep.Reason)
		rep.Verdict = analysis.Wait
	}
	t.judged, t.judgedAt = key, now
	rep.Phase, rep.Wave, rep.Model, rep.Baseline, rep.Candidate, rep.From, rep.To = req.Phase, ro.Wave, ro.Model, req.Baseline, req.Candidate, req.From, req.To
	wait := req.Config.MaxWait
	deadline := end.Add(wait)
	for _, d := range ro.Decisions {
		if d.Action == "resumed" && d.Wave == ro.Wave && d.Phase == ro.Phase && d.Time.Add(wait).After(deadline) {
			deadline = d.Time.Add(wait) // the operator gave it another wait
		}
	}
	late := !now.Before(deadline)
	w := ro.Wave + 1
	d := &registry.Decision{Time: now, Wave: ro.Wave, Phase: ro.Phase, Verdict: string(rep.Verdict), Score: rep.Score,
		Devices: len(req.Devices)}
	d.Action = ro.Phase + "-" + string(rep.Verdict)
	d.Detail = fmt.Sprintf("wave %d %s analysis: %s, score %.0f (%s)%s", w, ro.Phase, rep.Verdict, rep.Score, rep.Reason, metricsText(rep.Metrics))
	switch rep.Verdict {
	case analysis.Pass:
		e.log.Info("rollout phase passed", "rollout", ro.ID, "wave", w, "phase", ro.Phase, "score", rep.Score)
		return e.movePhase(t, d, &rep, next)
	case analysis.Fail:
		return e.halt(t, d, &rep, fmt.Sprintf("wave %d %s analysis failed: %s%s", w, ro.Phase, rep.Reason, failing(rep.Metrics)))
	case analysis.Marginal:
		if late {
			d.Action = ro.Phase + "-fail"
			return e.halt(t, d, &rep, fmt.Sprintf("wave %d %s analysis still marginal (score %.0f) %s after its window: %s%s",
				w, ro.Phase, rep.Score, wait, rep.Reason, failing(rep.Metrics)))
		}
	default:
		if late {
			reason := fmt.Sprintf("wave %d %s analysis has too little evidence %s after its window, paused for the operator: %s",
				w, ro.Phase, wait, rep.Reason)
			d.Action, d.Detail = ro.Phase+"-paused", reason
			return e.movePhase(t, d, &rep, func(cur *registry.Rollout) {
				cur.State, cur.Reason = registry.RolloutPaused, reason
			})
		}
	}
	// Keep the latest report; no decision yet.
	return e.movePhase(t, nil, &rep, nil)
}

// metricsText lists a report's metrics with their numbers.
func metricsText(ms []analysis.MetricResult) string {
	if len(ms) == 0 {
		return ""
	}
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = fmt.Sprintf("%s %s (baseline %.4g, candidate %.4g %s, n %d/%d)", m.Name, m.Verdict, m.Baseline, m.Candidate, m.Unit,
			m.BaselineN, m.CandidateN)
	}
	return ": " + strings.Join(parts, "; ")
}

// failing names a report's failing metrics with their numbers.
func failing(ms []analysis.MetricResult) string {
	var parts []string
	for _, m := range ms {
		if m.Verdict == analysis.Fail {
			parts = append(parts, fmt.Sprintf("%s (baseline %.4g, candidate %.4g %s)", m.Name, m.Baseline, m.Candidate, m.Unit))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "; failing: " + strings.Join(parts, ", ")
}

// maxReports bounds the reports kept in a rollout (the last of each wave
// and phase are kept; older ones go first).
const maxReports = 64

// keepReport adds rep to cur's reports, replacing the last one when it is
// of the same wave and phase and was not final (wait or marginal).
func keepReport(cur *registry.Rollout, rep *analysis.Report) {
	reps := Analyses(cur)
	if n := len(reps); n > 0 {
		l := reps[n-1]
		if l.Wave == rep.Wave && l.Phase == rep.Phase && (l.Verdict == analysis.Wait || l.Verdict == analysis.Marginal) {
			reps = reps[:n-1]
		}
	}
	reps = append(reps, *rep)
	if len(reps) > maxReports {
		reps = reps[len(reps)-maxReports:]
	}
	b, err := json.Marshal(reps)
	if err == nil {
		cur.Analyses = b
	}
}

// movePhase applies fn to the rollout if it is still running in the phase
// t saw, with the report rep and the decision d (both optional), d
// audited in the same transaction.
func (e *Engine) movePhase(t *tracked, d *registry.Decision, rep *analysis.Report, fn func(cur *registry.Rollout)) error {
	ro := t.ro
	now := e.opts.Now().UTC()
	cur, err := e.reg.UpdateRolloutAudited(ro.ID, func(cur *registry.Rollout) error {
		if cur.State != registry.RolloutRunning || cur.Wave != ro.Wave || cur.Phase != ro.Phase || !cur.PhaseStarted.Equal(ro.PhaseStarted) {
			return errNoChange
		}
		if rep != nil {
			keepReport(cur, rep)
		}
		if d != nil {
			cur.Decisions = append(cur.Decisions, *d)
		}
		if fn != nil {
			fn(cur)
		}
		cur.Updated = now
		return nil
	}, auditRecord)
	if err != nil {
		if errors.Is(err, errNoChange) {
			return nil
		}
		return err
	}
	t.ro = cur
	if d != nil {
		if cur.Phase != ro.Phase || cur.Wave != ro.Wave {
			t.recheck = true // the wave's devices are owed other commands
			e.log.Info("rollout phase", "rollout", cur.ID, "wave", cur.Wave+1, "phase", cur.Phase, "decision", d.Action)
		}
		if cur.State == registry.RolloutPaused {
			e.log.Warn("rollout paused", "rollout", cur.ID, "reason", cur.Reason)
		}
		e.Kick()
	}
	return nil
}

// halt ends the rollout on a failed analysis, keeping its report.
func (e *Engine) halt(t *tracked, d *registry.Decision, rep *analysis.Report, reason string) error {
	d.Detail = reason + " [" + d.Detail + "]"
	err := e.finishWith(t.ro.ID, registry.RolloutHalted, reason, d, func(cur *registry.Rollout) { keepReport(cur, rep) })
	if err == nil {
		e.Kick() // undo on the next step
	}
	return err
}

// auditRecord is decision d of ro as the fleet's audit log keeps it,
// written in the transaction that adds d (registry.UpdateRolloutAudited).
func auditRecord(ro *registry.Rollout, d *registry.Decision) registry.AuditRecord {
	detail := d.Detail
	if detail == "" {
		detail = fmt.Sprintf("wave %d %s: %d of %d successes needed, %d devices", d.Wave+1, d.Action, d.Successes, d.Needed, d.Devices)
	}
	return registry.AuditRecord{Time: d.Time, Actor: AuditActor, ActorName: AuditName, Method: "DECIDE",
		Path: "/v1/rollouts/" + ro.ID + "/" + d.Action, Detail: detail}
}

// The audit log's actor of the engine's decisions.
const (
	AuditActor = "system"
	AuditName  = "rollout"
)

// phaseWhy says, for a running rollout in a trial or wave phase, what it
// waits for; empty otherwise.
func phaseWhy(ro *registry.Rollout, tv trialEvidence, now time.Time) (why string, endsAt time.Time) {
	w := ro.Wave + 1
	ph, _ := trialPhase(ro, ro.Phase)
	switch {
	case ph != nil && ro.PhaseStarted.IsZero():
		by := phaseEntered(ro).Add(config(ro).MaxWait)
		return fmt.Sprintf("wave %d %s waits for its devices until %s at most: %s", w, ro.Phase, by.Format(time.RFC3339), tv), time.Time{}
	case ph != nil:
		endsAt = ro.PhaseStarted.Add(ph.Duration)
	case ro.Phase == registry.PhaseWave:
		endsAt = ro.PhaseStarted.Add(waveWindow(ro))
	default:
		return "", time.Time{}
	}
	if now.Before(endsAt) {
		return fmt.Sprintf("wave %d %s window until %s", w, ro.Phase, endsAt.Format(time.RFC3339)), endsAt
	}
	reps := Analyses(ro)
	if n := len(reps); n > 0 && reps[n-1].Wave == ro.Wave && string(reps[n-1].Phase) == ro.Phase {
		return fmt.Sprintf("wave %d %s analysis: %s (%s)", w, ro.Phase, reps[n-1].Verdict, reps[n-1].Reason), endsAt
	}
	return fmt.Sprintf("wave %d %s analysis due", w, ro.Phase), endsAt
}
