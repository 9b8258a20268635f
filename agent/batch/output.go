package batch

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/internal/atomicfile"
)

// output is the results file: one JSON record per line, in input order,
// record i holding "index": i. One goroutine at a time calls write (the
// workers, under the queue's lock), and close once they are done.
//
// write only copies a record into a 1 MiB buffer. A full buffer, or one
// that has waited syncEvery, goes to a goroutine of its own (flusher) that
// writes it to the file, and has the kernel start writing it to the disk;
// a third (syncer) fsyncs after each buffer that waited. So a worker never
// waits for the disk unless all outputBuffers are in the flusher's hands:
// the run then goes at the disk's pace, in bounded memory. Measured
// (docs/MODES.md, "Throughput"): a write could hold the flusher for 10 ms,
// and the workers waited under 1 ms in all of a 2,000-item run; the real
// binary did 2.7% more items a second than when the workers wrote the file
// themselves (median of 8 interleaved runs each).
type output struct {
	f         *os.File
	buf       []byte // records not yet handed to the flusher
	syncEvery time.Duration
	lastFlush time.Time

	free    chan []byte  // empty buffers
	full    chan chunk   // buffers for the flusher
	failed  atomic.Value // the flusher's first error, once it has one
	flushed chan error   // the flusher's first error, when it stops

	kick   chan struct{} // a buffer that waited is written: sync (capacity 1)
	synced chan error    // the syncer's result, when it stops
}

// outputBuffers is how many 1 MiB buffers a run has: one filling, one
// being written, one waiting.
const outputBuffers = 3

// chunk is a buffer of records on its way to the file; sync asks for an
// fsync once it is written.
type chunk struct {
	b    []byte
	sync bool
}

// recovered is what a resumed run finds in the output.
type recovered struct {
	keys    []string // keys of the records kept, record i for item i
	errors  int      // how many of them are error records
	dropped int64    // bytes cut off the end (a torn or invalid tail)
}

// openOutput opens path for appending records. Without resume an existing
// non-empty file is refused (ErrOutputExists). With resume it keeps the
// longest prefix of complete, valid records numbered 0, 1, 2, ... and cuts
// the rest off (see the package comment), synced before anything is added.
func openOutput(path string, resume bool, syncEvery time.Duration) (*output, recovered, error) {
	var rec recovered
	flags := os.O_RDWR | os.O_CREATE
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return nil, rec, fmt.Errorf("batch: output: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, rec, fmt.Errorf("batch: output: %w", err)
	}
	if fi.Size() > 0 && !resume {
		f.Close()
		return nil, rec, fmt.Errorf("%w: %s", ErrOutputExists, path)
	}
	if fi.Size() > 0 {
		keep, err := scanRecords(f, &rec)
		if err != nil {
			f.Close()
			return nil, rec, err
		}
		rec.dropped = fi.Size() - keep
		if rec.dropped > 0 {
			if err := f.Truncate(keep); err != nil {
				f.Close()
				return nil, rec, fmt.Errorf("batch: output: drop torn tail: %w", err)
			}
		}
		if _, err := f.Seek(keep, io.SeekStart); err != nil {
			f.Close()
			return nil, rec, fmt.Errorf("batch: output: %w", err)
		}
	}
	// The file (new, or cut) is durable before the first record goes in.
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, rec, fmt.Errorf("batch: output: sync: %w", err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(path)); err != nil {
		f.Close()
		return nil, rec, fmt.Errorf("batch: output: %w", err)
	}
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		f.Close()
		return nil, rec, fmt.Errorf("batch: output: %w", err)
	}
	o := &output{
		f: f, buf: make([]byte, 0, 1<<20), syncEvery: syncEvery, lastFlush: time.Now(),
		free: make(chan []byte, outputBuffers), full: make(chan chunk, outputBuffers), flushed: make(chan error, 1),
		kick: make(chan struct{}, 1), synced: make(chan error, 1),
	}
	for range outputBuffers - 1 {
		o.free <- make([]byte, 0, 1<<20)
	}
	go o.flusher(off)
	go o.syncer()
	return o, rec, nil
}

