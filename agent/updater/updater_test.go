//go:build cgo

package updater

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/telemetry"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/onnx"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/require"
)

// acks records what a Reporter is given, and telemetry what an Emitter is.
type recorder struct {
	mu      sync.Mutex
	acks    []protocol.Ack
	records []protocol.Record
}

func (r *recorder) Report(_ context.Context, p protocol.Ack) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.acks = append(r.acks, p)
	return nil
}

func (r *recorder) Emit(_ context.Context, rec protocol.Record) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec)
	return uint64(len(r.records)), nil
}

func (r *recorder) states(command string) []State {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []State
	for _, a := range r.acks {
		if a.CommandID == command && (len(out) == 0 || out[len(out)-1] != a.State) {
			out = append(out, a.State)
		}
	}
	return out
}

// waitStates waits until the acks of command reach its terminal state.
func (r *recorder) waitStates(t *testing.T, command string) []State {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		s := r.states(command)
		if len(s) > 0 && s[len(s)-1].Terminal() {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("acks of %s: %v", command, r.states(command))
	return nil
}

func withReports(rec *recorder) func(*Options) {
	return func(o *Options) { o.Reporter = rec; o.Telemetry = rec }
}

var goodPath = []State{Downloading, Verifying, Staged, Validating, Activating, Probation, Committed}

// TestUpdateCommits takes a device from nothing to v1 and then, under load,
// to v2: every state is passed and reported, no request fails during the
// swap, the store holds v2 with v1 as previous, and the audit trail verifies.
func TestUpdateCommits(t *testing.T) {
	f := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceShort, true)
	m2, b2 := describe(t, "face", 2, testmodel.FaceFull, false)
	rec := &recorder{}
	dir := t.TempDir()
	q, err := telemetry.New(telemetry.Options{Path: filepath.Join(dir, "telemetry.db")})
	require.NoError(t, err)
	qctx, qstop := context.WithCancel(context.Background())
	qdone := make(chan error, 1)
	go func() { qdone <- q.Run(qctx) }()
	defer func() { qstop(); <-qdone }()
	d := newDevice(t, dir, f, newMemSource(b1, b2), func(o *Options) { o.Reporter = rec; o.Telemetry = q })
	d.start(t)

	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Equal(t, Committed, d.waitJob(t, "c1").State)
	require.Equal(t, goodPath, rec.waitStates(t, "c1"))
	require.Equal(t, int64(1), d.serving(t, "face"))

	stop := make(chan struct{})
	wait := d.load("face", false, stop)
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c2", "r2", m2)))
	j := d.waitJob(t, "c2")
	close(stop)
	ok, failed := wait()
	require.Equal(t, Committed, j.State, j.Error)
	require.Zero(t, failed, "requests failed during the update (%d succeeded)", ok)
	t.Logf("update under load: %d requests, %d failed", ok, failed)
	require.Positive(t, ok)
	require.Equal(t, int64(2), d.serving(t, "face"))
	cur, err := d.store.Current("face")
	require.NoError(t, err)
	require.Equal(t, int64(2), cur.Manifest.Version)
	prev, err := d.store.Previous("face")
	require.NoError(t, err)
	require.Equal(t, int64(1), prev.Manifest.Version)
	require.Equal(t, &Version{Version: 1, SHA256: m1.SHA256}, j.From)

	n, err := d.u.VerifyAudit()
	require.NoError(t, err)
	// Two commands accepted plus seven transitions each.
	require.Equal(t, 2+2*len(goodPath), n)
	es, err := d.u.AuditTrail(0, 0)
	require.NoError(t, err)
	for _, e := range es[len(es)-len(goodPath):] {
		t.Logf("%s: %s", e.Action, e.Detail)
	}
	last := es[len(es)-1]
	require.Equal(t, "update.committed", last.Action)
	require.Equal(t, "r2", last.RolloutID)
	require.Equal(t, m2.SHA256, last.SHA256)

	// The telemetry queue kept an update and an audit record per
	// transition, as critical records (never dropped).
	require.Eventually(t, func() bool {
		s := q.Stats()
		return s.LastSeq == 4*uint64(len(goodPath)) && s.DepthByPriority[protocol.PriorityCritical] == 4*len(goodPath)
	}, 10*time.Second, 10*time.Millisecond, "%+v", q.Stats())
	d.stop(t)
	requireNoLeftovers(t, d)
}

