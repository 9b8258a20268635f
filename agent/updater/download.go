package updater

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/outpost-edge/outpost/internal/atomicfile"
)

// ChunkSource fetches an artifact in numbered chunks (the MQTT link
// implements it). The artifact is named by the hex sha256 of its bytes;
// chunk i holds bytes [i*ChunkSize, (i+1)*ChunkSize) and the last one may be
// shorter.
//
// Request must not block for long; chunks arrive on the channel Chunks
// returns, in any order, possibly twice, possibly never (the downloader asks
// again). A source must never block its own network reader on that channel:
// it drops chunks when it is full. Both are called from one goroutine.
type ChunkSource interface {
	Request(ctx context.Context, r ChunkRequest) error
	Chunks() <-chan Chunk
}

// ChunkRequest asks for Count chunks of an artifact from index First on.
type ChunkRequest struct {
	Artifact  string // hex sha256 of the whole artifact
	ChunkSize int
	First     int
	Count     int
}

// Chunk is one received chunk. Hash is the sha256 of Data as the sender
// computed it; the downloader checks it before the bytes touch the disk.
type Chunk struct {
	Artifact string
	Index    int
	Hash     [32]byte
	Data     []byte
	// Err, when set, says the source cannot serve the artifact (the
	// protocol's error chunk); the install fails with it.
	Err string
}

func (u *Updater) partialPath(j *Job) string { return filepath.Join(u.jobDir(j), "model.partial") }

// ConnectNotifier may be implemented by a ChunkSource whose link drops and
// comes back (the MQTT link): Connected's channel receives a value after
// every connection (it may coalesce several), so that a download asks for
// its missing chunks at once rather than after Options.ChunkTimeout.
// Requests made while the link was down are lost.
type ConnectNotifier interface {
	Connected() <-chan struct{}
}

// Progress acks go out during a download every progressStep of the
// artifact or progressEvery, whichever comes first.
const (
	progressStep  = 10 // percent
	progressEvery = 5 * time.Second
)

