package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// Queue is the durable telemetry queue and its uplink. Record, Emit,
// ShouldSample and Stats are safe for concurrent use, before and during Run.
type Queue struct {
	opts Options
	log  *slog.Logger
	in   chan item

	// backpressure counts low-priority records Record dropped at the
	// hand-off; set without locks.
	backpressure atomic.Uint64

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
	if opts.Link != nil && opts.Topic == "" {
		return nil, ErrNoTopic
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
	if q.opts.Link != nil {
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
	bo := backoff.New(time.Second, time.Minute, q.opts.Clock)
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
		if werr := bo.Wait(ctx, nil); werr != nil {
			return werr
		}
	}
}
