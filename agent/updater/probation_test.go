//go:build cgo

package updater

import (
	"testing"
	"time"

	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/require"
)

// lastAudit returns the newest audit entry's action, outcome and detail.
func lastAudit(t *testing.T, d *device) (action, outcome, detail string) {
	t.Helper()
	es, err := d.u.AuditTrail(0, 0)
	require.NoError(t, err)
	require.NotEmpty(t, es)
	e := es[len(es)-1]
	return e.Action, e.Outcome, e.Detail
}

// probationDevice is a device whose probation lasts at least least, needs
// minReq requests and at most most.
func probationDevice(t *testing.T, dir string, f *testFleet, src ChunkSource, rec *recorder, least time.Duration, minReq uint64, most time.Duration) *device {
	return newDevice(t, dir, f, src, func(o *Options) {
		withReports(rec)(o)
		o.Probation, o.ProbationMinRequests, o.ProbationMax = least, minReq, most
	})
}

// TestProbationWithoutTrafficCommitsUnverified: a version nobody uses is
// not held in probation for ever, but its commit says it was not verified:
// the ack, the job, the audit record and the status.
func TestProbationWithoutTrafficCommitsUnverified(t *testing.T) {
	f := newTestFleet(t)
	m, b := describe(t, "face", 1, testmodel.FaceShort, false)
	rec := &recorder{}
	d := probationDevice(t, t.TempDir(), f, newMemSource(b), rec, 50*time.Millisecond, 10, time.Second)
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m)))
	j := d.waitJob(t, "c1")
	require.Equal(t, Committed, j.State, j.Error)
	require.False(t, j.Verified)
	require.Zero(t, j.Seen.Requests)
	require.GreaterOrEqual(t, j.Updated.Sub(j.ProbationStart), time.Second, "committed before the maximum")
	require.Equal(t, goodPath, rec.waitStates(t, "c1"))
	a := rec.last(t, "c1")
	require.Equal(t, Committed, a.State)
	require.False(t, a.Verified)
	require.Zero(t, a.Requests)
	require.Contains(t, a.Detail, "unverified")
	require.Contains(t, a.Detail, "0 of the 10 requests")
	action, outcome, detail := lastAudit(t, d)
	require.Equal(t, "update.committed", action)
	require.Equal(t, "unverified", outcome)
	require.Contains(t, detail, "unverified")
	st := d.u.UpdateStatus()
	require.Equal(t, Committed, st.State)
	require.False(t, st.Verified)
}

// TestProbationWithTrafficCommitsVerified: with real inference requests on
// the new version, probation commits as soon as the least time passed and
// the minimum of requests was served, long before its maximum.
func TestProbationWithTrafficCommitsVerified(t *testing.T) {
	f := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceShort, false)
	m2, b2 := describe(t, "face", 2, testmodel.FaceShort, false)
	rec := &recorder{}
	d := probationDevice(t, t.TempDir(), f, newMemSource(b1, b2), rec, 50*time.Millisecond, 10, time.Hour)
	d.start(t)
	// v1 needs traffic too: it is served by the time the load starts.
	stop := make(chan struct{})
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j != nil && j.State == Probation }, 30*time.Second, 5*time.Millisecond)
	wait := d.load("face", false, stop)
	j := d.waitJob(t, "c1")
	require.Equal(t, Committed, j.State, j.Error)
	require.True(t, j.Verified)
	require.GreaterOrEqual(t, j.Seen.Requests, uint64(10))
	require.NoError(t, d.u.HandleCommand(f.install(t, "c2", "r2", m2)))
	j = d.waitJob(t, "c2")
	close(stop)
	ok, failed := wait()
	require.Equal(t, Committed, j.State, j.Error)
	require.True(t, j.Verified)
	require.Zero(t, failed, "%d requests succeeded", ok)
	require.Equal(t, goodPath, rec.waitStates(t, "c2"))
	a := rec.last(t, "c2")
	require.True(t, a.Verified)
	require.GreaterOrEqual(t, a.Requests, int64(10))
	require.Contains(t, a.Detail, "verified")
	_, outcome, _ := lastAudit(t, d)
	require.Equal(t, "ok", outcome)
	require.Less(t, j.Updated.Sub(j.ProbationStart), time.Hour)
	t.Logf("verified after %s: %s", j.Updated.Sub(j.ProbationStart).Round(time.Millisecond), a.Detail)
}