// stepDownload fetches the rest of j's artifact, resuming after j.Done
// chunks, and moves j to verifying. Memory is one window of chunks.
//
// Chunks are written in order, so the partial file is always a prefix of
// the artifact; one that arrives ahead of a gap waits in memory (at most a
// window). Progress is made durable by group commit: after a chunk is
// written, once no further chunk is waiting in the source's buffer (or a
// window or a tenth of the artifact was written since the last sync), the
// file is synced and j.Done saved. A crash loses only the chunks of the
// group being written then, never a chunk reported in an ack or the
// status.
func (u *Updater) stepDownload(ctx context.Context, j *Job) error {
	src := u.opts.Source
	if src == nil {
		return u.transition(j, Failed, ErrNoSource.Error())
	}
	if err := os.MkdirAll(u.jobDir(j), 0o755); err != nil {
		return fmt.Errorf("updater: download: %w", err)
	}
	total := int((j.Length + int64(j.ChunkSize) - 1) / int64(j.ChunkSize))
	if _, err := os.Stat(u.modelPath(j)); err == nil && j.Done == total {
		// A crash came between the rename below and the transition.
		return u.transition(j, Verifying, fmt.Sprintf("%d bytes in %d chunks", j.Length, total))
	}
	f, err := os.OpenFile(u.partialPath(j), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("updater: download: %w", err)
	}
	defer f.Close()
	// Bytes past the durable mark were written but never recorded: drop them.
	good := int64(j.Done) * int64(j.ChunkSize)
	if st, err := f.Stat(); err != nil {
		return fmt.Errorf("updater: download: %w", err)
	} else if st.Size() < good {
		// The file lost what was recorded (it was removed or cut): keep
		// the whole chunks it still has.
		j.Done = int(st.Size() / int64(j.ChunkSize))
		good = int64(j.Done) * int64(j.ChunkSize)
	}
	if err := f.Truncate(good); err != nil {
		return fmt.Errorf("updater: download: %w", err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		return fmt.Errorf("updater: download: %w", err)
	}
	if j.Done > 0 {
		u.log.Info("resuming download", "model", j.Model, "version", j.Version, "chunk", j.Done, "of", total)
	}
	var connected <-chan struct{}
	if cn, ok := src.(ConnectNotifier); ok {
		connected = cn.Connected()
	}

	window := u.opts.Window
	step := max(1, (total*progressStep+99)/100) // chunks between progress acks
	held := map[int][]byte{}                    // received ahead of j.Done, within the window
	requested := j.Done                         // chunks [j.Done, requested) were asked for
	durable := j.Done                           // chunks synced and recorded
	syncs, start0 := 0, j.Done
	lastReport, lastReportAt := j.Done, time.Now()
	crashed := false
	// retry is how soon a request that could not be sent is tried again:
	// short at first, so a link that is coming up is used at once.
	retry := 100 * time.Millisecond
	ask := func(from int) error {
		// Never past the window: chunks beyond it would be dropped.
		n := min(j.Done+window, total) - from
		if n <= 0 {
			return nil
		}
		requested = from + n
		return src.Request(ctx, ChunkRequest{Artifact: j.SHA256, ChunkSize: j.ChunkSize, First: from, Count: n})
	}
	persist := func() error {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("updater: download: %w", err)
		}
		if err := u.saveProgress(j); err != nil {
			return err
		}
		durable = j.Done
		syncs++
		if !crashed && j.Done*2 >= total {
			crashed = true
			u.crashAt("updater-chunk")
		}
		u.setCur(j)
		if j.Done < total && (j.Done-lastReport >= step || time.Since(lastReportAt) >= progressEvery) {
			lastReport, lastReportAt = j.Done, time.Now()
			u.report(ctx, j.ack(""))
		}
		return nil
	}
	timer := time.NewTimer(0) // ask at once
	defer timer.Stop()
	for j.Done < total {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-connected:
			// A new connection: what was asked before may be lost. Ask
			// again from the first chunk not held, at once.
			requested = j.Done
			retry = 100 * time.Millisecond
			timer.Reset(0)
		case <-timer.C:
			// Nothing came for a while (or this is the start): ask again
			// for the first gap only, up to the next chunk held.
			n := 1
			for j.Done+n < min(requested, total) && held[j.Done+n] == nil {
				n++
			}
			if requested <= j.Done {
				n = min(window, total-j.Done)
			}
			if err := src.Request(ctx, ChunkRequest{Artifact: j.SHA256, ChunkSize: j.ChunkSize, First: j.Done, Count: n}); err != nil {
				// Offline: try again soon; the link's Connected, if it
				// has one, says when.
				u.log.Debug("chunk request", "err", err)
				timer.Reset(min(retry, u.opts.ChunkTimeout))
				retry = min(2*retry, u.opts.ChunkTimeout)
				continue
			}
			retry = 100 * time.Millisecond
			requested = max(requested, j.Done+n)
			timer.Reset(u.opts.ChunkTimeout)
		case c := <-src.Chunks():
			if c.Err != "" && c.Artifact == j.SHA256 {
				u.cleanup()
				return u.transition(j, Failed, "download: "+c.Err)
			}
			if c.Artifact != j.SHA256 || c.Index < j.Done || c.Index >= j.Done+window || held[c.Index] != nil {
				continue // stale, duplicate or far ahead
			}
			if err := checkChunk(c, j, total); err != nil {
				u.metrics.badChunks.Inc()
				u.log.Warn("chunk refused", "index", c.Index, "err", err)
				// Damaged on the way: ask for it again at once.
				if err := src.Request(ctx, ChunkRequest{Artifact: j.SHA256, ChunkSize: j.ChunkSize, First: c.Index, Count: 1}); err != nil {
					u.log.Warn("chunk request", "err", err)
				}
				continue
			}
			held[c.Index] = c.Data
			for held[j.Done] != nil {
				b := held[j.Done]
				delete(held, j.Done)
				if _, err := f.Write(b); err != nil {
					return fmt.Errorf("updater: download: %w", err)
				}
				u.metrics.bytes.Add(float64(len(b)))
				j.Done++
			}
			// Group commit: sync once nothing else is waiting, and at
			// least every window or progress step.
			if j.Done > durable && (len(src.Chunks()) == 0 || j.Done-durable >= min(window, step) || j.Done == total) {
				if err := persist(); err != nil {
					return err
				}
			}
			timer.Reset(u.opts.ChunkTimeout)
			if requested-j.Done <= window/2 && requested < total {
				if err := ask(requested); err != nil {
					u.log.Warn("chunk request", "err", err)
				}
			}
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("updater: download: %w", err)
	}
	if err := os.Rename(u.partialPath(j), u.modelPath(j)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("updater: download: %w", err)
	}
	if err := atomicfile.SyncDir(u.jobDir(j)); err != nil {
		return fmt.Errorf("updater: download: %w", err)
	}
	u.log.Info("download complete", "model", j.Model, "version", j.Version, "chunks", total-start0, "syncs", syncs)
	return u.transition(j, Verifying, fmt.Sprintf("%d bytes in %d chunks", j.Length, total))
}

// checkChunk checks a chunk's hash and size against its place in j's
// artifact.
func checkChunk(c Chunk, j *Job, total int) error {
	want := j.ChunkSize
	if c.Index == total-1 {
		want = int(j.Length - int64(total-1)*int64(j.ChunkSize))
	}
	if len(c.Data) != want {
		return fmt.Errorf("%w: chunk %d has %d bytes, want %d", ErrChunk, c.Index, len(c.Data), want)
	}
	sum := sha256.Sum256(c.Data)
	if !bytes.Equal(sum[:], c.Hash[:]) {
		return fmt.Errorf("%w: chunk %d does not match its hash", ErrChunk, c.Index)
	}
	return nil
}