// flusher writes each buffer it is handed at off, and the offsets after,
// then gives it back. After each write it has the kernel start writing
// those bytes to the disk without waiting (startWriteback), so that a sync
// finds little left to write: without it the sync at the end of a run
// waited for everything written since the last one, about 30 ms for the
// 16 MB that 200 items of face detection write here, a tenth of such a
// run. After its first error it writes nothing more, and reports the error
// (to write, and on flushed when full is closed).
func (o *output) flusher(off int64) {
	var first error
	for c := range o.full {
		if first == nil {
			n, err := o.f.Write(c.b)
			if n > 0 {
				startWriteback(o.f, off, int64(n))
				off += int64(n)
			}
			if err != nil {
				first = fmt.Errorf("%w: %w", ErrOutput, err)
				o.failed.Store(first)
			} else if c.sync {
				select {
				case o.kick <- struct{}{}:
				default: // a sync is pending; it will cover this write too
				}
			}
		}
		o.free <- c.b[:0]
	}
	o.flushed <- first
}

// syncer fsyncs the file after each buffer that waited syncEvery is
// written, until kick is closed, and reports its first error on synced.
func (o *output) syncer() {
	var first error
	for range o.kick {
		if err := o.f.Sync(); err != nil && first == nil {
			first = fmt.Errorf("%w: sync: %w", ErrOutput, err)
		}
	}
	o.synced <- first
}

// recordHead is the part of a record resume checks.
type recordHead struct {
	Index int
	Key   string
	Error bool // an error record
}

// scanRecords reads the records from the start of f and returns the length
// of the valid prefix: complete lines (ending in '\n') of valid JSON whose
// index is their line number. The first line that is not stops the scan.
func scanRecords(f *os.File, rec *recovered) (int64, error) {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return 0, fmt.Errorf("batch: output: %w", err)
	}
	r := bufio.NewReaderSize(f, 1<<20)
	var keep int64
	var line []byte
	for {
		line = line[:0]
		var err error
		for {
			var chunk []byte
			chunk, err = r.ReadSlice('\n')
			line = append(line, chunk...)
			if !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		if err == io.EOF {
			return keep, nil // a line without its newline is torn
		}
		if err != nil {
			return 0, fmt.Errorf("batch: output: read: %w", err)
		}
		n := len(rec.keys)
		h, ok := parseHead(line)
		if !ok || h.Index != n {
			return keep, nil
		}
		rec.keys = append(rec.keys, h.Key)
		if h.Error {
			rec.errors++
		}
		keep += int64(len(line))
	}
}

// parseHead checks a record line; ok is false unless the whole line is
// valid JSON that starts as the writer starts records:
// {"index":N,"key":"K", then "result" or "error". Only the head is decoded.
func parseHead(line []byte) (recordHead, bool) {
	var h recordHead
	if !json.Valid(line) {
		return h, false
	}
	d := json.NewDecoder(bytes.NewReader(line))
	d.UseNumber()
	var toks [6]json.Token
	for i := range toks {
		t, err := d.Token()
		if err != nil {
			return h, false
		}
		toks[i] = t
	}
	n, ok := toks[2].(json.Number)
	key, kok := toks[4].(string)
	if toks[0] != json.Delim('{') || toks[1] != "index" || !ok || toks[3] != "key" || !kok {
		return h, false
	}
	i, err := strconv.Atoi(string(n))
	if err != nil || (toks[5] != "result" && toks[5] != "error") {
		return h, false
	}
	return recordHead{Index: i, Key: key, Error: toks[5] == "error"}, true
}

// write appends one record (which ends in '\n') to the buffer. A full
// buffer, or one that has waited syncEvery, goes to the flusher; write
// then waits for an empty one. It returns the flusher's error, if any.
func (o *output) write(line []byte) error {
	if err, _ := o.failed.Load().(error); err != nil {
		return err
	}
	if len(o.buf) > 0 && len(o.buf)+len(line) > cap(o.buf) {
		o.handOff(false)
	}
	o.buf = append(o.buf, line...)
	if time.Since(o.lastFlush) >= o.syncEvery {
		o.handOff(true)
	}
	return nil
}

// handOff gives the buffer to the flusher and takes an empty one.
func (o *output) handOff(sync bool) {
	o.full <- chunk{b: o.buf, sync: sync}
	o.buf = <-o.free
	if sync {
		o.lastFlush = time.Now()
	}
}

// close writes what is buffered, stops the flusher and the syncer, syncs
// a last time (after a failed write too: what was written is kept for a
// resume) and closes the file.
func (o *output) close() error {
	if len(o.buf) > 0 {
		o.full <- chunk{b: o.buf}
	}
	close(o.full)
	err := <-o.flushed
	close(o.kick)
	serr := <-o.synced
	if serr == nil {
		if e := o.f.Sync(); e != nil {
			serr = fmt.Errorf("%w: sync: %w", ErrOutput, e)
		}
	}
	return errors.Join(err, serr, o.f.Close())
}
