// Package telemetry keeps the agent's telemetry on the device and delivers it
// to the fleet: a durable queue in bbolt fed without blocking from the predict
// path, and an uplink that publishes it in order, at least once, in batches
// over MQTT.
//
// Records handed to Record go through a bounded channel to one writer
// goroutine that commits them in groups (one fsync for many records) under
// sequence numbers that keep rising across restarts. A record is kept once its
// group's transaction has committed. The queue is bounded by bytes and age;
// when full, the oldest low-priority records go first, and update and audit
// records are never dropped. Every drop is counted, and the counters travel in
// every batch. The uplink deletes records only after the broker acknowledged
// the batch that carried them. The format is in docs/PROTOCOL.md.
//
// The daemon runs two components: MQTT (the connection, which implements
// Publisher) and Queue; see the package example. The predict path calls
// Observe for every request and Record (after ShouldSample) for samples;
// the updater calls Emit, which returns once its record is durable.
//
// Tests run against real things: bbolt files, a Mosquitto started on a free
// loopback port (they fail without it when CI=true, and skip otherwise), the
// embedded broker, and a child process SIGKILLed during appends and drains.
// The crash loop runs 5 times by default; for a long local run:
//
//	OUTPOST_CRASH_LOOPS=200 go test -race -run TestCrashLoop ./agent/telemetry
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// Errors of this package. Callers test with errors.Is.
var (
	// ErrNoPath is returned by New when Options.Path is empty.
	ErrNoPath = errors.New("telemetry: no queue path")
	// ErrNotConnected is wrapped by a Publisher that could not send at all
	// because it has no connection; the uplink waits and retries without
	// counting an attempt.
	ErrNotConnected = errors.New("telemetry: not connected")
	// ErrClosed is returned by Emit when the queue stopped before the record
	// was kept, and by Quarantine when the queue is not running.
	ErrClosed = errors.New("telemetry: queue closed")
	// ErrMQTTOptions is returned by NewMQTT when the broker or client id is
	// missing.
	ErrMQTTOptions = errors.New("telemetry: mqtt: broker and client id are required")
)

// Publisher publishes telemetry batches to the device's events topic. The
// MQTT type implements it with paho.
type Publisher interface {
	// Publish sends payload with QoS 1 and returns nil only once the broker
	// has acknowledged it (PUBACK). An error wrapping ErrNotConnected means
	// nothing was sent; any other error means the payload may or may not have
	// reached the broker. Publish is called by one goroutine at a time and
	// must return soon after ctx is done.
	Publish(ctx context.Context, payload []byte) error
}

// upNotifier is implemented by publishers that can say when their link comes
// back (MQTT does), so the uplink resumes at once instead of at its next
// retry.
type upNotifier interface {
	// Up returns a channel closed when the next connection is up.
	Up() <-chan struct{}
}

// Options configures a Queue. The zero value of every field but Path works.
type Options struct {
	// Path is the bbolt queue file, for example <data dir>/telemetry.db.
	Path string
	// Publisher delivers batches. Nil keeps records on disk without sending.
	Publisher Publisher

	// MaxBytes bounds the bytes of queued records (their bodies plus a fixed
	// per-record overhead; the file itself is larger by bbolt's page slack and
	// never shrinks). Default 64 MiB.
	MaxBytes int64
	// MaxAge drops low and normal priority records older than this. Default
	// 7 days; negative means no limit.
	MaxAge time.Duration
	// Buffer is the capacity of the hand-off channel. Default 16384.
	Buffer int
	// MaxGroup bounds the records committed in one transaction. Default 8192.
	MaxGroup int

	// BatchRecords, BatchBytes and BatchDelay bound a batch: it is sent when it
	// has BatchRecords records or BatchBytes bytes, or when its oldest record
	// has waited BatchDelay. Defaults 1000, 256 KiB and 1 s.
	BatchRecords int
	BatchBytes   int
	BatchDelay   time.Duration
	// MaxAttempts is how many times the uplink tries a batch before it halves
	// it, and a single record before it quarantines it. Default 5.
	MaxAttempts int
	// RetryMin and RetryMax bound the jittered backoff between publish
	// attempts. Defaults 100 ms and 5 s.
	RetryMin, RetryMax time.Duration
	// QuarantineBytes bounds the quarantine bucket; the oldest entries go
	// first. Default 4 MiB.
	QuarantineBytes int64

	// SampleRate is the fraction of predictions ShouldSample picks. Default
	// 0.01; negative means none.
	SampleRate float64
	// AggregateInterval is how often the observations given to Observe are
	// written as one aggregate record per model. Default 1 min.
	AggregateInterval time.Duration
	// LatencyBounds are the latency histogram bounds in microseconds.
	// Default DefaultLatencyBounds.
	LatencyBounds []uint64
	// HealthInterval is how often a device health record is written. Default
	// 1 min; negative means never.
	HealthInterval time.Duration
	// CurrentModel, if set, names the model being served; health records
	// carry it so every record says which model it concerns.
	CurrentModel func() protocol.ModelRef
	// StaleAfter raises a health warning when records are waiting and the
	// oldest is older than this, so an agent that forwards nothing does not
	// look healthy. Default 15 min.
	StaleAfter time.Duration

	// Logger receives the queue's logs. Nil means silent.
	Logger *slog.Logger
	// Clock is the time source; nil means the real clock.
	Clock Clock
}

