// Package batch runs a model over a file or a directory of items and writes
// one JSON record per item to a results file (`outpost-agent batch`). Items
// go through the same interpreter pool the server uses (a Backend, which
// agent/serving's Registry is), run by one worker per interpreter that takes
// the next item from the input and writes its record itself, in order.
//
// Inputs (docs/MODES.md has examples):
//
//	DIR           every regular, non-hidden file, sorted by name: .json (a v2
//	              inference request), .npy (one tensor) or .bin/.raw (the raw
//	              little-endian bytes of the model's single input); key: the name
//	FILE.jsonl    every non-blank line is a v2 inference request; key: "line N"
//	FILE.npy      the first dimension counts the items, each row is one item
//	              of the model's single input; key: "row N" (from 0)
//
// Output: one line per item, in input order, record i carrying "index": i
// and the item's "key". A result is the v2 inference response with those two
// fields first: {"index":0,"key":"a.npy","model_name":...,"outputs":[...]}.
// A bad item (unreadable, unparsable, wrong shape or datatype) is
// {"index":1,"key":"b.json","error":"..."} and the run goes on.
//
// Durability and resume. Records are appended in index order through a
// buffer that is flushed and fsynced every Options.SyncEvery and at the end.
// The crash points, and what --resume (Options.Resume) finds:
//
//   - killed before the output file exists, or after it was created empty
//     (it is synced with its directory before any record): resume starts at
//     item 0;
//   - killed with records in the buffer, not yet written: they are missing
//     from the file; resume redoes them;
//   - killed amid a write (the buffer can split a line across writes): the
//     last line is torn, it has no newline; resume cuts it off and redoes it;
//   - power lost after writes that were not yet synced: the file may end
//     short, or in garbage (zeros); resume keeps the longest prefix of
//     complete lines that are valid JSON with "index" equal to their line
//     number, cuts the rest off, and syncs the cut before writing anything;
//   - killed amid that cut: the cut is made again on the next resume.
//
// Every run thus continues from a prefix holding items 0..k-1 exactly once
// and appends k, k+1, ... in order, so the finished file holds every item
// exactly once. Resume also checks that each kept record's key is the key of
// the item now at its index, and refuses (ErrInputChanged) if the input was
// changed under it. Proven by cmd/outpost-agent's TestBatchKillResume
// (SIGKILL of the real binary) and by TestResumeTornTail here.
package batch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	goruntime "runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/oip"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
)

// Backend runs inferences on served models; *serving.Registry is one. It
// must be safe for concurrent use. Lookup of a name it does not serve wraps
// catalog.ErrModelNotFound. Infer calls prepare with the entry of the model
// instance that will run (it may call it more than once), runs it on the
// inputs prepare returns, and calls emit with each output, once each, in
// the model's order, after the last prepare (the data is valid only during
// the call); prepare's and emit's errors come back unchanged, a queue that is
// full wraps catalog.ErrOverloaded.
type Backend interface {
	Lookup(name string, version int64) (catalog.Entry, error)
	Infer(ctx context.Context, name string, version int64,
		prepare func(catalog.Entry) ([][]byte, error), emit func(i int, data []byte) error,
	) (catalog.Entry, catalog.Timing, error)
}

// Options configure a Runner. Backend, Model, Input and Output are required.
type Options struct {
	Backend Backend
	Model   string // name of the model in Backend
	Input   string // a directory, a .jsonl file or an .npy file
	Output  string // the results file (JSON lines)
	// Resume continues an output left by an interrupted run; without it an
	// output that has records is refused (ErrOutputExists).
	Resume bool
	// Workers is the number of goroutines that decode, run and encode
	// items; default one per interpreter of the model, so that no
	// interpreter passes from one goroutine to another (docs/MODES.md,
	// "Throughput": twice as many, not yielding, was 1-19% slower).
	Workers int
	// Outputs says how each output's data is written: OutputsAuto (the
	// default) as JSON numbers up to Base64Above elements and as base64
	// above, OutputsJSON always as numbers, OutputsBase64 always as base64.
	Outputs OutputEncoding
	// MaxItemBytes bounds one item (a file or a line); default 64 MiB.
	MaxItemBytes int
	// SyncEvery is how often records are flushed and fsynced; default 1 s.
	SyncEvery time.Duration
	// Progress receives progress reports; nil draws none.
	Progress io.Writer
	// Terminal draws a bar redrawn in place every 200 ms instead of a line
	// every ProgressEvery (default 10 s).
	Terminal      bool
	ProgressEvery time.Duration
	Logger        *slog.Logger
}

