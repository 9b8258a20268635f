//go:build cgo

package updater

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/internal/crashpoint"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/models/tflite"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestCrashHelper is not a test: TestCrash runs the test binary again with
// it, so that a crash point can SIGKILL a real process in the middle of an
// update. It plays the commands in OUTPOST_UPDATER_HELPER_DIR/cmd-*.json.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv("OUTPOST_UPDATER_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestCrash")
	}
	f := &testFleet{rootPath: filepath.Join(dir, "root.json")}
	src := newMemSource(testmodel.Read(t, testmodel.FaceShort), testmodel.Read(t, testmodel.FaceFull))
	if trials, _ := filepath.Glob(filepath.Join(dir, "trial-*.json")); len(trials) > 0 {
		src.add(testmodel.Read(t, testmodel.HandFull)) // TestCrashTrial's candidate
	}
	d := newDevice(t, dir, f, src, nil)
	d.start(t)
	cmds, _ := filepath.Glob(filepath.Join(dir, "cmd-*.json"))
	for _, c := range cmds {
		b, err := os.ReadFile(c)
		require.NoError(t, err)
		require.NoError(t, d.u.HandleCommand(b))
		id := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(c), "cmd-"), ".json")
		d.waitJob(t, id)
	}
	// Trial commands are sent together (a later one changes the trial of
	// an earlier one), then the helper waits to be killed.
	trials, _ := filepath.Glob(filepath.Join(dir, "trial-*.json"))
	for _, c := range trials {
		b, err := os.ReadFile(c)
		require.NoError(t, err)
		require.NoError(t, d.u.HandleCommand(b))
	}
	if len(trials) > 0 {
		id := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(trials[len(trials)-1]), "trial-"), ".json")
		d.waitJob(t, id)
	}
	time.Sleep(time.Second) // a crash point not reached is a failure of the parent
}

// crashCase is a crash point and what the device must end with after it
// restarts: the final state of the last command's job and the version the
// store and the registry hold.
type crashCase struct {
	point   string
	rollbck bool // the commands end with a rollback of v2
	state   State
	version int64
	// storeAt is the store's current version right after the crash.
	storeAt int64
	// maxBoots, if set, is the restarted device's MaxProbationBoots.
	maxBoots int
}

// crashCases: every state of an install and of a rollback, and the store's
// own crash points inside them. OUTPOST_CRASH_LOOPS=N runs them all N
// times (default once, about 15 s under -race).
var crashCases = []crashCase{
	{point: "updater-downloading", state: Committed, version: 2, storeAt: 1},
	{point: "updater-chunk", state: Committed, version: 2, storeAt: 1},
	{point: "updater-verifying", state: Committed, version: 2, storeAt: 1},
	{point: "updater-staged", state: Committed, version: 2, storeAt: 1},
	{point: "updater-validating", state: Committed, version: 2, storeAt: 1},
	{point: "updater-activating", state: Committed, version: 2, storeAt: 1},
	{point: "blob-synced", state: Committed, version: 2, storeAt: 1},
	{point: "entry-renamed", state: Committed, version: 2, storeAt: 1},
	{point: "state-synced", state: Committed, version: 2, storeAt: 1},
	{point: "state-renamed", state: Committed, version: 2, storeAt: 2},
	{point: "done", state: Committed, version: 2, storeAt: 2},
	{point: "updater-installed", state: Committed, version: 2, storeAt: 2},
	{point: "updater-probation", state: Committed, version: 2, storeAt: 2},
	// A model that takes the agent down during probation must not keep it
	// in a crash loop: with one boot allowed, the restart rolls back.
	{point: "updater-probation", state: RolledBack, version: 1, storeAt: 2, maxBoots: 1},
	{point: "updater-committed", state: Committed, version: 2, storeAt: 2},
	{point: "updater-rolling_back", rollbck: true, state: RolledBack, version: 1, storeAt: 2},
	{point: "rollback-synced", rollbck: true, state: RolledBack, version: 1, storeAt: 2},
	{point: "rollback-renamed", rollbck: true, state: RolledBack, version: 1, storeAt: 1},
	{point: "updater-store-rolled-back", rollbck: true, state: RolledBack, version: 1, storeAt: 1},
	{point: "updater-rolled_back", rollbck: true, state: RolledBack, version: 1, storeAt: 1},
}