func (o *Options) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 64 << 20
	}
	if o.MaxAge == 0 {
		o.MaxAge = 7 * 24 * time.Hour
	}
	def(&o.Buffer, 16384)
	def(&o.MaxGroup, 8192)
	def(&o.BatchRecords, 1000)
	def(&o.BatchBytes, 256<<10)
	defDur(&o.BatchDelay, time.Second)
	def(&o.MaxAttempts, 5)
	defDur(&o.RetryMin, 100*time.Millisecond)
	defDur(&o.RetryMax, 5*time.Second)
	if o.QuarantineBytes <= 0 {
		o.QuarantineBytes = 4 << 20
	}
	if o.SampleRate == 0 {
		o.SampleRate = 0.01
	}
	defDur(&o.AggregateInterval, time.Minute)
	if len(o.LatencyBounds) == 0 {
		o.LatencyBounds = DefaultLatencyBounds
	}
	defDur(&o.StaleAfter, 15*time.Minute)
	if o.HealthInterval == 0 {
		o.HealthInterval = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
}

// Queue is the durable telemetry queue and its uplink. Record, Emit,
// ShouldSample and Stats are safe for concurrent use, before and during Run.
type Queue struct {
	opts Options
	log  *slog.Logger
	in   chan item

	// Set by Record without locks.
	backpressure atomic.Uint64 // low-priority records dropped at the hand-off

	// overflowMu guards overflow: normal and critical records that found the
	// channel full. They are rare (a few a minute), so this never grows much.
	overflowMu sync.Mutex
	overflow   []item
	kick       chan struct{} // the writer has overflow to take

	notify chan struct{} // a commit happened; the uplink may have work

	agg    *aggregator
	health *healthReader // owned by the writer goroutine

	db *bolt.DB // set by Run before the writer and uplink start

	// txMu serialises our write transactions together with the update of the
	// accounts below, so every transaction sees accounts that match the file.
	txMu sync.Mutex

	// mu guards the fields below; they mirror the file and feed Stats.
	mu          sync.Mutex
	meta        meta // epoch, next sequence, cumulative persisted drops
	buckets     [numPrio]bucketState
	quarantined int
	published   uint64
	lastAck     time.Time
	writeErrors uint64
	warnings    map[string]string // key -> current warning
	openDB      *bolt.DB          // q.db while Run has it open, for readers outside Run
}

// item is a record on its way to the writer. done, if set, receives the
// outcome: the record's sequence number once it is kept, or why it never will
// be.
type item struct {
	rec  protocol.Record
	done chan kept
}

type kept struct {
	seq uint64
	err error
}

// New checks opts and returns a queue. It does not touch the disk; Run opens
// the file, so a slow or broken disk never delays the agent's start.
func New(opts Options) (*Queue, error) {
	if opts.Path == "" {
		return nil, ErrNoPath
	}
	opts.setDefaults()
	return &Queue{
		opts:     opts,
		log:      opts.Logger.With("component", "telemetry"),
		in:       make(chan item, opts.Buffer),
		kick:     make(chan struct{}, 1),
		notify:   make(chan struct{}, 1),
		warnings: map[string]string{},
		agg:      newAggregator(opts.LatencyBounds, opts.Clock.Now()),
		health:   newHealthReader(filepath.Dir(opts.Path)),
	}, nil
}

