//go:build cgo

package updater

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/protocol"
)

// trialInstall is a signed install of m with trial t (nil: a plain install,
// which promotes a candidate), expiring after expires (0: an hour).
func (f *testFleet) trialInstall(t testing.TB, id, rollout string, m manifest.Manifest, release []byte, trial *protocol.Trial, expires time.Duration) []byte {
	c := f.installCmd(t, id, rollout, m, release)
	c.Install.Trial = trial
	if expires > 0 {
		c.Expires = time.Now().Add(expires)
	}
	return f.command(t, c)
}

// waitAck waits for an ack of command in state.
func (r *recorder) waitAck(t *testing.T, command string, state State) protocol.Ack {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, a := range r.acks {
			if a.CommandID == command && a.State == state {
				r.mu.Unlock()
				return a
			}
		}
		r.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %s ack of %s; acks %v", state, command, r.states(command))
	return protocol.Ack{}
}

// trialDevice is a device serving the lite hand model as v1, with the full
// one signed as v2.
func trialDevice(t *testing.T, dir string, f *testFleet, rec *recorder) (d *device, m2 manifest.Manifest, rel2 []byte) {
	t.Helper()
	m1, b1 := describe(t, "hand", 1, testmodel.Hand, false)
	m2, b2 := describe(t, "hand", 2, testmodel.HandFull, false)
	d = newDevice(t, dir, f, newMemSource(b1, b2), withReports(rec))
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Equal(t, Committed, d.waitJob(t, "c1").State)
	return d, m2, f.release(t, m2, time.Hour)
}

// candidate returns the device's candidate of hand, if any.
func (d *device) candidate() (serving.TrialStatus, bool) {
	for _, c := range d.reg.Trials() {
		if c.Entry.Name == "hand" {
			return c, true
		}
	}
	return serving.TrialStatus{}, false
}

func workEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "updater"))
	require.NoError(t, err)
	assert.Empty(t, ents, "staged bytes left in the work directory")
}

// TestTrialShadowCanaryPromote: an install with a trial holds the
// validated candidate beside v1 (shadow, then canary at once on a second
// install), and an install without one promotes the loaded candidate: no
// second load, then probation and commit as for any install.
func TestTrialShadowCanaryPromote(t *testing.T) {
	f := newTestFleet(t)
	rec := &recorder{}
	dir := t.TempDir()
	d, m2, rel := trialDevice(t, dir, f, rec)

	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c2", "r2", m2, rel, &protocol.Trial{Mode: protocol.TrialShadow, Percent: 10}, 0)))
	a := rec.waitAck(t, "c2", Shadow)
	assert.Contains(t, a.Detail, "10%")
	assert.Equal(t, []State{Downloading, Verifying, Staged, Validating, Shadow}, rec.states("c2"))
	c, ok := d.candidate()
	require.True(t, ok, "no candidate held")
	assert.Equal(t, serving.Trial{Mode: serving.Shadow, Percent: 10}, c.Trial)
	assert.EqualValues(t, 2, c.Entry.Version)
	assert.EqualValues(t, 1, d.serving(t, "hand"), "the serving version stays")
	cur, err := d.store.Current("hand")
	require.NoError(t, err)
	assert.EqualValues(t, 1, cur.Manifest.Version, "the store's current version stays")
	assert.Equal(t, protocol.UpdateShadow, d.u.UpdateStatus().State)
	sm, ok := d.u.StagedManifest(m2.SHA256)
	require.True(t, ok, "the candidate's signed manifest")
	assert.EqualValues(t, 2, sm.Version)
	_, ok = d.u.StagedManifest(cur.Manifest.SHA256)
	assert.False(t, ok, "the serving version is not the update under way")

	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c3", "r2", m2, rel, &protocol.Trial{Mode: protocol.TrialCanary, Percent: 50}, 0)))
	rec.waitAck(t, "c3", Canary)
	c2, ok := d.candidate()
	require.True(t, ok)
	assert.Equal(t, serving.Trial{Mode: serving.Canary, Percent: 50}, c2.Trial)
	assert.Equal(t, c.Entry.LoadedAt, c2.Entry.LoadedAt, "the mode changed without a load")

	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c4", "r2", m2, rel, nil, 0)))
	j := d.waitJob(t, "c4")
	require.Equal(t, Committed, j.State, j.Error)
	assert.Equal(t, []State{Activating, Probation, Committed}, rec.waitStates(t, "c4"))
	e, err := d.reg.Lookup("hand", 0)
	require.NoError(t, err)
	assert.EqualValues(t, 2, e.Version)
	assert.Equal(t, c.Entry.LoadedAt, e.LoadedAt, "promoted as loaded, not loaded again")
	_, ok = d.candidate()
	assert.False(t, ok)
	cur, err = d.store.Current("hand")
	require.NoError(t, err)
	assert.EqualValues(t, 2, cur.Manifest.Version)
	prev, err := d.store.Previous("hand")
	require.NoError(t, err)
	assert.Equal(t, &Version{Version: 1, SHA256: prev.Manifest.SHA256}, j.From, "a rollback returns to v1")
}