// TestProbationOverride: an install command's probation policy replaces
// the device's setting, field by field, for that install only.
func TestProbationOverride(t *testing.T) {
	f := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceShort, false)
	m2, b2 := describe(t, "face", 2, testmodel.FaceShort, false)
	rec := &recorder{}
	// The device alone would wait an hour for a million requests.
	d := probationDevice(t, t.TempDir(), f, newMemSource(b1, b2), rec, 50*time.Millisecond, 1_000_000, time.Hour)
	d.start(t)

	// A rollout that settles for 5 requests.
	c := f.installCmd(t, "c1", "r1", m1, nil)
	c.Install.Probation = &protocol.Probation{MinRequests: 5}
	require.NoError(t, d.u.HandleCommand(f.command(t, c)))
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j != nil && j.State == Probation }, 30*time.Second, 5*time.Millisecond)
	for range 5 {
		d.traffic.Observe("face", 1, false, time.Millisecond)
	}
	j := d.waitJob(t, "c1")
	require.Equal(t, Committed, j.State, j.Error)
	require.True(t, j.Verified)
	require.Equal(t, uint64(5), j.Seen.Requests)

	// A rollout that waits at most a second.
	c = f.installCmd(t, "c2", "r2", m2, nil)
	c.Install.Probation = &protocol.Probation{MaxSeconds: 1}
	require.NoError(t, d.u.HandleCommand(f.command(t, c)))
	j = d.waitJob(t, "c2")
	require.Equal(t, Committed, j.State, j.Error)
	require.False(t, j.Verified)
	require.GreaterOrEqual(t, j.Updated.Sub(j.ProbationStart), time.Second)
	require.Equal(t, goodPath, rec.waitStates(t, "c2"))
	a := rec.last(t, "c2")
	require.Contains(t, a.Detail, "of the 1000000 requests")
}

// TestProbationSurvivesRestart: requests counted before the agent stopped
// count after it starts again: the total, not the new process's share,
// reaches the minimum.
func TestProbationSurvivesRestart(t *testing.T) {
	f := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceShort, false)
	src := newMemSource(b1)
	dir := t.TempDir()
	rec := &recorder{}
	d := probationDevice(t, dir, f, src, rec, 50*time.Millisecond, 30, time.Hour)
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j != nil && j.State == Probation }, 30*time.Second, 5*time.Millisecond)
	// Each state's ack goes out when it is entered, not when the job ends.
	require.Eventually(t, func() bool {
		s := rec.states("c1")
		return len(s) > 0 && s[len(s)-1] == Probation
	}, 30*time.Second, 5*time.Millisecond, "no probation ack while in probation")
	for range 20 {
		d.traffic.Observe("face", 1, false, time.Millisecond)
	}
	// Saved while running, not only on the way out: a crash keeps them.
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j.Seen.Requests == 20 }, 30*time.Second, 5*time.Millisecond)
	d.stop(t)

	d = probationDevice(t, dir, f, src, rec, 50*time.Millisecond, 30, time.Hour)
	d.start(t)
	for range 9 {
		d.traffic.Observe("face", 1, false, time.Millisecond)
	}
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j.Seen.Requests == 29 }, 30*time.Second, 5*time.Millisecond)
	j, err := d.u.Job()
	require.NoError(t, err)
	require.Equal(t, Probation, j.State, "committed with 29 of 30 requests")
	require.Equal(t, 1, j.Boots)
	require.Eventually(t, func() bool {
		st := d.u.UpdateStatus()
		return st.State == Probation && st.Requests == 29
	}, 30*time.Second, 5*time.Millisecond, "the status does not show the requests seen so far")
	d.traffic.Observe("face", 1, false, time.Millisecond)
	j = d.waitJob(t, "c1")
	require.Equal(t, Committed, j.State, j.Error)
	require.True(t, j.Verified)
	require.Equal(t, uint64(30), j.Seen.Requests)
	require.Equal(t, goodPath, rec.waitStates(t, "c1"))
	a := rec.last(t, "c1")
	require.Equal(t, int64(30), a.Requests)
	require.True(t, a.Verified)
}