// Record hands r to the queue without ever blocking; r and its payload must
// not be changed afterwards. If the hand-off channel
// is full, a low-priority record (sample, health) is dropped and counted; any
// other record is set aside in memory and written with the next group. It
// stamps r.Time if it is zero. Record does not sample: the caller asks
// ShouldSample before building a Sample record.
func (q *Queue) Record(r protocol.Record) {
	if r.Time.IsZero() {
		r.Time = q.opts.Clock.Now()
	}
	select {
	case q.in <- item{rec: r}:
		return
	default:
	}
	if r.Kind.Priority() == protocol.PriorityLow {
		q.backpressure.Add(1)
		return
	}
	q.overflowMu.Lock()
	q.overflow = append(q.overflow, item{rec: r})
	q.overflowMu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// Emit hands r to the queue and waits until it is kept (committed with
// fsync), returning its sequence number. It is for callers that must know a
// record is durable before they go on, such as the updater; it blocks, so the
// predict path uses Record instead. A record that the disk refuses is retried
// if it is critical; Emit then keeps waiting until ctx is done.
func (q *Queue) Emit(ctx context.Context, r protocol.Record) (uint64, error) {
	if r.Time.IsZero() {
		r.Time = q.opts.Clock.Now()
	}
	it := item{rec: r, done: make(chan kept, 1)}
	select {
	case q.in <- it:
	case <-ctx.Done():
		return 0, fmt.Errorf("telemetry: emit: %w", ctx.Err())
	}
	select {
	case k := <-it.done:
		if k.err != nil {
			return 0, fmt.Errorf("telemetry: emit %s: %w", r.Kind, k.err)
		}
		return k.seq, nil
	case <-ctx.Done():
		return 0, fmt.Errorf("telemetry: emit: %w", ctx.Err())
	}
}

// Observe accounts for one prediction in the current interval's aggregate
// for its model. It never blocks for long (one short lock) and is safe for
// concurrent use; the aggregates are written every AggregateInterval and when
// Run ends.
func (q *Queue) Observe(o Observation) {
	q.agg.observe(&o)
}

// ShouldSample reports whether the caller should build and Record a Sample
// for the current prediction, at Options.SampleRate.
func (q *Queue) ShouldSample() bool {
	rate := q.opts.SampleRate
	switch {
	case rate < 0:
		return false
	case rate >= 1:
		return true
	}
	return rand.Float64() < rate
}

// Stats is a snapshot of the queue for metrics and health.
type Stats struct {
	// Epoch identifies the queue file; it changes only when a corrupt file was
	// replaced. It is 0 until Run has opened the file.
	Epoch uint64
	// LastSeq is the highest sequence number kept (committed); every number
	// up to it is kept, delivered, or counted in Dropped.
	LastSeq uint64
	// Depth and Bytes are the records waiting to be sent and their size.
	Depth int
	Bytes int64
	// DepthByPriority splits Depth by protocol.Priority.
	DepthByPriority [numPrio]int
	// OldestAge is the age of the oldest unsent record; zero if none.
	OldestAge time.Duration
	// Dropped are the cumulative drop counters of this epoch, by
	// protocol.DropReason.
	Dropped protocol.DropCounts
	// Quarantined is the number of entries in the quarantine bucket.
	Quarantined int
	// Published counts records acknowledged by the broker since Run started;
	// LastAck is when the last acknowledgement came.
	Published uint64
	LastAck   time.Time
	// WriteErrors counts failed commits (disk full, I/O errors).
	WriteErrors uint64
	// Warnings are current health warnings, for the agent's health endpoint.
	Warnings []string
}

// Stats returns a snapshot of the queue.
func (q *Queue) Stats() Stats {
	now := q.opts.Clock.Now()
	q.mu.Lock()
	defer q.mu.Unlock()
	s := Stats{
		Epoch:       q.meta.epoch,
		Dropped:     q.meta.drops,
		Quarantined: q.quarantined,
		Published:   q.published,
		LastAck:     q.lastAck,
		WriteErrors: q.writeErrors,
	}
	if q.meta.next > 0 {
		s.LastSeq = q.meta.next - 1
	}
	s.Dropped[protocol.DropBackpressure] += q.backpressure.Load()
	var oldest time.Time
	for p, b := range q.buckets {
		s.Depth += b.count
		s.DepthByPriority[p] = b.count
		s.Bytes += b.bytes
		if b.count > 0 && (oldest.IsZero() || b.head.Before(oldest)) {
			oldest = b.head
		}
	}
	if !oldest.IsZero() {
		s.OldestAge = max(0, now.Sub(oldest))
	}
	for _, w := range q.warnings {
		s.Warnings = append(s.Warnings, w)
	}
	if s.OldestAge > q.opts.StaleAfter {
		last := "never since start"
		if !s.LastAck.IsZero() {
			last = s.LastAck.UTC().Format(time.RFC3339)
		}
		s.Warnings = append(s.Warnings, fmt.Sprintf("telemetry: %d records waiting, oldest %v old; last broker ack %s",
			s.Depth, s.OldestAge.Round(time.Second), last))
	}
	sort.Strings(s.Warnings)
	return s
}

func (q *Queue) setWarning(key, msg string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if msg == "" {
		delete(q.warnings, key)
		return
	}
	q.warnings[key] = msg
}

// Run opens the queue file and runs the writer and the uplink until ctx is
// done. A corrupt file is moved aside and a fresh one started, with a health
// warning and an audit record; a file that cannot be opened at all (no space,
// no permission) is retried with backoff while Record keeps dropping only what
// it must. Run returns nil after ctx is done, once records already handed
// over have been written (for at most a few seconds) and the file is closed.
// Call it once.
func (q *Queue) Run(ctx context.Context) error {
	if err := q.open(ctx); err != nil {
		return nil // ctx ended while the file could not be opened
	}
	defer func() {
		q.mu.Lock()
		q.openDB = nil
		q.mu.Unlock()
		_ = q.db.Close()
	}()

	var wg sync.WaitGroup
	upCtx, stopUplink := context.WithCancel(ctx)
	defer stopUplink()
	if q.opts.Publisher != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			q.uplink(upCtx)
		}()
	}
	q.writer(ctx)
	stopUplink()
	wg.Wait()
	return nil
}