// TestValidationRefuses: the selfie model (a custom op the runtime cannot
// resolve) and a model whose signed golden outputs it does not reproduce
// both fail validation; v1 keeps serving and the store never saw them.
func TestValidationRefuses(t *testing.T) {
	f := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceShort, true)
	selfie, bs := describe(t, "face", 2, testmodel.Selfie, false)
	wrong, bw := describe(t, "face", 3, testmodel.FaceShort, true)
	g := wrong.Golden[0]
	out := append([]byte(nil), g.Outputs[0].Data...)
	out[1] ^= 0x40 // a different float in the first element
	wrong.Golden = []manifest.Golden{{Inputs: g.Inputs, Outputs: append([]manifest.Data{{Name: g.Outputs[0].Name,
		DataType: g.Outputs[0].DataType, Shape: g.Outputs[0].Shape, Data: out}}, g.Outputs[1:]...), Tolerance: g.Tolerance}}
	slow, _ := describe(t, "face", 4, testmodel.FaceShort, true)
	// ONNX bytes signed as a TFLite model: the manifest's runtime and the
	// bytes disagree.
	bo := testmodel.TinyONNX(17)
	sig, err := onnx.Read(bo)
	require.NoError(t, err)
	sum := sha256.Sum256(bo)
	mislabelled := manifest.Manifest{Name: "face", Version: 5, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(bo)),
		Runtime: manifest.RuntimeTFLite}
	mislabelled.Inputs, mislabelled.Outputs = sig.Manifest()

	rec := &recorder{}
	d := newDevice(t, t.TempDir(), f, newMemSource(b1, bs, bw, bo), withReports(rec))
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Equal(t, Committed, d.waitJob(t, "c1").State)

	for _, tc := range []struct {
		id, why string
		m       manifest.Manifest
	}{
		{"selfie", "load", selfie},
		{"wrong", "element 0", wrong},
		{"mislabelled", "the manifest says runtime tflite, the bytes are a onnx model", mislabelled},
	} {
		require.NoError(t, d.u.HandleCommand(f.install(t, tc.id, "r-"+tc.id, tc.m)))
		j := d.waitJob(t, tc.id)
		require.Equal(t, Failed, j.State)
		require.Contains(t, j.Error, tc.why)
		require.Equal(t, []State{Downloading, Verifying, Staged, Validating, Failed}, rec.waitStates(t, tc.id))
		require.Equal(t, int64(1), d.serving(t, "face"), tc.id)
		cur, err := d.store.Current("face")
		require.NoError(t, err)
		require.Equal(t, int64(1), cur.Manifest.Version, tc.id)
	}
	require.Equal(t, 3.0, counterValue(t, d.u.metrics.validationFailures))

	// A latency budget no model meets.
	d.stop(t)
	d = newDevice(t, d.dir, f, newMemSource(bw), func(o *Options) { o.LatencyBudget = time.Nanosecond })
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "slow", "r-slow", slow)))
	j := d.waitJob(t, "slow")
	require.Equal(t, Failed, j.State)
	require.True(t, strings.Contains(j.Error, "latency budget") || strings.Contains(j.Error, "deadline"), j.Error)
	require.Equal(t, int64(1), d.serving(t, "face"))
}

