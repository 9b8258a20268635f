package telemetry

import (
	"context"
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// flushTimeout bounds the final write at shutdown; finalRetry is the pause
// between its attempts when the disk refuses a critical record.
const (
	flushTimeout = 3 * time.Second
	finalRetry   = 100 * time.Millisecond
)

// writer is the group-commit loop: it takes whatever has been handed over,
// up to MaxGroup records, and commits it in one transaction.
func (q *Queue) writer(ctx context.Context) {
	group := make([]item, 0, q.opts.MaxGroup)
	var retry []item // critical records whose commit failed
	retryBo := backoff.New(100*time.Millisecond, 10*time.Second, q.opts.Clock)
	aggC := q.opts.Clock.After(q.opts.AggregateInterval)
	var healthC <-chan time.Time
	if q.opts.HealthInterval > 0 {
		q.health.read() // first CPU sample, so the first record has a rate
		healthC = q.opts.Clock.After(q.opts.HealthInterval)
	}
	for {
		var retryC <-chan time.Time
		if len(retry) > 0 {
			retryC = q.opts.Clock.After(retryBo.Next())
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
			group = append(group, item{rec: q.healthRecord()})
		case <-ctx.Done():
			q.finalFlush(q.appendAggregates(group))
			return
		}
		group = q.fill(group)
		retry = q.commit(group)
		if len(retry) == 0 {
			retryBo.Reset()
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

// finalFlush writes what was handed over before shutdown, for flushTimeout
// on the queue's clock.
func (q *Queue) finalFlush(group []item) {
	deadline := q.opts.Clock.After(flushTimeout)
flush:
	for {
		group = q.fill(group)
		if len(group) == 0 {
			break
		}
		select {
		case <-deadline: // records still coming in: stop anyway
			break flush
		default:
		}
		group = append(group[:0], q.commit(group)...)
		if len(group) == 0 {
			continue // more may have been handed over meanwhile
		}
		select {
		case <-deadline:
			break flush
		case <-q.opts.Clock.After(finalRetry):
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
