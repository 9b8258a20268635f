package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/require"
)

// scripted is an Analyzer that answers each phase with the verdicts it is
// given, in turn (the last one repeats), and records the requests: the
// engine's reaction to each verdict is what these tests judge. The real
// analyzer (fleet/analysis) is judged on real telemetry by its own tests
// and the end-to-end tests.
type scripted struct {
	mu       sync.Mutex
	verdicts map[analysis.Phase][]analysis.Verdict
	reqs     []analysis.Request
}

func (s *scripted) Analyze(_ context.Context, req analysis.Request) (analysis.Report, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, req)
	vs := s.verdicts[req.Phase]
	if len(vs) == 0 {
		return analysis.Report{}, fmt.Errorf("analysis: no verdict scripted for %s", req.Phase)
	}
	v := vs[0]
	if len(vs) > 1 {
		s.verdicts[req.Phase] = vs[1:]
	}
	if v == "" {
		return analysis.Report{}, errors.New("analysis: scripted error")
	}
	m := analysis.MetricResult{Name: analysis.MetricLatency, Critical: true, Weight: 1, Baseline: 2.5, Candidate: 2.5, Unit: "ms",
		BaselineN: 100, CandidateN: 100, Verdict: v}
	score := 100.0
	switch v {
	case analysis.Fail:
		m.Candidate, score = 5.5, 0
	case analysis.Marginal:
		m.Verdict, score = analysis.Pass, 80
	case analysis.Wait:
		m.CandidateN, score = 3, 0
	}
	return analysis.Report{Score: score, Verdict: v, Reason: "scripted " + string(v), Metrics: []analysis.MetricResult{m}}, nil
}

func (s *scripted) requests(p analysis.Phase) []analysis.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []analysis.Request
	for _, r := range s.reqs {
		if r.Phase == p {
			out = append(out, r)
		}
	}
	return out
}

var testConfig = analysis.Config{Confidence: 0.98, Pass: 95, Marginal: 75, MinRequests: 50, MaxWait: 30 * time.Minute}

// newPhaseFixture is a gate fixture whose devices serve face v1, those for
// which trial says so taking trials, with an engine holding an.
func newPhaseFixture(t *testing.T, devices int, trial func(i int) bool, an *scripted) *gateFixture {
	t.Helper()
	f := newGateFixture(t, devices)
	for i := range devices {
		_, err := f.reg.UpdateDevice(fmt.Sprintf("gw-%02d", i), func(d *registry.Device) {
			d.Models = []protocol.ModelStatus{{Name: "face", Version: 1}}
			if trial(i) {
				d.Features = []string{protocol.FeatureTrial}
			}
		})
		require.NoError(t, err)
	}
	var err error
	f.eng, err = New(Options{Registry: f.reg, Sender: f.rec, Fleet: "acme", Now: f.clock, Analyzer: an, AnalyzeEvery: time.Minute})
	require.NoError(t, err)
	return f
}

// ackAll acks each unfinished assignment's last command as a device that
// takes it would: shadow or canary for a trial, then st for a plain install.
func (f *gateFixture) ackAll(id string, st protocol.UpdateState) {
	f.t.Helper()
	as, err := f.reg.Assignments(id)
	require.NoError(f.t, err)
	for _, a := range as {
		if a.CommandID == "" || a.State.Terminal() {
			continue
		}
		s := st
		if a.Trial != "" {
			s = protocol.Trial{Mode: a.Trial}.State()
		}
		f.eng.HandleAck(a.Device, &protocol.Ack{CommandID: a.CommandID, RolloutID: id, State: s, Time: f.clock()})
	}
}

func (f *gateFixture) assignments(id string) []registry.Assignment {
	f.t.Helper()
	as, err := f.reg.Assignments(id)
	require.NoError(f.t, err)
	return as
}

func (f *gateFixture) installs(device string) []protocol.Command {
	f.rec.mu.Lock()
	defer f.rec.mu.Unlock()
	var out []protocol.Command
	for _, c := range f.rec.sent {
		if c.Device == device && c.Kind == protocol.CommandInstall {
			out = append(out, c)
		}
	}
	return out
}

func trialOf(c protocol.Command) string {
	if c.Install.Trial == nil {
		return "plain"
	}
	return fmt.Sprintf("%s %g", c.Install.Trial.Mode, c.Install.Trial.Percent)
}