// TestCrash kills a device with SIGKILL at each crash point of an update
// from v1 to v2 (and of a rollback back to v1), then restarts it: it must
// serve a loadable current model right away, resume (or roll back) to the
// expected end, keep a valid audit trail and leave no work files.
func TestCrash(t *testing.T) {
	if !crashpoint.Enabled {
		t.Skip("crash points need -tags outposttest (make test passes it)")
	}
	f := newTestFleet(t)
	m1, _ := describe(t, "face", 1, testmodel.FaceShort, false)
	// No golden vectors: their JSON is what costs under -race, and
	// validation has its own tests.
	m2, _ := describe(t, "face", 2, testmodel.FaceFull, false)
	// A device with v1 committed, copied for each case.
	tmpl := t.TempDir()
	d := newDevice(t, tmpl, f, newMemSource(testmodel.Read(t, testmodel.FaceShort)), nil)
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Equal(t, Committed, d.waitJob(t, "c1").State)
	d.stop(t)
	rootJSON, err := os.ReadFile(f.rootPath)
	require.NoError(t, err)

	loops, _ := strconv.Atoi(os.Getenv("OUTPOST_CRASH_LOOPS"))
	var cases []crashCase
	for range max(loops, 1) {
		cases = append(cases, crashCases...)
	}
	for _, tc := range cases {
		name := tc.point
		if tc.maxBoots > 0 {
			name += "-crash-loop"
		}
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.CopyFS(dir, os.DirFS(tmpl)))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "root.json"), rootJSON, 0o644))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "cmd-c2.json"), f.install(t, "c2", "r2", m2), 0o644))
			last := "c2"
			if tc.rollbck {
				require.NoError(t, os.WriteFile(filepath.Join(dir, "cmd-rb.json"), f.rollback(t, "rb", "r2", "face", 2), 0o644))
				last = "rb"
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
			cmd.Env = append(os.Environ(), "OUTPOST_UPDATER_HELPER_DIR="+dir, "OUTPOST_CRASHPOINT="+tc.point)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, "helper exited: %s", out)
			ws, ok := ee.Sys().(syscall.WaitStatus)
			require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "helper was not killed: %v\n%s", err, out)

			// Right after the crash the store has one loadable current model.
			st, err := store.Open(filepath.Join(dir, "store"), store.Options{})
			require.NoError(t, err)
			b, e, err := st.Load("face")
			require.NoError(t, err)
			_, err = tflite.Read(b)
			require.NoError(t, err)
			require.Equal(t, tc.storeAt, e.Manifest.Version, "store right after the crash")

			// Restart: it resumes or rolls back.
			d := newDevice(t, dir, f, newMemSource(testmodel.Read(t, testmodel.FaceShort), testmodel.Read(t, testmodel.FaceFull)), func(o *Options) {
				if tc.maxBoots > 0 {
					o.MaxProbationBoots = tc.maxBoots
				}
			})
			d.start(t)
			j := d.waitJob(t, last)
			require.Equal(t, tc.state, j.State, j.Error)
			require.Equal(t, tc.version, d.serving(t, "face"))
			cur, err := d.store.Current("face")
			require.NoError(t, err)
			require.Equal(t, tc.version, cur.Manifest.Version)
			n, err := d.u.VerifyAudit()
			require.NoError(t, err)
			require.Positive(t, n)
			d.stop(t)
			requireNoLeftovers(t, d)
		})
	}
}

// TestCrashTrial kills a device with SIGKILL right after it entered shadow
// (and canary, changed by a second install before the first was held): the
// restarted device holds the candidate again in the same trial from the
// staged file, the serving version untouched, and a promotion then commits
// it.
func TestCrashTrial(t *testing.T) {
	if !crashpoint.Enabled {
		t.Skip("crash points need -tags outposttest (make test passes it)")
	}
	f := newTestFleet(t)
	m1, _ := describe(t, "hand", 1, testmodel.Hand, false)
	m2, _ := describe(t, "hand", 2, testmodel.HandFull, false)
	tmpl := t.TempDir()
	d := newDevice(t, tmpl, f, newMemSource(testmodel.Read(t, testmodel.Hand)), nil)
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m1)))
	require.Equal(t, Committed, d.waitJob(t, "c1").State)
	d.stop(t)
	rootJSON, err := os.ReadFile(f.rootPath)
	require.NoError(t, err)
	rel := f.release(t, m2, time.Hour)
	for _, tc := range []struct {
		point string
		state State
		cmds  []*protocol.Trial
	}{
		{"updater-shadow", Shadow, []*protocol.Trial{{Mode: protocol.TrialShadow, Percent: 10}}},
		{"updater-canary", Canary, []*protocol.Trial{{Mode: protocol.TrialShadow, Percent: 10}, {Mode: protocol.TrialCanary, Percent: 30}}},
	} {
		t.Run(tc.point, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.CopyFS(dir, os.DirFS(tmpl)))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "root.json"), rootJSON, 0o644))
			for i, tr := range tc.cmds {
				id := "t" + strconv.Itoa(i)
				require.NoError(t, os.WriteFile(filepath.Join(dir, "trial-"+id+".json"), f.trialInstall(t, id, "r2", m2, rel, tr, 0), 0o644))
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
			cmd.Env = append(os.Environ(), "OUTPOST_UPDATER_HELPER_DIR="+dir, "OUTPOST_CRASHPOINT="+tc.point, "OUTPOST_MODELS="+testmodel.Dir(t))
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, "helper exited: %s", out)
			ws, ok := ee.Sys().(syscall.WaitStatus)
			require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "helper was not killed: %v\n%s", err, out)

			d := newDevice(t, dir, f, newMemSource(), nil)
			j, err := d.u.Job()
			require.NoError(t, err)
			require.Equal(t, tc.state, j.State)
			d.start(t)
			deadline := time.Now().Add(30 * time.Second)
			c, held := d.candidate()
			for !held && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
				c, held = d.candidate()
			}
			require.True(t, held, "the restarted device holds no candidate")
			last := tc.cmds[len(tc.cmds)-1]
			assert.Equal(t, serving.Trial{Mode: serving.TrialMode(last.Mode), Percent: last.Percent}, c.Trial)
			assert.EqualValues(t, 1, d.serving(t, "hand"))

			require.NoError(t, d.u.HandleCommand(f.trialInstall(t, "p", "r2", m2, rel, nil, 0)))
			require.Equal(t, Committed, d.waitJob(t, "p").State)
			assert.EqualValues(t, 2, d.serving(t, "hand"))
			_, held = d.candidate()
			assert.False(t, held)
		})
	}
}
