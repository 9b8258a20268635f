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
	"time"

	"github.com/outpost-edge/outpost/internal/atomicfile"
)

// output is the results file: one JSON record per line, in input order,
// record i holding "index": i. One goroutine at a time calls write (the
// workers, under the queue's lock), and close once they are done. Records
// go to the file through a 1 MiB buffer, and at least every syncEvery; a
// goroutine of its own syncs them, so the wait for a slow disk (an SD card)
// never stalls the interpreters.
type output struct {
	f         *os.File
	w         *bufio.Writer
	syncEvery time.Duration
	lastFlush time.Time
	dirty     bool

	kick   chan struct{} // a flush happened: sync the file (capacity 1)
	synced chan error    // the syncer's result, when it stops
}

// writeback is the file under the output's buffer: after each write it
// has the kernel start writing those bytes to the disk, without waiting
// (startWriteback), so that a sync finds little left to write. Without it
// the sync at the end of a run waited for everything written since the
// last one: about 30 ms for the 16 MB that 200 items of face detection
// write here, a tenth of such a run.
type writeback struct {
	f   *os.File
	off int64
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if n > 0 {
		startWriteback(w.f, w.off, int64(n))
		w.off += int64(n)
	}
	return n, err
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
		f: f, w: bufio.NewWriterSize(&writeback{f: f, off: off}, 1<<20), syncEvery: syncEvery, lastFlush: time.Now(),
		kick: make(chan struct{}, 1), synced: make(chan error, 1),
	}
	go o.syncer()
	return o, rec, nil
}

// syncer fsyncs the file after each flush until kick is closed, and reports
// its first error on synced.
func (o *output) syncer() {
	var first error
	for range o.kick {
		if err := o.f.Sync(); err != nil && first == nil {
			first = fmt.Errorf("batch: output: sync: %w", err)
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

// write appends one record (which ends in '\n'); every syncEvery the
// buffered records go to the file and the syncer is asked to sync it.
func (o *output) write(line []byte) error {
	if _, err := o.w.Write(line); err != nil {
		return fmt.Errorf("batch: output: %w", err)
	}
	o.dirty = true
	if time.Since(o.lastFlush) >= o.syncEvery {
		return o.flush()
	}
	return nil
}

func (o *output) flush() error {
	if !o.dirty {
		return nil
	}
	if err := o.w.Flush(); err != nil {
		return fmt.Errorf("batch: output: %w", err)
	}
	o.dirty, o.lastFlush = false, time.Now()
	select {
	case o.kick <- struct{}{}:
	default: // a sync is pending; it will cover this flush too
	}
	return nil
}

// close flushes what is buffered, stops the syncer, syncs a last time and
// closes the file.
func (o *output) close() error {
	err := o.flush()
	close(o.kick)
	serr := <-o.synced
	if err == nil {
		if err = o.f.Sync(); err != nil {
			err = fmt.Errorf("batch: output: sync: %w", err)
		}
	}
	return errors.Join(err, serr, o.f.Close())
}