// TestPhasesPassInOrder: every verdict passes. Each wave goes shadow,
// canary, promotion, wave analysis, in that order: the trial devices get
// the candidate in shadow then in canary (same rollout and version, new
// command ids), the device without trials nothing until the promotion,
// then everyone the plain install; each window is judged after its
// duration, over [phase start, now]; every decision is in the audit log.
func TestPhasesPassInOrder(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{
		analysis.PhaseShadow: {analysis.Pass}, analysis.PhaseCanary: {analysis.Pass}, analysis.PhaseWave: {analysis.Pass}}}
	f := newPhaseFixture(t, 10, func(i int) bool { return i != 3 }, an)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MaxFailureRatio: 0.1,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: 15 * time.Minute}, Canary: &registry.TrialPhase{Percent: 20, Duration: 10 * time.Minute},
		Analysis: &testConfig})
	require.NoError(t, err)
	require.Equal(t, registry.PhaseShadow, ro.Phase)
	f.step()
	wave1 := f.assignments(ro.ID)
	require.Len(t, wave1, 5)
	start := f.clock()
	trialDevs := 0
	for _, a := range wave1 {
		got := f.installs(a.Device)
		if a.Device == "gw-03" {
			require.Empty(t, got, "the device without trials is held in shadow")
			require.Zero(t, a.Baseline)
			continue
		}
		trialDevs++
		require.Len(t, got, 1, a.Device)
		require.Equal(t, "shadow 10", trialOf(got[0]))
		require.EqualValues(t, 1, a.Baseline)
		require.False(t, got[0].Expires.Before(start.Add(24*time.Hour+25*time.Minute+2*testConfig.MaxWait)),
			"a trial outlasts its phases and max_wait before and after each window: %s", got[0].Expires)
	}
	require.Positive(t, trialDevs)
	// The window starts once the trial devices hold the candidate.
	f.step()
	require.True(t, f.rollout(ro.ID).PhaseStarted.IsZero(), "window started before any device held the candidate")
	f.advance(time.Minute)
	f.ackAll(ro.ID, "")
	f.step()
	r := f.rollout(ro.ID)
	require.Equal(t, f.clock(), r.PhaseStarted)
	shadowStart := r.PhaseStarted
	f.advance(15*time.Minute - time.Second)
	f.step()
	require.Empty(t, an.requests(analysis.PhaseShadow), "analysed before the window's end")
	f.advance(time.Second)
	f.step()
	reqs := an.requests(analysis.PhaseShadow)
	require.Len(t, reqs, 1)
	require.Equal(t, shadowStart, reqs[0].From)
	require.Equal(t, f.clock(), reqs[0].To)
	require.EqualValues(t, 1, reqs[0].Baseline)
	require.EqualValues(t, 2, reqs[0].Candidate)
	require.Len(t, reqs[0].Devices, trialDevs)
	require.Equal(t, testConfig.WithDefaults(), reqs[0].Config)
	require.Equal(t, registry.PhaseCanary, f.rollout(ro.ID).Phase)
	// Canary: the same devices get the trial again, as canary.
	f.step()
	for _, a := range f.assignments(ro.ID) {
		got := f.installs(a.Device)
		if a.Device == "gw-03" {
			require.Empty(t, got)
			continue
		}
		require.Len(t, got, 2, a.Device)
		require.Equal(t, "canary 20", trialOf(got[1]))
		require.NotEqual(t, got[0].ID, got[1].ID)
	}
	f.ackAll(ro.ID, "")
	f.step()
	f.advance(10 * time.Minute)
	f.step()
	require.Len(t, an.requests(analysis.PhaseCanary), 1)
	require.Equal(t, registry.PhasePromote, f.rollout(ro.ID).Phase)
	// Promotion: every device of the wave gets the plain install.
	f.step()
	for _, a := range f.assignments(ro.ID) {
		got := f.installs(a.Device)
		require.NotEmpty(t, got, a.Device)
		require.Equal(t, "plain", trialOf(got[len(got)-1]), a.Device)
	}
	f.ackAll(ro.ID, protocol.UpdateCommitted)
	f.step() // wave done
	f.step() // promoted: wave analysis
	r = f.rollout(ro.ID)
	require.Equal(t, registry.PhaseWave, r.Phase)
	require.Equal(t, 0, r.Wave)
	f.advance(15 * time.Minute) // no bake: the longest phase is the window
	f.step()
	wreqs := an.requests(analysis.PhaseWave)
	require.Len(t, wreqs, 1)
	require.Len(t, wreqs[0].Devices, 5)
	require.Len(t, wreqs[0].BaselineDevices, 5)
	require.EqualValues(t, 1, wreqs[0].Baseline)
	r = f.rollout(ro.ID)
	require.Equal(t, 1, r.Wave)
	require.Equal(t, registry.PhaseShadow, r.Phase)
	// Wave 2 runs the same phases; the last wave has no wave analysis.
	f.step()
	f.ackAll(ro.ID, "")
	f.step()
	f.advance(15 * time.Minute)
	f.step()
	f.step()
	f.ackAll(ro.ID, "")
	f.step()
	f.advance(10 * time.Minute)
	f.step()
	f.step()
	f.ackAll(ro.ID, protocol.UpdateCommitted)
	f.step()
	f.step()
	r = f.rollout(ro.ID)
	require.Equal(t, registry.RolloutCompleted, r.State, "%+v", r.Decisions)
	var phases []string
	for _, rep := range Analyses(r) {
		require.Equal(t, analysis.Pass, rep.Verdict)
		phases = append(phases, fmt.Sprintf("%d %s", rep.Wave+1, rep.Phase))
	}
	require.Equal(t, []string{"1 shadow", "1 canary", "1 wave", "2 shadow", "2 canary"}, phases)
	var actions []string
	for _, d := range r.Decisions {
		actions = append(actions, fmt.Sprintf("%d %s", d.Wave+1, d.Action))
	}
	require.Equal(t, []string{"1 shadow-started", "1 shadow-pass", "1 canary-started", "1 canary-pass", "1 promoted", "1 wave-pass",
		"2 shadow-started", "2 shadow-pass", "2 canary-started", "2 canary-pass", "2 completed"}, actions)
	recs, err := f.reg.Audit(time.Time{}, 0)
	require.NoError(t, err)
	var audited []string
	for _, rec := range recs {
		require.Equal(t, AuditActor, rec.Actor)
		require.Equal(t, AuditName, rec.ActorName)
		require.NotEmpty(t, rec.Detail, rec.Path)
		audited = append(audited, rec.Path)
	}
	require.Len(t, audited, len(actions))
	require.Equal(t, "/v1/rollouts/"+ro.ID+"/shadow-pass", audited[1])
	require.Contains(t, recs[1].Detail, "latency pass (baseline 2.5, candidate 2.5 ms, n 100/100)")
	rep, err := f.eng.Status(ro.ID)
	require.NoError(t, err)
	require.Len(t, rep.Analyses, 5)
	require.Equal(t, "done", rep.Waves[1].Phase)
}