// TestTrialAbort: an abort discards the candidate and its staged bytes; the
// serving version never stopped serving. A rollback naming the candidate's
// version does the same.
func TestTrialAbort(t *testing.T) {
	f := newTestFleet(t)
	rec := &recorder{}
	dir := t.TempDir()
	d, m2, rel := trialDevice(t, dir, f, rec)

	stop := make(chan struct{})
	wait := d.load("hand", false, stop)
	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c2", "r2", m2, rel, &protocol.Trial{Mode: protocol.TrialCanary, Percent: 50}, 0)))
	rec.waitAck(t, "c2", Canary)
	require.NoError(t, d.u.HandleCommand(f.abort(t, "c3", "r2")))
	j := d.waitJob(t, "c2")
	close(stop)
	ok, failed := wait()
	assert.Equal(t, Failed, j.State)
	assert.Equal(t, "aborted", j.Error)
	assert.Zero(t, failed, "requests failed (%d answered)", ok)
	_, held := d.candidate()
	assert.False(t, held, "the candidate is still loaded")
	assert.EqualValues(t, 1, d.serving(t, "hand"))
	workEmpty(t, dir)

	// A rollback of the candidate's version: the job fails, the command
	// answers that there was nothing to roll back.
	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c4", "r3", m2, rel, &protocol.Trial{Mode: protocol.TrialShadow, Percent: 5}, 0)))
	rec.waitAck(t, "c4", Shadow)
	require.NoError(t, d.u.HandleCommand(f.rollback(t, "c5", "r3", "hand", 2)))
	assert.Equal(t, Failed, d.waitJob(t, "c4").State)
	assert.Equal(t, []State{RolledBack}, rec.waitStates(t, "c5"))
	_, held = d.candidate()
	assert.False(t, held)
	assert.EqualValues(t, 1, d.serving(t, "hand"))
	workEmpty(t, dir)

	// An install of the model by another rollout: the trial ends as for
	// an abort, and the new install proceeds to its commit.
	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c6", "r4", m2, rel, &protocol.Trial{Mode: protocol.TrialShadow, Percent: 5}, 0)))
	rec.waitAck(t, "c6", Shadow)
	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c7", "r5", m2, rel, nil, 0)))
	assert.Contains(t, rec.waitAck(t, "c6", Failed).Error, "superseded by command c7 of rollout r5")
	assert.Equal(t, Committed, d.waitJob(t, "c7").State)
	_, held = d.candidate()
	assert.False(t, held, "the candidate of the ended trial is still loaded")
	assert.EqualValues(t, 2, d.serving(t, "hand"))
}

// TestTrialSurvivesRestart: an agent restarted during a canary loads the
// candidate again from the staged file and holds it in the same trial; the
// promotion then works as without the restart.
func TestTrialSurvivesRestart(t *testing.T) {
	f := newTestFleet(t)
	rec := &recorder{}
	dir := t.TempDir()
	d, m2, rel := trialDevice(t, dir, f, rec)
	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c2", "r2", m2, rel, &protocol.Trial{Mode: protocol.TrialCanary, Percent: 20}, 0)))
	rec.waitAck(t, "c2", Canary)
	d.stop(t)

	d = newDevice(t, dir, f, newMemSource(), withReports(rec))
	// As in the daemon, the updater may resume before the serving version
	// is loaded again: it waits for it rather than fail the trial.
	require.NoError(t, d.reg.Unload("hand"))
	d.start(t)
	data, se, err := d.store.Load("hand")
	require.NoError(t, err)
	_, err = d.reg.Load(context.Background(), "hand", se.Manifest.Version, data, "store")
	require.NoError(t, err)
	deadline := time.Now().Add(30 * time.Second)
	c, held := d.candidate()
	for !held && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		c, held = d.candidate()
	}
	require.True(t, held, "the restarted agent holds no candidate")
	assert.Equal(t, serving.Trial{Mode: serving.Canary, Percent: 20}, c.Trial)
	assert.EqualValues(t, 1, d.serving(t, "hand"))
	assert.Equal(t, protocol.UpdateCanary, d.u.UpdateStatus().State)

	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c3", "r2", m2, rel, nil, 0)))
	j := d.waitJob(t, "c3")
	require.Equal(t, Committed, j.State, j.Error)
	assert.EqualValues(t, 2, d.serving(t, "hand"))
}

// TestTrialExpires: a candidate still on trial when its command expires is
// discarded, as for an abort.
func TestTrialExpires(t *testing.T) {
	f := newTestFleet(t)
	rec := &recorder{}
	dir := t.TempDir()
	d, m2, rel := trialDevice(t, dir, f, rec)
	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c2", "r2", m2, rel, &protocol.Trial{Mode: protocol.TrialShadow, Percent: 10}, 4*time.Second)))
	rec.waitAck(t, "c2", Shadow)
	j := d.waitJob(t, "c2")
	assert.Equal(t, Failed, j.State)
	assert.Equal(t, "trial expired", j.Error)
	_, held := d.candidate()
	assert.False(t, held)
	assert.EqualValues(t, 1, d.serving(t, "hand"))
	workEmpty(t, dir)
}

// TestTrialNeedsServingVersion: a device that serves no version of the
// model refuses an install with a trial before fetching anything.
func TestTrialNeedsServingVersion(t *testing.T) {
	f := newTestFleet(t)
	rec := &recorder{}
	m1, b1 := describe(t, "hand", 1, testmodel.Hand, false)
	src := newMemSource(b1)
	d := newDevice(t, t.TempDir(), f, src, withReports(rec))
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "c1", "r1", m1, nil, &protocol.Trial{Mode: protocol.TrialShadow, Percent: 10}, 0)))
	j := d.waitJob(t, "c1")
	assert.Equal(t, Failed, j.State)
	assert.Equal(t, "trial needs a serving version", j.Error)
	assert.Equal(t, []State{Failed}, rec.waitStates(t, "c1"))
	src.mu.Lock()
	assert.Zero(t, src.requested, "chunks were fetched")
	src.mu.Unlock()
}