// Runner runs one batch. Run it once.
type Runner struct {
	opts  Options
	log   *slog.Logger
	entry catalog.Entry

	done, errs atomic.Int64
	stats      Stats // set when Run returns
}

// New checks the options and that the backend serves the model.
func New(opts Options) (*Runner, error) {
	if opts.Backend == nil || opts.Model == "" || opts.Input == "" || opts.Output == "" {
		return nil, errors.New("batch: backend, model, input and output are required")
	}
	if opts.Outputs == "" {
		opts.Outputs = OutputsAuto
	}
	if _, err := ParseOutputEncoding(string(opts.Outputs)); err != nil {
		return nil, err
	}
	e, err := opts.Backend.Lookup(opts.Model, 0)
	if err != nil {
		return nil, fmt.Errorf("batch: %w", err)
	}
	if opts.Workers <= 0 {
		opts.Workers = max(e.Workers, 1)
	}
	if opts.MaxItemBytes <= 0 {
		opts.MaxItemBytes = 64 << 20
	}
	if opts.SyncEvery <= 0 {
		opts.SyncEvery = time.Second
	}
	if opts.ProgressEvery <= 0 {
		opts.ProgressEvery = 10 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runner{opts: opts, log: log.With("component", "batch"), entry: e}, nil
}

// Stats returns the counts of the finished run.
func (r *Runner) Stats() Stats { return r.stats }

// result is one encoded record on its way to the writer.
type result struct {
	index int
	line  []byte
	err   bool
}

// Run processes every item not yet in the output and returns when all are
// written and synced, when ctx is done (what was written is synced and can
// be resumed), or at the first fatal error.
func (r *Runner) Run(ctx context.Context) error {
	src, err := openSource(r.opts.Input, r.opts.MaxItemBytes)
	if err != nil {
		return err
	}
	defer src.Close()
	if rows, ok := src.(*npyRows); ok {
		in, err := single(r.entry)
		if err == nil {
			err = fits(in, rows.hdr.DataType, rows.hdr.Shape[1:])
		}
		if err != nil {
			return fmt.Errorf("%w: %s: rows do not fit the model: %v", ErrInput, r.opts.Input, err)
		}
	}
	out, rec, err := openOutput(r.opts.Output, r.opts.Resume, r.opts.SyncEvery)
	if err != nil {
		return err
	}
	skip := len(rec.keys)
	if skip > src.Total() {
		out.close()
		return fmt.Errorf("%w: the output holds %d records, the input %d items", ErrInputChanged, skip, src.Total())
	}
	for i, k := range rec.keys {
		if src.Key(i) != k {
			out.close()
			return fmt.Errorf("%w: record %d is %q, the input's item %d is %q", ErrInputChanged, i, k, i, src.Key(i))
		}
	}
	if r.opts.Resume {
		r.log.Info("resuming", "kept", skip, "errors_kept", rec.errors, "dropped_bytes", rec.dropped, "left", src.Total()-skip)
	}
	if err := src.Seek(skip); err != nil {
		out.close()
		return err
	}
	prog := &progress{w: r.opts.Progress, terminal: r.opts.Terminal, total: src.Total(), skipped: skip, start: time.Now()}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	progDone := make(chan struct{})
	var wg sync.WaitGroup
	if r.opts.Progress != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.drawProgress(prog, progDone)
		}()
	}
	// Each worker takes the next item from src, runs it, and writes its
	// record if every earlier one is written, else leaves it for the
	// worker that writes the missing one. No goroutine stands between
	// them: handing each item from a reader goroutine to a worker and
	// each record on to a writer goroutine cost 3 - 8% of the pool's
	// throughput (docs/MODES.md, "Throughput").
	q := &queue{src: src, out: out, next: skip, window: 4 * r.opts.Workers, r: r}
	q.room = sync.NewCond(&q.mu)
	stop := context.AfterFunc(ctx, q.wake)
	var workers sync.WaitGroup
	for range r.opts.Workers {
		workers.Add(1)
		go func() {
			defer workers.Done()
			w := worker{r: r}
			var buf []byte
			for {
				it, ok, err := q.take(ctx, buf)
				if err != nil {
					cancel(err)
					return
				}
				if !ok {
					return // the input is done, or the run is stopping
				}
				res, err := w.run(ctx, &it, q.line())
				if cap(it.data) > cap(buf) {
					buf = it.data[:0]
				}
				if err == nil {
					err = q.put(res)
				}
				if err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
	workers.Wait()
	stop()
	if n := len(q.pending); n > 0 && ctx.Err() == nil {
		cancel(fmt.Errorf("batch: %d results after a missing one (item %d)", n, q.next))
	}
	close(progDone)
	wg.Wait()
	cerr := out.close()
	r.stats = r.snapshot(prog)
	if prog.w != nil {
		prog.finish(r.stats, time.Now())
	}
	// The first fatal error, or the parent's cancellation (a clean stop:
	// what was written is synced and can be resumed).
	return errors.Join(context.Cause(ctx), cerr)
}

// queue is what the workers share: the input, taken in order, and the
// output, written in order.
type queue struct {
	r      *Runner
	window int // records at most waiting for an earlier one

	srcMu sync.Mutex // guards src and eof: items are taken in input order
	src   source
	eof   bool

	mu      sync.Mutex // guards the rest
	room    *sync.Cond // pending shrank, or the run is stopping
	out     *output
	next    int            // the index of the next record to write
	pending map[int]result // records that wait for an earlier one
	lines   [][]byte       // written records' buffers, for reuse
}

// take returns the next item (reading it into buf when it can), or false
// when there is none left or ctx is done. It waits while window records
// already wait for an earlier one.
func (q *queue) take(ctx context.Context, buf []byte) (item, bool, error) {
	q.mu.Lock()
	for len(q.pending) >= q.window && ctx.Err() == nil {
		q.room.Wait()
	}
	q.mu.Unlock()
	if ctx.Err() != nil {
		return item{}, false, nil // stopping: what is left is for a resume
	}
	q.srcMu.Lock()
	defer q.srcMu.Unlock()
	if q.eof {
		return item{}, false, nil
	}
	it, err := q.src.Next(buf)
	if err == io.EOF {
		q.eof = true
		return item{}, false, nil
	}
	return it, err == nil, err
}

// line returns a buffer for a record.
func (q *queue) line() []byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	if n := len(q.lines); n > 0 {
		l := q.lines[n-1]
		q.lines = q.lines[:n-1]
		return l[:0]
	}
	return nil
}

// put writes res if every earlier record is written, then every record
// that waited for it; else it leaves res to wait.
func (q *queue) put(res result) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if res.index != q.next {
		if q.pending == nil {
			q.pending = map[int]result{}
		}
		q.pending[res.index] = res
		return nil
	}
	for {
		if err := q.out.write(res.line); err != nil {
			return err
		}
		if res.err {
			q.r.errs.Add(1)
		}
		q.r.done.Add(1)
		q.next++
		if len(q.lines) < q.window {
			q.lines = append(q.lines, res.line)
		}
		var ok bool
		if res, ok = q.pending[q.next]; !ok {
			break
		}
		delete(q.pending, q.next)
	}
	q.room.Broadcast()
	return nil
}