// phaseRollout creates a one-wave rollout of 6 trial devices with a shadow
// phase, acks the shadow and runs its window to its end.
func phaseRollout(t *testing.T, an *scripted) (*gateFixture, *registry.Rollout) {
	t.Helper()
	f := newPhaseFixture(t, 6, func(int) bool { return true }, an)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{50, 100}, MaxFailureRatio: 0.1,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: 15 * time.Minute}, Analysis: &testConfig})
	require.NoError(t, err)
	f.step()
	f.ackAll(ro.ID, "")
	f.step()
	require.False(t, f.rollout(ro.ID).PhaseStarted.IsZero())
	f.advance(15 * time.Minute)
	return f, ro
}

// TestPhaseShadowFailHalts: a failed shadow analysis halts the rollout
// with a reason naming the failing metric and its numbers, aborts the
// candidate on every device holding it, and promotes nothing.
func TestPhaseShadowFailHalts(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{analysis.PhaseShadow: {analysis.Fail}}}
	f, ro := phaseRollout(t, an)
	f.step()
	r := f.rollout(ro.ID)
	require.Equal(t, registry.RolloutHalted, r.State)
	require.Contains(t, r.Reason, "wave 1 shadow analysis failed")
	require.Contains(t, r.Reason, "latency (baseline 2.5, candidate 5.5 ms)")
	require.Len(t, Analyses(r), 1)
	require.Equal(t, analysis.Fail, Analyses(r)[0].Verdict)
	f.step() // undo
	as := f.assignments(ro.ID)
	require.Len(t, as, 3, "nothing beyond wave 1 was assigned")
	for _, a := range as {
		ab := f.rec.last(a.Device, protocol.CommandAbort)
		require.NotNil(t, ab, "%s holds the candidate: want an abort", a.Device)
		require.Nil(t, f.rec.last(a.Device, protocol.CommandRollback))
		for _, c := range f.installs(a.Device) {
			require.NotNil(t, c.Install.Trial, "%s got a plain install from a halted rollout", a.Device)
		}
		// The device discards the candidate and answers failed, aborted.
		f.eng.HandleAck(a.Device, &protocol.Ack{CommandID: ab.ID, RolloutID: ro.ID, State: protocol.UpdateFailed, Error: "aborted", Time: f.clock()})
	}
	f.step()
	n := len(f.rec.sent)
	f.step()
	require.Len(t, f.rec.sent, n, "the undo is answered: nothing more to send")
	recs, err := f.reg.Audit(time.Time{}, 0)
	require.NoError(t, err)
	last := recs[len(recs)-1]
	require.Equal(t, "/v1/rollouts/"+ro.ID+"/shadow-fail", last.Path)
	require.Contains(t, last.Detail, "latency fail (baseline 2.5, candidate 5.5 ms")
}