// open opens the queue file, replacing it if corrupt, retrying with backoff
// on other errors until ctx is done.
func (q *Queue) open(ctx context.Context) error {
	path := q.opts.Path
	bo := newBackoff(time.Second, time.Minute, q.opts.Clock)
	var reset string
	for {
		fi, statErr := os.Stat(path)
		existed := statErr == nil && fi.Size() > 0
		db, err := openDB(path)
		// Only a file that held something can be corrupt; a new file that
		// fails to open is a disk problem, retried below.
		if errors.Is(err, errCorrupt) && existed {
			aside, merr := moveAside(path, q.opts.Clock.Now())
			if merr == nil {
				reset = fmt.Sprintf("telemetry: queue file was corrupt (%v); moved to %s and started a new one", err, filepath.Base(aside))
				q.log.Warn("queue file corrupt; replaced", "err", err, "moved_to", aside)
				q.setWarning("reset", reset)
				continue
			}
			err = merr
		}
		if err == nil {
			m, st, quarantined, ierr := initDB(db)
			if ierr == nil {
				q.db = db
				q.mu.Lock()
				q.meta, q.buckets, q.quarantined = m, st, quarantined
				q.openDB = db
				q.mu.Unlock()
				q.setWarning("open", "")
				if reset != "" {
					// Critical, so it is never dropped; the writer picks it up
					// with its first group.
					q.Record(protocol.Record{Kind: protocol.KindAudit, Audit: &protocol.Audit{
						Actor: "agent", Action: "telemetry.queue_reset", Outcome: "replaced", Detail: reset,
					}})
				}
				return nil
			}
			_ = db.Close()
			err = ierr
			if errors.Is(ierr, errCorrupt) {
				if aside, merr := moveAside(path, q.opts.Clock.Now()); merr == nil {
					reset = fmt.Sprintf("telemetry: queue file was corrupt (%v); moved to %s and started a new one", ierr, filepath.Base(aside))
					q.log.Warn("queue file corrupt; replaced", "err", ierr, "moved_to", aside)
					q.setWarning("reset", reset)
					continue
				}
			}
		}
		q.log.Error("cannot open queue file", "path", path, "err", err)
		q.setWarning("open", fmt.Sprintf("telemetry: cannot open queue: %v", err))
		if werr := bo.wait(ctx, nil); werr != nil {
			return werr
		}
	}
}

// flushTimeout bounds the final write at shutdown.
const flushTimeout = 3 * time.Second

