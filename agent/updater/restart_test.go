//go:build cgo

package updater

import (
	"os"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/stretchr/testify/require"
)

// TestDownloadResumes: on a link that loses and corrupts chunks, with the
// agent stopped half way, the download refuses the bad chunks, resumes from
// what it held and completes; far less than twice the artifact crosses the
// link, and the installed bytes are the signed ones.
func TestDownloadResumes(t *testing.T) {
	f := newTestFleet(t)
	m, b := describe(t, "hand", 1, testmodel.Hand, false)
	src := newMemSource(b)
	src.flaky.Store(true)
	dir := t.TempDir()
	d := newDevice(t, dir, f, src, func(o *Options) { o.ChunkTimeout = 200 * time.Millisecond })
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m)))
	total := int((m.Length + testChunk - 1) / testChunk)
	require.Eventually(t, func() bool {
		j, _ := d.u.Job()
		if j == nil {
			return false
		}
		return j.State == Downloading && j.Done > total/3
	}, 60*time.Second, 5*time.Millisecond)
	d.stop(t)
	require.Positive(t, counterValue(t, d.u.metrics.badChunks), "no corrupt chunk was refused")
	src.mu.Lock()
	before := src.requested
	src.firsts = nil
	src.mu.Unlock()
	d = newDevice(t, dir, f, src, func(o *Options) { o.ChunkTimeout = 200 * time.Millisecond })
	j, err := d.u.Job()
	require.NoError(t, err)
	require.Equal(t, Downloading, j.State)
	require.GreaterOrEqual(t, j.Done, 16, "nothing durable")
	j0 := j.Done
	st, err := os.Stat(d.u.partialPath(j))
	require.NoError(t, err)
	require.GreaterOrEqual(t, st.Size(), int64(j.Done)*testChunk, "partial file shorter than its durable mark")

	d.start(t)
	j = d.waitJob(t, "c1")
	require.Equal(t, Committed, j.State, j.Error)
	src.mu.Lock()
	after := src.requested - before
	firsts := src.firsts
	src.mu.Unlock()
	require.NotEmpty(t, firsts)
	for _, first := range firsts {
		require.GreaterOrEqual(t, first, j0, "asked for chunk %d after the restart, %d were held", first, j0)
	}
	// A fifth of what is sent is lost and a seventh damaged: about 1.5
	// times the rest crosses the link, not the whole artifact again.
	remaining := m.Length - int64(j0)*testChunk
	require.Less(t, after, 2*remaining, "after the restart %d bytes were fetched for %d", after, remaining)
	got, e, err := d.store.Load("hand")
	require.NoError(t, err)
	require.Equal(t, b, got)
	require.Equal(t, m.SHA256, e.Manifest.SHA256)
}

// TestAbortSurvivesRestart: an abort that arrived just before the agent
// went down is carried out when it comes back, before the update goes on.
func TestAbortSurvivesRestart(t *testing.T) {
	f := newTestFleet(t)
	m, b := describe(t, "face", 1, testmodel.FaceShort, false)
	src := newMemSource(b)
	src.blocked.Store(true)
	dir := t.TempDir()
	d := newDevice(t, dir, f, src, nil)
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m)))
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j != nil && j.State == Downloading }, 30*time.Second, 5*time.Millisecond)
	d.stop(t)

	// The abort is queued by an agent whose Run never gets to it.
	d = newDevice(t, dir, f, src, nil)
	require.NoError(t, d.u.HandleCommand(f.abort(t, "a1", "r1")))
	require.NoError(t, d.u.Close())
	d.reg.Close()

	src.blocked.Store(false)
	d = newDevice(t, dir, f, src, nil)
	d.start(t)
	j := d.waitJob(t, "c1")
	require.Equal(t, Failed, j.State)
	require.Equal(t, "aborted", j.Error)
	_, err := d.store.Current("face")
	require.Error(t, err, "the aborted model was installed")
}