// TestPhaseWaitPausesAfterMaxWait: too little evidence never passes: the
// phase is analysed again until max_wait after its window, then the
// rollout pauses for the operator; a resume gives it another max_wait.
func TestPhaseWaitPausesAfterMaxWait(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{analysis.PhaseShadow: {analysis.Wait}}}
	f, ro := phaseRollout(t, an)
	for range 29 {
		f.step()
		r := f.rollout(ro.ID)
		require.Equal(t, registry.RolloutRunning, r.State)
		require.Equal(t, registry.PhaseShadow, r.Phase)
		f.advance(time.Minute)
	}
	require.Len(t, an.requests(analysis.PhaseShadow), 29, "analysed again every AnalyzeEvery")
	require.Len(t, Analyses(f.rollout(ro.ID)), 1, "the latest report of the phase, not one per analysis")
	f.advance(time.Minute)
	f.step()
	r := f.rollout(ro.ID)
	require.Equal(t, registry.RolloutPaused, r.State)
	require.Equal(t, registry.PhaseShadow, r.Phase)
	require.Contains(t, r.Reason, "too little evidence 30m0s after its window")
	rep, err := f.eng.Status(ro.ID)
	require.NoError(t, err)
	require.Contains(t, rep.Waiting, "wave 1 shadow analysis: wait")
	for _, a := range f.assignments(ro.ID) {
		for _, c := range f.installs(a.Device) {
			require.NotNil(t, c.Install.Trial, "a waiting phase promoted %s", a.Device)
		}
	}
	_, err = f.eng.Resume(ro.ID)
	require.NoError(t, err)
	f.advance(time.Minute)
	f.step()
	require.Equal(t, registry.RolloutRunning, f.rollout(ro.ID).State, "paused again at once after a resume")
	f.advance(30 * time.Minute)
	f.step()
	require.Equal(t, registry.RolloutPaused, f.rollout(ro.ID).State)
}

// TestPhaseMarginalFailsAtMaxWait: marginal keeps gathering evidence, and
// is a failure when max_wait has passed; an analyzer error is a wait.
func TestPhaseMarginalFailsAtMaxWait(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{analysis.PhaseShadow: {"", analysis.Marginal}}}
	f, ro := phaseRollout(t, an)
	f.step() // the scripted analyzer errs: a wait
	rep := Analyses(f.rollout(ro.ID))
	require.Len(t, rep, 1)
	require.Equal(t, analysis.Wait, rep[0].Verdict)
	require.Contains(t, rep[0].Reason, "analysis failed")
	an.mu.Lock()
	an.verdicts[analysis.PhaseShadow] = []analysis.Verdict{analysis.Marginal}
	an.mu.Unlock()
	for range 10 {
		f.advance(time.Minute)
		f.step()
		require.Equal(t, registry.RolloutRunning, f.rollout(ro.ID).State)
	}
	f.advance(20 * time.Minute)
	f.step()
	r := f.rollout(ro.ID)
	require.Equal(t, registry.RolloutHalted, r.State)
	require.Contains(t, r.Reason, "still marginal (score 80) 30m0s after its window")
	require.Equal(t, "shadow-fail", r.Decisions[len(r.Decisions)-1].Action)
}

// TestPhasesDevicesWithoutTrials: devices whose agent does not take trials
// and devices that serve no version of the model skip shadow and canary:
// the wave goes straight to its promotion, with plain installs only.
func TestPhasesDevicesWithoutTrials(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{analysis.PhaseWave: {analysis.Pass}}}
	f := newPhaseFixture(t, 6, func(i int) bool { return i%2 == 0 }, an)
	for i := 0; i < 6; i += 2 { // these take trials but serve nothing
		_, err := f.reg.UpdateDevice(fmt.Sprintf("gw-%02d", i), func(d *registry.Device) { d.Models = nil })
		require.NoError(t, err)
	}
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: time.Minute}, Canary: &registry.TrialPhase{Percent: 10, Duration: time.Minute},
		Analysis: &testConfig})
	require.NoError(t, err)
	f.step() // assign, held; shadow skipped
	f.step() // canary skipped
	f.step() // promote: plain installs
	r := f.rollout(ro.ID)
	require.Equal(t, registry.PhasePromote, r.Phase)
	require.Equal(t, "shadow-skipped", r.Decisions[0].Action)
	require.Equal(t, "canary-skipped", r.Decisions[1].Action)
	for _, a := range f.assignments(ro.ID) {
		got := f.installs(a.Device)
		require.Len(t, got, 1, a.Device)
		require.Equal(t, "plain", trialOf(got[0]))
	}
	f.ackAll(ro.ID, protocol.UpdateCommitted)
	f.step()
	f.step()
	require.Equal(t, registry.RolloutCompleted, f.rollout(ro.ID).State)
	require.Empty(t, an.requests(analysis.PhaseShadow))
	require.Empty(t, an.requests(analysis.PhaseCanary))
}