// writer is the group-commit loop: it takes whatever has been handed over,
// up to MaxGroup records, and commits it in one transaction.
func (q *Queue) writer(ctx context.Context) {
	group := make([]item, 0, q.opts.MaxGroup)
	var retry []item // critical records whose commit failed
	retryBo := newBackoff(100*time.Millisecond, 10*time.Second, q.opts.Clock)
	aggC := q.opts.Clock.After(q.opts.AggregateInterval)
	var healthC <-chan time.Time
	if q.opts.HealthInterval > 0 {
		q.health.read() // first CPU sample, so the first record has a rate
		healthC = q.opts.Clock.After(q.opts.HealthInterval)
	}
	for {
		var retryC <-chan time.Time
		if len(retry) > 0 {
			retryC = q.opts.Clock.After(retryBo.next())
		}
		group = append(group[:0], retry...)
		retry = nil
		select {
		case it := <-q.in:
			group = append(group, it)
		case <-q.kick:
		case <-retryC:
		case <-aggC:
			aggC = q.opts.Clock.After(q.opts.AggregateInterval)
			group = q.appendAggregates(group)
		case <-healthC:
			healthC = q.opts.Clock.After(q.opts.HealthInterval)
			h := q.health.read()
			r := protocol.Record{Kind: protocol.KindHealth, Time: q.opts.Clock.Now(), Health: &h}
			if q.opts.CurrentModel != nil {
				r.Model = q.opts.CurrentModel()
			}
			group = append(group, item{rec: r})
		case <-ctx.Done():
			q.finalFlush(q.appendAggregates(group))
			return
		}
		group = q.fill(group)
		retry = q.commit(group)
		if len(retry) == 0 {
			retryBo.reset()
		}
	}
}

func (q *Queue) appendAggregates(group []item) []item {
	for _, r := range q.agg.flush(q.opts.Clock.Now()) {
		group = append(group, item{rec: r})
	}
	return group
}

// maxGroupBytes bounds the estimated size of one group, so a burst of large
// samples cannot make one transaction hold gigabytes.
const maxGroupBytes = 8 << 20

// approxSize estimates a record's encoded size without encoding it.
func approxSize(r *protocol.Record) int {
	n := 128
	if s := r.Sample; s != nil {
		for _, t := range s.Inputs {
			n += len(t.Data)
		}
		for _, t := range s.Outputs {
			n += len(t.Data)
		}
	}
	return n
}

// fill adds to group the overflow and whatever waits in the channel, up to
// MaxGroup records or about maxGroupBytes, without blocking.
func (q *Queue) fill(group []item) []item {
	q.overflowMu.Lock()
	group = append(group, q.overflow...)
	q.overflow = q.overflow[:0]
	q.overflowMu.Unlock()
	size := 0
	for i := range group {
		size += approxSize(&group[i].rec)
	}
	for len(group) < q.opts.MaxGroup && size < maxGroupBytes {
		select {
		case it := <-q.in:
			group = append(group, it)
			size += approxSize(&it.rec)
		default:
			return group
		}
	}
	return group
}