// wake wakes the workers waiting for room, as the run stops.
func (q *queue) wake() {
	q.mu.Lock()
	q.room.Broadcast()
	q.mu.Unlock()
}

func (r *Runner) snapshot(p *progress) Stats {
	return Stats{
		Total: p.total, Skipped: p.skipped,
		Done: int(r.done.Load()), Errors: int(r.errs.Load()),
		Elapsed: time.Since(p.start),
	}
}

func (r *Runner) drawProgress(p *progress, stop <-chan struct{}) {
	every := r.opts.ProgressEvery
	if p.terminal {
		every = 200 * time.Millisecond
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			p.draw(r.snapshot(p), now)
		}
	}
}

// worker decodes, runs and encodes items; one per goroutine.
type worker struct {
	r    *Runner
	dec  decoder
	resp oip.Response
	out  oip.Output
}

// run turns an item into its record. Item errors become error records; the
// error returned is fatal for the run.
func (w *worker) run(ctx context.Context, it *item, line []byte) (result, error) {
	res := result{index: it.index}
	if it.err != nil {
		res.line, res.err = errorRecord(line, it, it.err), true
		return res, nil
	}
	// The record is written while the outputs are still in the
	// interpreter: the head and the response's start when the model
	// instance is known (prepare), each output as it is emitted, so none
	// is copied out first (docs/MODES.md, "Throughput"). The interpreter
	// is held meanwhile; with one worker per interpreter nobody waits.
	start := len(line)
	var used catalog.Entry
	prepare := func(e catalog.Entry) ([][]byte, error) {
		used = e
		ins, err := w.dec.decode(e, it)
		if err != nil {
			return nil, err
		}
		w.resp.Reset()
		w.resp.ModelName = e.Name
		w.resp.ModelVersion = strconv.FormatInt(e.Version, 10)
		w.resp.ModelDigest = e.Digest
		if it.kind == kindJSON {
			w.resp.ID = w.dec.req.ID
		}
		line = appendHead(line[:start], it)
		line = append(line, `"result":`...)
		line = oip.AppendResponseStart(line, &w.resp)
		return ins, nil
	}
	emit := func(i int, data []byte) error {
		o := used.Outputs[i]
		w.out = oip.Output{Tensor: tensor.Tensor{Name: o.Name, DataType: o.DataType, Shape: o.Shape, Data: data}}
		w.out.Base64 = w.r.opts.Outputs.base64(&w.out.Tensor)
		line = oip.AppendOutput(line, i, &w.out)
		return nil
	}
	for {
		_, _, err := w.r.opts.Backend.Infer(ctx, w.r.opts.Model, 0, prepare, emit)
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return res, ctx.Err()
		case errors.Is(err, catalog.ErrOverloaded):
			// A pool shared with other callers is full: wait a little.
			select {
			case <-time.After(5 * time.Millisecond):
				continue
			case <-ctx.Done():
				return res, ctx.Err()
			}
		case errors.Is(err, catalog.ErrModelNotFound), errors.Is(err, catalog.ErrVersionNotFound):
			return res, fmt.Errorf("batch: %w", err)
		default:
			// A bad item, or an invoke that failed on it: its own record.
			res.line, res.err = errorRecord(line[:start], it, err), true
			return res, nil
		}
		break
	}
	// Let the scheduler run what became ready during the invoke before
	// the next item. Measured (docs/MODES.md, "Throughput"): with it, a
	// pool run by one goroutine per interpreter did 12-16% more invokes a
	// second, each invoke itself faster (869 against 1,023 µs for face
	// detection), at GOMAXPROCS twice the CPUs.
	goruntime.Gosched()
	line = oip.AppendResponseEnd(line)
	res.line = append(line, "}\n"...)
	return res, nil
}