// TestPhaseOfflineDeviceDoesNotHold: a trial device that is offline does
// not hold the phase's start; one that is online and still working does.
func TestPhaseOfflineDeviceDoesNotHold(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{}}
	f := newPhaseFixture(t, 6, func(int) bool { return true }, an)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.5,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: time.Minute}, Analysis: &testConfig})
	require.NoError(t, err)
	f.step()
	as := f.assignments(ro.ID)
	f.setOnline(false, as[0].Device)
	for _, a := range as[2:] {
		f.eng.HandleAck(a.Device, &protocol.Ack{CommandID: a.CommandID, RolloutID: ro.ID, State: protocol.UpdateShadow, Time: f.clock()})
	}
	f.step()
	require.True(t, f.rollout(ro.ID).PhaseStarted.IsZero(), "started while %s, online, had not answered", as[1].Device)
	rep, err := f.eng.Status(ro.ID)
	require.NoError(t, err)
	require.Contains(t, rep.Waiting, "4 of 6 trial devices hold the candidate, 1 on their way, 1 offline")
	f.eng.HandleAck(as[1].Device, &protocol.Ack{CommandID: as[1].CommandID, RolloutID: ro.ID, State: protocol.UpdateShadow, Time: f.clock()})
	f.step()
	r := f.rollout(ro.ID)
	require.False(t, r.PhaseStarted.IsZero())
	require.Contains(t, r.Decisions[0].Detail, "5 of 6 trial devices hold the candidate, 1 offline")
}

// TestPhaseStuckDeviceHoldsAtMostMaxWait: a trial device that is online
// but never reaches shadow holds the window's start for max_wait from the
// phase's beginning, no longer: then the window starts with the devices
// holding the candidate. With none holding it by then the rollout pauses
// for the operator, and a resume gives the devices another max_wait.
func TestPhaseStuckDeviceHoldsAtMostMaxWait(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{}}
	f := newPhaseFixture(t, 4, func(int) bool { return true }, an)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.5,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: time.Minute}, Analysis: &testConfig})
	require.NoError(t, err)
	f.step()
	as := f.assignments(ro.ID)
	for _, a := range as[1:] {
		f.eng.HandleAck(a.Device, &protocol.Ack{CommandID: a.CommandID, RolloutID: ro.ID, State: protocol.UpdateShadow, Time: f.clock()})
	}
	f.advance(testConfig.MaxWait - time.Second)
	f.step()
	require.True(t, f.rollout(ro.ID).PhaseStarted.IsZero(), "started before max_wait while %s was on its way", as[0].Device)
	rep, err := f.eng.Status(ro.ID)
	require.NoError(t, err)
	require.Contains(t, rep.Waiting, "wave 1 shadow waits for its devices until "+ro.Created.Add(testConfig.MaxWait).UTC().Format(time.RFC3339)+" at most")
	f.advance(time.Second)
	f.step()
	r := f.rollout(ro.ID)
	require.Equal(t, registry.RolloutRunning, r.State)
	require.Equal(t, f.clock(), r.PhaseStarted.UTC())
	require.Equal(t, "shadow-started", r.Decisions[len(r.Decisions)-1].Action)
	require.Contains(t, r.Decisions[len(r.Decisions)-1].Detail, "3 of 4 trial devices hold the candidate, 1 on their way")

	// Nobody holds it: paused at max_wait, and a resume waits again.
	f2 := newPhaseFixture(t, 3, func(int) bool { return true }, an)
	ro2, err := f2.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.5,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: time.Minute}, Analysis: &testConfig})
	require.NoError(t, err)
	f2.step()
	f2.advance(testConfig.MaxWait - time.Second)
	f2.step()
	require.Equal(t, registry.RolloutRunning, f2.rollout(ro2.ID).State)
	f2.advance(time.Second)
	f2.step()
	r = f2.rollout(ro2.ID)
	require.Equal(t, registry.RolloutPaused, r.State)
	require.Contains(t, r.Reason, "wave 1 shadow: no trial device holds the candidate 30m0s after the phase began (0 of 3 trial devices hold the candidate, 3 on their way)")
	require.Equal(t, "shadow-paused", r.Decisions[len(r.Decisions)-1].Action)
	// The operator comes back after more than max_wait: the resume gives
	// the devices another max_wait.
	f2.advance(testConfig.MaxWait + time.Minute)
	_, err = f2.eng.Resume(ro2.ID)
	require.NoError(t, err)
	f2.advance(time.Minute)
	f2.step()
	require.Equal(t, registry.RolloutRunning, f2.rollout(ro2.ID).State, "paused again at once after a resume")
	a := f2.assignments(ro2.ID)[0]
	f2.eng.HandleAck(a.Device, &protocol.Ack{CommandID: a.CommandID, RolloutID: ro2.ID, State: protocol.UpdateShadow, Time: f2.clock()})
	f2.advance(testConfig.MaxWait)
	f2.step()
	r = f2.rollout(ro2.ID)
	require.Equal(t, registry.RolloutRunning, r.State)
	require.False(t, r.PhaseStarted.IsZero(), "the window starts with the one device that arrived")
	require.Empty(t, an.requests(analysis.PhaseShadow), "no window ended yet")
}