// finalFlush writes what was handed over before shutdown, for a bounded time.
func (q *Queue) finalFlush(group []item) {
	deadline := time.Now().Add(flushTimeout)
	for {
		group = q.fill(group)
		if len(group) == 0 || time.Now().After(deadline) {
			break
		}
		retry := q.commit(group)
		group = append(group[:0], retry...)
		if len(retry) > 0 {
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, it := range group {
		if it.done != nil {
			it.done <- kept{err: ErrClosed}
		}
	}
}

// commit encodes and writes one group in one transaction, evicting what the
// bounds require. It returns the critical records to retry if the write
// failed; other records of a failed group are dropped and counted.
func (q *Queue) commit(group []item) (retry []item) {
	if len(group) == 0 {
		return nil
	}
	type enc struct {
		body []byte
		prio int
		it   *item
	}
	encs := make([]enc, 0, len(group))
	var badValues [][]byte
	arena := make([]byte, 0, 128*len(group))
	for i := range group {
		it := &group[i]
		start := len(arena)
		var err error
		arena, err = protocol.AppendRecord(arena, &it.rec)
		if err != nil {
			arena = arena[:start]
			q.log.Warn("record cannot be encoded; quarantined", "kind", it.rec.Kind, "err", err)
			desc := fmt.Sprintf("%+v", it.rec)
			if len(desc) > 4096 {
				desc = desc[:4096]
			}
			badValues = append(badValues, quarantineValue(0, err.Error(), []byte(desc)))
			if it.done != nil {
				it.done <- kept{err: err}
			}
			continue
		}
		body := arena[start:len(arena):len(arena)]
		encs = append(encs, enc{body: body, prio: int(it.rec.Kind.Priority()), it: it})
	}

	q.txMu.Lock()
	defer q.txMu.Unlock()
	q.mu.Lock()
	m, st := q.meta, q.buckets
	q.mu.Unlock()
	bp := q.backpressure.Swap(0)
	m.drops[protocol.DropBackpressure] += bp
	m.drops[protocol.DropUnencodable] += uint64(len(badValues))
	first := m.next
	qDelta := 0
	now := q.opts.Clock.Now()
	err := q.db.Update(func(tx *bolt.Tx) error {
		var bks [numPrio]*bolt.Bucket
		for p := range numPrio {
			bks[p] = tx.Bucket(bucketByPrio[p])
			bks[p].FillPercent = 0.95 // keys only ever grow: pack pages
		}
		for _, e := range encs {
			if err := bks[e.prio].Put(seqKey(m.next), e.body); err != nil {
				return err
			}
			if st[e.prio].count == 0 {
				st[e.prio].head = e.it.rec.Time
			}
			st[e.prio].count++
			st[e.prio].bytes += int64(len(e.body) + recordOverhead)
			m.next++
		}
		if err := q.enforceBounds(tx, &m, &st, now); err != nil {
			return err
		}
		for _, v := range badValues {
			d, err := putQuarantine(tx, v, q.opts.QuarantineBytes)
			if err != nil {
				return err
			}
			qDelta += d
		}
		return putMeta(tx, m.next, m.drops)
	})
	if err != nil {
		// Nothing of the group is on disk. Give the counters back and decide
		// per record: critical ones wait for the next try, the rest are lost.
		q.backpressure.Add(bp)
		var lost uint64
		for _, e := range encs {
			if e.prio == int(protocol.PriorityCritical) {
				retry = append(retry, *e.it)
			} else {
				lost++
			}
		}
		q.mu.Lock()
		q.writeErrors++
		// Counted in memory now and made durable by the next good commit.
		q.meta.drops[protocol.DropWriteFailed] += lost
		q.meta.drops[protocol.DropUnencodable] += uint64(len(badValues))
		q.mu.Unlock()
		q.setWarning("write", fmt.Sprintf("telemetry: writes failing: %v", err))
		q.log.Error("commit failed", "records", len(encs), "dropped", lost, "retrying", len(retry), "err", err)
		return retry
	}
	q.mu.Lock()
	q.meta, q.buckets = m, st
	q.quarantined += qDelta
	q.mu.Unlock()
	q.setWarning("write", "")
	seq := first
	for _, e := range encs {
		if e.it.done != nil {
			e.it.done <- kept{seq: seq}
		}
		seq++
	}
	select {
	case q.notify <- struct{}{}:
	default:
	}
	return nil
}

// enforceBounds evicts records in tx until the queue is within MaxBytes
// (oldest low priority first, then oldest normal priority) and removes low and
// normal records older than MaxAge. Critical records are never removed, so the
// queue can exceed MaxBytes when it holds nothing else.
func (q *Queue) enforceBounds(tx *bolt.Tx, m *meta, st *[numPrio]bucketState, now time.Time) error {
	over := -q.opts.MaxBytes
	for _, b := range st {
		over += b.bytes
	}
	for _, p := range []int{int(protocol.PriorityLow), int(protocol.PriorityNormal)} {
		if st[p].count == 0 {
			continue
		}
		expired := st[p].head.Before(now.Add(-q.opts.MaxAge)) && q.opts.MaxAge > 0
		if over <= 0 && !expired {
			continue
		}
		b := tx.Bucket(bucketByPrio[p])
		c := b.Cursor()
		var del [][]byte
		var evicted, aged uint64
		k, v := c.First()
		for ; k != nil; k, v = c.Next() {
			_, t, _ := protocol.PeekRecord(v)
			switch {
			case q.opts.MaxAge > 0 && t.Before(now.Add(-q.opts.MaxAge)):
				aged++
			case over > 0:
				evicted++
			default:
				goto done
			}
			del = append(del, k)
			size := int64(len(v) + recordOverhead)
			over -= size
			st[p].bytes -= size
			st[p].count--
		}
	done:
		st[p].head = time.Time{}
		if k != nil {
			_, st[p].head, _ = protocol.PeekRecord(v)
		}
		for _, k := range del {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		m.drops[protocol.DropEvicted] += evicted
		m.drops[protocol.DropExpired] += aged
	}
	return nil
}