// TestProbationRollsBack: v2 passes validation, but the clients were built
// for v1's input size and every request fails on v2; probation sees the
// error ratio and rolls back to v1, which then serves them again.
func TestProbationRollsBack(t *testing.T) {
	f := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceShort, false)
	m2, b2 := describe(t, "face", 2, testmodel.FaceFull, false)
	rec := &recorder{}
	src := newMemSource(b1, b2)
	d := newDevice(t, t.TempDir(), f, src, nil)
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Equal(t, Committed, d.waitJob(t, "c1").State)
	d.stop(t)
	d = newDevice(t, d.dir, f, src, func(o *Options) {
		withReports(rec)(o)
		o.Probation = 20 * time.Second // the error ratio must cut it short
	})
	d.start(t)

	stop := make(chan struct{})
	wait := d.load("face", true, stop)
	defer func() { close(stop); wait() }()
	require.NoError(t, d.u.HandleCommand(f.install(t, "c2", "r2", m2)))
	j := d.waitJob(t, "c2")
	require.Equal(t, RolledBack, j.State)
	require.Contains(t, j.Error, "error ratio")
	require.Equal(t, []State{Downloading, Verifying, Staged, Validating, Activating, Probation, RollingBack, RolledBack}, rec.waitStates(t, "c2"))
	require.Equal(t, int64(1), d.serving(t, "face"))
	cur, err := d.store.Current("face")
	require.NoError(t, err)
	require.Equal(t, int64(1), cur.Manifest.Version)
	require.Less(t, time.Since(j.ProbationStart), 20*time.Second)
	es, err := d.u.AuditTrail(0, 0)
	require.NoError(t, err)
	last := es[len(es)-1]
	require.Equal(t, "update.rolled_back", last.Action)
	require.Contains(t, last.Detail, "error ratio")
	// Telemetry carries the same: the update record and the audit record
	// with the chain's hash, so the fleet holds a copy of the trail.
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		n := len(rec.records)
		return n >= 2 && rec.records[n-2].Update != nil && rec.records[n-2].Update.State == string(RolledBack)
	}, 10*time.Second, 10*time.Millisecond)
	rec.mu.Lock()
	up, au := rec.records[len(rec.records)-2], rec.records[len(rec.records)-1]
	rec.mu.Unlock()
	require.Equal(t, "r2", up.Update.RolloutID)
	require.Contains(t, up.Update.Error, "error ratio")
	require.Equal(t, "sha256:"+m2.SHA256, up.Model.Digest)
	require.Equal(t, protocol.KindAudit, au.Kind)
	require.Contains(t, au.Audit.Detail, "hash="+last.Hash)
}