// TestPhaseTrialRenewedWhilePaused: a rollout paused in shadow for longer
// than its trial commands last renews them at half their life (the same
// trial, a new command id and expiry): the devices keep their candidates
// and still hold them when the operator resumes.
func TestPhaseTrialRenewedWhilePaused(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{analysis.PhaseShadow: {analysis.Wait}}}
	f, ro := phaseRollout(t, an)
	_, err := f.eng.Pause(ro.ID)
	require.NoError(t, err)
	dev := f.assignments(ro.ID)[0].Device
	first := f.installs(dev)
	require.Len(t, first, 1)
	ttl := first[0].Expires.Sub(first[0].Issued)
	for range 5 { // two days and a half, a step an hour
		for range 12 {
			f.advance(time.Hour)
			f.step()
		}
		f.ackAll(ro.ID, "")
	}
	got := f.installs(dev)
	require.GreaterOrEqual(t, len(got), 3, "renewed every half of %s over 60 h", ttl)
	for i, c := range got {
		require.Equal(t, "shadow 10", trialOf(c))
		if i > 0 {
			require.NotEqual(t, got[i-1].ID, c.ID)
			require.True(t, c.Issued.Before(got[i-1].Expires), "command %d sent after the previous one expired", i)
		}
	}
	_, err = f.eng.Resume(ro.ID)
	require.NoError(t, err)
	f.step()
	for _, a := range f.assignments(ro.ID) {
		require.Equal(t, protocol.UpdateShadow, a.State, a.Device)
	}
	require.Equal(t, registry.RolloutRunning, f.rollout(ro.ID).State)
}

// TestPhaseWaveTimeout: a wave_timeout shorter than the trial phases does
// not end them; it applies from the promotion on, counted from the
// wave's start, so a promotion that then waits for its devices halts at
// once.
func TestPhaseWaveTimeout(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{analysis.PhaseShadow: {analysis.Pass}}}
	f := newPhaseFixture(t, 4, func(int) bool { return true }, an)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1, WaveTimeout: 10 * time.Minute,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: 15 * time.Minute}, Analysis: &testConfig})
	require.NoError(t, err)
	f.step()
	f.ackAll(ro.ID, "")
	f.step()
	for range 14 {
		f.advance(time.Minute)
		f.step()
		r := f.rollout(ro.ID)
		require.Equal(t, registry.RolloutRunning, r.State, "timed out in shadow after %s", f.clock().Sub(ro.Created))
		require.Equal(t, registry.PhaseShadow, r.Phase)
	}
	f.advance(time.Minute)
	f.step() // shadow passes: promotion
	require.Equal(t, registry.PhasePromote, f.rollout(ro.ID).Phase)
	f.step() // the devices have not answered the plain install
	r := f.rollout(ro.ID)
	require.Equal(t, registry.RolloutHalted, r.State)
	require.Contains(t, r.Reason, "wave 1 timed out after 10m0s")
}

