//go:build cgo

package updater

import (
	"os"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/store"
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
	require.ErrorIs(t, err, store.ErrNotFound, "the aborted model was installed")
}

// TestSmallDownloadKeepsEveryChunk: a model far smaller than any batch of
// progress marks (14 chunks, 224 KiB) has every chunk written recorded as
// soon as nothing else is waiting, so a device that stops half way asks
// from there, never from chunk 0; and progress acks went out on the way.
func TestSmallDownloadKeepsEveryChunk(t *testing.T) {
	f := newTestFleet(t)
	m, b := describe(t, "face", 1, testmodel.FaceShort, false)
	total := int((m.Length + testChunk - 1) / testChunk)
	require.Less(t, m.Length, int64(256<<10))
	src := newMemSource(b)
	src.limit.Store(5)
	dir := t.TempDir()
	rec := &recorder{}
	// A chunk timeout longer than the test: only the durable mark and the
	// ask at start can make progress.
	slow := func(o *Options) { withReports(rec)(o); o.ChunkTimeout = time.Hour }
	d := newDevice(t, dir, f, src, slow)
	d.start(t)
	require.NoError(t, d.u.HandleCommand(f.install(t, "c1", "r1", m)))
	// The transfer stalls after 5 chunks; all 5 are durable (read back
	// from updater.db, not from the running job).
	require.Eventually(t, func() bool { j, _ := d.u.Job(); return j != nil && j.Done == 5 }, 30*time.Second, 5*time.Millisecond)
	var progress []int64
	require.Eventually(t, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		progress = progress[:0]
		for _, a := range rec.acks {
			if a.State == Downloading && a.Progress > 0 {
				progress = append(progress, a.Progress)
			}
		}
		// An ack about every tenth (2 chunks of 14).
		return len(progress) > 0 && progress[len(progress)-1] >= 4*testChunk
	}, 30*time.Second, 5*time.Millisecond, "no progress ack for the chunks held")
	require.LessOrEqual(t, d.u.UpdateStatus().Progress, int64(5*testChunk))
	d.stop(t)

	src.mu.Lock()
	src.firsts = nil
	src.mu.Unlock()
	src.limit.Store(0)
	d = newDevice(t, dir, f, src, slow)
	d.start(t)
	j := d.waitJob(t, "c1")
	require.Equal(t, Committed, j.State, j.Error)
	src.mu.Lock()
	firsts := src.firsts
	src.mu.Unlock()
	require.NotEmpty(t, firsts)
	require.Equal(t, 5, firsts[0], "the restarted download asked from chunk %d", firsts[0])
	for _, first := range firsts {
		require.GreaterOrEqual(t, first, 5)
	}
	rec.mu.Lock()
	progress = progress[:0]
	for _, a := range rec.acks {
		if a.State == Downloading && a.Progress > 0 {
			progress = append(progress, a.Progress)
		}
	}
	rec.mu.Unlock()
	t.Logf("progress acks (bytes) for %d chunks: %v", total, progress)
	require.GreaterOrEqual(t, len(progress), 3, "about one ack per 10%% of the artifact")
	got, _, err := d.store.Load("face")
	require.NoError(t, err)
	require.Equal(t, b, got)
}