// TestCommandsRefused: commands that fail a check are refused before
// anything starts and counted by reason; installs that fail the release
// checks fail before a byte is fetched.
func TestCommandsRefused(t *testing.T) {
	f := newTestFleet(t)
	other := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceShort, false)
	m2, b2 := describe(t, "face", 2, testmodel.FaceShort, false)
	src := newMemSource(b1, b2)
	d := newDevice(t, t.TempDir(), f, src, nil)
	d.start(t)
	c2 := f.install(t, "c2", "r2", m2)
	require.NoError(t, d.u.HandleCommand(c2))
	require.Equal(t, Committed, d.waitJob(t, "c2").State)

	// Replays are refused, counted and change nothing.
	err := d.u.HandleCommand(c2)
	require.ErrorIs(t, err, ErrReplay)
	require.ErrorIs(t, err, ErrRefused)
	require.Equal(t, 1.0, counterValue(t, d.u.metrics.commands.WithLabelValues(ResultReplayed)))

	expired := f.installCmd(t, "old", "r", m2, nil)
	expired.Issued, expired.Expires = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
	elsewhere := f.installCmd(t, "elsewhere", "r", m2, nil)
	elsewhere.Fleet, elsewhere.Device = testFleetName, "dev2"
	elsewhere.Issued, elsewhere.Expires = time.Now(), time.Now().Add(time.Hour)
	sig, err := protocol.SignCommand(&elsewhere, [][]byte{f.root.Raw}, f.targetsKey)
	require.NoError(t, err)
	for _, tc := range []struct {
		name    string
		payload []byte
		result  string
	}{
		{"expired", f.command(t, expired), ResultExpired},
		{"signed by another fleet", other.install(t, "x1", "r", m2), ResultBadSig},
		{"signed by the root key", signWith(t, f.installCmd(t, "x2", "r", m2, nil), f.root.Raw, f.rootKey), ResultBadSig},
		{"for another device", sig, ResultOther},
		{"garbage", []byte(`{"envelope":1}`), ResultMalformed},
	} {
		before := counterValue(t, d.u.metrics.commands.WithLabelValues(tc.result))
		err := d.u.HandleCommand(tc.payload)
		require.ErrorIs(t, err, ErrRefused, tc.name)
		require.Equal(t, before+1, counterValue(t, d.u.metrics.commands.WithLabelValues(tc.result)), tc.name)
	}

	minAgent := m2
	minAgent.Version = 5
	minAgent.MinAgentVersion = "2.0.0"
	back := m1
	for _, tc := range []struct {
		c    []byte
		id   string
		want string
	}{
		{f.install(t, "y", "r", minAgent), "y", "needs agent 2.0.0"},
		{f.install(t, "z", "r", back), "z", "rollback"},
	} {
		require.NoError(t, d.u.HandleCommand(tc.c))
		j := d.waitJob(t, tc.id)
		require.Equal(t, Failed, j.State, tc.id)
		require.Contains(t, j.Error, tc.want, tc.id)
	}
	// A signed rollback instruction (manifest.Rollback in the release)
	// may install an older version.
	back.Rollback = true
	require.NoError(t, d.u.HandleCommand(f.install(t, "back", "r", back)))
	j := d.waitJob(t, "back")
	require.Equal(t, Committed, j.State, j.Error)
	require.Equal(t, int64(1), d.serving(t, "face"))
	back.Rollback = false
	// A release that expires while the command does not is refused by
	// VerifyCommand already.
	require.ErrorIs(t, d.u.HandleCommand(f.command(t, f.installCmd(t, "w", "r", m2, f.release(t, m2, -time.Minute)))), ErrRefused)
	cur, err := d.store.Current("face")
	require.NoError(t, err)
	require.Equal(t, int64(1), cur.Manifest.Version)
	src.mu.Lock()
	require.Equal(t, m2.Length+m1.Length, src.requested, "a refused install fetched bytes")
	src.mu.Unlock()
}

// signWith signs a command with an arbitrary key.
func signWith(t *testing.T, c protocol.Command, root []byte, key ed25519.PrivateKey) []byte {
	c.Fleet, c.Device = testFleetName, testDevice
	c.Issued, c.Expires = time.Now(), time.Now().Add(time.Hour)
	b, err := protocol.SignCommand(&c, [][]byte{root}, key)
	require.NoError(t, err)
	return b
}

func (r *recorder) last(t *testing.T, command string) protocol.Ack {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for i := len(r.acks) - 1; i >= 0; i-- {
			if a := r.acks[i]; a.CommandID == command {
				r.mu.Unlock()
				return a
			}
		}
		r.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no ack for %s", command)
	return protocol.Ack{}
}