// TestPhaseNewLeaderCarriesOn: the phase is in the store: an engine
// started afterwards (a new leader) neither restarts the window nor resends
// the trial to devices holding it, and judges the phase when it ends.
func TestPhaseNewLeaderCarriesOn(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{analysis.PhaseShadow: {analysis.Pass}}}
	f := newPhaseFixture(t, 6, func(int) bool { return true }, an)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: 15 * time.Minute}, Analysis: &testConfig})
	require.NoError(t, err)
	f.step()
	f.ackAll(ro.ID, "")
	f.step()
	started := f.rollout(ro.ID).PhaseStarted
	require.False(t, started.IsZero())
	f.advance(11 * time.Minute) // past ResendAfter: holding the trial is an answer
	f.eng, err = New(Options{Registry: f.reg, Sender: f.rec, Fleet: "acme", Now: f.clock, Analyzer: an})
	require.NoError(t, err)
	n := len(f.rec.sent)
	f.step()
	require.Len(t, f.rec.sent, n, "the new leader resent trials the devices hold")
	require.Equal(t, started, f.rollout(ro.ID).PhaseStarted)
	f.advance(4 * time.Minute)
	f.step()
	require.Len(t, an.requests(analysis.PhaseShadow), 1)
	require.Equal(t, started, an.requests(analysis.PhaseShadow)[0].From)
	require.Equal(t, registry.PhasePromote, f.rollout(ro.ID).Phase)
}

// TestNoPhasesNoAnalysis: without --shadow, --canary and --analysis a
// rollout is today's: plain installs, no phase, no analysis.
func TestNoPhasesNoAnalysis(t *testing.T) {
	an := &scripted{}
	f := newPhaseFixture(t, 4, func(int) bool { return true }, an)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1})
	require.NoError(t, err)
	require.Empty(t, ro.Phase)
	f.step()
	for _, a := range f.assignments(ro.ID) {
		got := f.installs(a.Device)
		require.Len(t, got, 1)
		require.Nil(t, got[0].Install.Trial)
		require.Zero(t, a.Baseline)
	}
	f.ackAll(ro.ID, protocol.UpdateCommitted)
	f.step()
	f.step()
	r := f.rollout(ro.ID)
	require.Equal(t, registry.RolloutCompleted, r.State)
	require.Empty(t, r.Phase)
	require.Empty(t, r.Analyses)
	require.Empty(t, an.reqs)
	rep, err := f.eng.Status(ro.ID)
	require.NoError(t, err)
	require.Empty(t, rep.Waves[0].Phase)
	require.Nil(t, rep.Analyses)
}

func TestCreateRefusesBadPhases(t *testing.T) {
	f := newGateFixture(t, 1) // an engine without an analyzer
	spec := func(mod func(*Spec)) Spec {
		s := Spec{Model: "face", Version: 2, Shadow: &registry.TrialPhase{Percent: 10, Duration: time.Minute}, Analysis: &testConfig}
		mod(&s)
		return s
	}
	_, err := f.eng.Create(spec(func(*Spec) {}))
	require.True(t, errors.Is(err, ErrInvalid) && strings.Contains(err.Error(), "no analyzer"), "%v", err)
	_, err = f.eng.Create(spec(func(s *Spec) { s.Shadow, s.Canary = nil, nil }))
	require.ErrorIs(t, err, ErrInvalid, "--analysis alone needs the analyzer too")

	an := &scripted{}
	f.eng, err = New(Options{Registry: f.reg, Sender: f.rec, Fleet: "acme", Now: f.clock, Analyzer: an})
	require.NoError(t, err)
	for _, c := range []struct {
		name string
		mod  func(*Spec)
		want string
	}{
		{"no percent", func(s *Spec) { s.Shadow.Percent = 0 }, "shadow 0%"},
		{"over 100", func(s *Spec) { s.Canary = &registry.TrialPhase{Percent: 150, Duration: time.Minute} }, "canary 150%"},
		{"no duration", func(s *Spec) { s.Shadow.Duration = 0 }, "at least a second"},
		{"no config, no default", func(s *Spec) { s.Analysis = nil }, "need an analysis config"},
		{"negative max_wait", func(s *Spec) { c := testConfig; c.MaxWait = -1; s.Analysis = &c }, "max_wait"},
		{"trials outliving a command", func(s *Spec) { c := testConfig; c.MaxWait = 15 * 24 * time.Hour; s.Analysis = &c },
			"devices take commands of at most 720h0m0s"},
	} {
		_, err := f.eng.Create(spec(c.mod))
		require.ErrorIs(t, err, ErrInvalid, c.name)
		require.Contains(t, err.Error(), c.want, c.name)
	}
	def := testConfig
	def.MaxWait = time.Hour
	f.eng, err = New(Options{Registry: f.reg, Sender: f.rec, Fleet: "acme", Now: f.clock, Analyzer: an, DefaultAnalysis: &def})
	require.NoError(t, err)
	ro, err := f.eng.Create(spec(func(s *Spec) { s.Analysis = nil }))
	require.NoError(t, err)
	require.Equal(t, time.Hour, config(ro).MaxWait, "phases without a config take the default")
}