// OutputEncoding says how a results file holds output data.
type OutputEncoding string

const (
	// OutputsAuto writes outputs of up to Base64Above elements as JSON
	// numbers and larger ones as base64: a score or a landmark list stays
	// readable, and a large tensor (face detection's 14,336 box
	// coordinates) costs a copy instead of a float formatting per element,
	// which would take a fifth of the item's CPU (docs/MODES.md).
	OutputsAuto OutputEncoding = "auto"
	// OutputsJSON writes every output's "data" as a JSON array of numbers.
	OutputsJSON OutputEncoding = "json"
	// OutputsBase64 writes every output's data as "b64", the standard
	// base64 of its little-endian bytes (BYTES outputs stay JSON strings).
	OutputsBase64 OutputEncoding = "b64"
)

// Base64Above is the element count above which OutputsAuto writes base64.
const Base64Above = 1024

// ParseOutputEncoding checks a --outputs value.
func ParseOutputEncoding(s string) (OutputEncoding, error) {
	switch e := OutputEncoding(s); e {
	case OutputsAuto, OutputsJSON, OutputsBase64:
		return e, nil
	}
	return "", fmt.Errorf("batch: unknown output encoding %q (auto, json or b64)", s)
}

func (e OutputEncoding) base64(t *tensor.Tensor) bool {
	switch e {
	case OutputsJSON:
		return false
	case OutputsBase64:
		return true
	}
	size := t.DataType.Size()
	return size > 0 && len(t.Data)/size > Base64Above
}

// appendHead appends `{"index":N,"key":"K",` to dst.
func appendHead(dst []byte, it *item) []byte {
	dst = append(dst, `{"index":`...)
	dst = strconv.AppendInt(dst, int64(it.index), 10)
	dst = append(dst, `,"key":`...)
	dst = tensorjson.AppendString(dst, []byte(it.key))
	return append(dst, ',')
}

func errorRecord(dst []byte, it *item, err error) []byte {
	dst = appendHead(dst, it)
	dst = append(dst, `"error":`...)
	dst = tensorjson.AppendString(dst, []byte(err.Error()))
	return append(dst, "}\n"...)
}