// TestAbortRollbackRetransmit: the fleet's other commands, as
// docs/PROTOCOL.md specifies them.
func TestAbortRollbackRetransmit(t *testing.T) {
	f := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceShort, false)
	m2, _ := describe(t, "face", 2, testmodel.FaceShort, false)
	m3, b3 := describe(t, "face", 3, testmodel.FaceFull, false)
	rec := &recorder{}
	src := newMemSource(b1, b3)
	d := newDevice(t, t.TempDir(), f, src, withReports(rec))
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Equal(t, Committed, d.waitJob(t, "c1").State)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c2", "r2", m2)))
	require.Equal(t, Committed, d.waitJob(t, "c2").State)

	// Rollback of the running version: back to v1.
	require.NoError(t, d.u.HandleCommand(f.rollback(t, "rb", "r2", "face", 2)))
	j := d.waitJob(t, "rb")
	require.Equal(t, RolledBack, j.State)
	require.Contains(t, j.Error, "gate failed")
	require.Equal(t, int64(1), d.serving(t, "face"))
	require.Equal(t, []State{RollingBack, RolledBack}, rec.waitStates(t, "rb"))
	// Again: nothing to roll back.
	require.NoError(t, d.u.HandleCommand(f.rollback(t, "rb2", "r2", "face", 2)))
	a := rec.last(t, "rb2")
	require.Equal(t, RolledBack, a.State)
	require.Contains(t, a.Detail, "nothing to roll back")

	// An abort cancels an update that has not been activated.
	src.blocked.Store(true)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c3", "r3", m3)))
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j.CommandID == "c3" && j.State == Downloading }, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, d.u.HandleCommand(f.abort(t, "a3", "r3")))
	j = d.waitJob(t, "c3")
	require.Equal(t, Failed, j.State)
	require.Equal(t, "aborted", j.Error)
	a = rec.last(t, "a3")
	require.Equal(t, Failed, a.State)
	require.Equal(t, "aborted", a.Error)
	require.Equal(t, int64(1), d.serving(t, "face"))

	// A retransmitted install carries on the update under way and answers
	// to the new id; the download does not start again.
	require.NoError(t, d.u.HandleCommand(f.install(t, "c4", "r4", m3)))
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j.CommandID == "c4" && j.State == Downloading }, 30*time.Second, 10*time.Millisecond)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c4b", "r4", m3)))
	require.Equal(t, Downloading, rec.last(t, "c4b").State)
	src.blocked.Store(false)
	j = d.waitJob(t, "c4b")
	require.Equal(t, Committed, j.State)
	require.Equal(t, int64(3), d.serving(t, "face"))
	require.Equal(t, []State{Downloading, Verifying, Staged, Validating, Activating, Probation, Committed}, rec.waitStates(t, "c4b"))

	// An abort after activation leaves the version alone and says so.
	require.NoError(t, d.u.HandleCommand(f.abort(t, "a4", "r4")))
	a = rec.last(t, "a4")
	require.Equal(t, Committed, a.State)
	require.Equal(t, int64(3), d.serving(t, "face"))
	n, err := d.u.VerifyAudit()
	require.NoError(t, err)
	require.Positive(t, n)
}

func requireNoLeftovers(t *testing.T, d *device) {
	t.Helper()
	ents, err := osReadDir(d.u.work)
	require.NoError(t, err)
	require.Empty(t, ents, "work directory not cleaned")
}

// TestRollbackDuringProbation: a rollback command for the version in
// probation rolls it back at once, and the command's own ack says so.
func TestRollbackDuringProbation(t *testing.T) {
	f := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceShort, false)
	m2, b2 := describe(t, "face", 2, testmodel.FaceFull, false)
	src := newMemSource(b1, b2)
	dir := t.TempDir()
	d := newDevice(t, dir, f, src, nil)
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Equal(t, Committed, d.waitJob(t, "c1").State)
	d.stop(t)

	rec := &recorder{}
	d = newDevice(t, dir, f, src, func(o *Options) { withReports(rec)(o); o.Probation = time.Hour })
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c2", "r2", m2)))
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j.State == Probation }, 30*time.Second, 5*time.Millisecond)
	require.Equal(t, int64(2), d.serving(t, "face"))
	require.NoError(t, d.u.HandleCommand(f.rollback(t, "rb", "r2", "face", 2)))
	j := d.waitJob(t, "c2")
	require.Equal(t, RolledBack, j.State)
	require.Contains(t, j.Error, "rollback ordered by the fleet")
	require.Equal(t, int64(1), d.serving(t, "face"))
	// rec.last may fail the test: asked here, not in require.Eventually's
	// goroutine.
	a := rec.last(t, "rb")
	for deadline := time.Now().Add(30 * time.Second); a.State != RolledBack && time.Now().Before(deadline); a = rec.last(t, "rb") {
		time.Sleep(10 * time.Millisecond)
	}
	require.Equal(t, RolledBack, a.State, "the rollback's last ack")
	require.Contains(t, a.Detail, "rolled back: rollback ordered by the fleet")
}