// TestPhaseLateJoiner: a device that joins the wave after its trials (in
// the promotion) gets the plain install and is not counted as a trial
// device; one that joins during the shadow phase gets the shadow trial.
func TestPhaseLateJoiner(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{analysis.PhaseShadow: {analysis.Pass}}}
	f := newPhaseFixture(t, 3, func(int) bool { return true }, an)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.5,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: time.Minute}, Analysis: &testConfig})
	require.NoError(t, err)
	f.step()
	join := func(id string) {
		_, err := f.reg.UpdateDevice(id, func(d *registry.Device) {
			d.Online, d.Labels = true, map[string]string{"site": "north"}
			d.Models, d.Features = []protocol.ModelStatus{{Name: "face", Version: 1}}, []string{protocol.FeatureTrial}
		})
		require.NoError(t, err)
	}
	join("gw-early")
	f.step()
	got := f.installs("gw-early")
	require.Len(t, got, 1)
	require.Equal(t, "shadow 10", trialOf(got[0]))
	f.ackAll(ro.ID, "")
	f.step()
	f.advance(time.Minute)
	f.step()
	require.Equal(t, registry.PhasePromote, f.rollout(ro.ID).Phase)
	join("gw-late")
	f.step()
	got = f.installs("gw-late")
	require.Len(t, got, 1)
	require.Equal(t, "plain", trialOf(got[0]))
	a, err := f.reg.Assignment(ro.ID, "gw-late")
	require.NoError(t, err)
	require.Zero(t, a.Baseline)
	rep, err := f.eng.Status(ro.ID)
	require.NoError(t, err)
	require.Equal(t, 4, rep.Waves[0].TrialDevices)
}

// TestPhaseHaltAlerts: a rollout halted by its analysis goes to the
// webhooks as any halt does, with the analysis's reason.
func TestPhaseHaltAlerts(t *testing.T) {
	an := &scripted{verdicts: map[analysis.Phase][]analysis.Verdict{analysis.PhaseShadow: {analysis.Fail}}}
	f := newPhaseFixture(t, 4, func(int) bool { return true }, an)
	o, err := alerts.New(alerts.Options{Registry: f.reg, Fleet: "acme", Config: alerts.Config{Webhooks: []alerts.Webhook{
		{Name: "a", URL: "http://127.0.0.1:9/a", Secret: "0123456789abcdef0123"}}}})
	require.NoError(t, err)
	f.eng, err = New(Options{Registry: f.reg, Sender: f.rec, Fleet: "acme", Now: f.clock, Analyzer: an, Alerts: o})
	require.NoError(t, err)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.1,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: time.Minute}, Analysis: &testConfig})
	require.NoError(t, err)
	f.step()
	f.ackAll(ro.ID, "")
	f.step()
	f.advance(time.Minute)
	f.step()
	require.Equal(t, registry.RolloutHalted, f.rollout(ro.ID).State)
	rows, err := f.reg.AlertDeliveries(registry.AlertQuery{})
	require.NoError(t, err)
	require.Len(t, rows, 1)
	var body struct {
		Data alerts.RolloutData `json:"data"`
	}
	require.NoError(t, json.Unmarshal(rows[0].Body, &body))
	require.Equal(t, ro.ID, body.Data.Rollout)
	require.Contains(t, body.Data.Reason, "wave 1 shadow analysis failed")
}

// TestPhaseEveryTrialFailed: when every trial device of a wave failed its
// trial and the failure ratio lets the rollout go on, the phase is
// skipped rather than waiting for ever for a device to hold the candidate.
func TestPhaseEveryTrialFailed(t *testing.T) {
	an := &scripted{}
	f := newPhaseFixture(t, 4, func(i int) bool { return i == 0 }, an)
	ro, err := f.eng.Create(Spec{Model: "face", Version: 2, Waves: []int{100}, MaxFailureRatio: 0.5,
		Shadow: &registry.TrialPhase{Percent: 10, Duration: time.Minute}, Analysis: &testConfig})
	require.NoError(t, err)
	f.step()
	a, err := f.reg.Assignment(ro.ID, "gw-00")
	require.NoError(t, err)
	f.eng.HandleAck(a.Device, &protocol.Ack{CommandID: a.CommandID, RolloutID: ro.ID, State: protocol.UpdateFailed,
		Error: "trial: the candidate does not load beside the serving version", Time: f.clock()})
	f.step()
	r := f.rollout(ro.ID)
	require.Equal(t, registry.RolloutRunning, r.State)
	require.Equal(t, registry.PhasePromote, r.Phase)
	require.Contains(t, r.Decisions[0].Detail, "every one of its 1 trial devices failed the trial")
	require.Empty(t, an.reqs)
}
