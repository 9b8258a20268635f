package telemetry

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/internal/backoff"

	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// batchEntry is one record of a batch being sent.
type batchEntry struct {
	seq  uint64
	prio int
}

// batch is what readBatch returns: the payload to publish, what it holds,
// and the entries buffer to hand back next time.
type batch struct {
	payload []byte
	body    []byte
	entries []batchEntry
	oldest  time.Time
	full    bool // hit the record or byte bound
}

// uplink publishes the queue in sequence order, one batch at a time, and
// deletes a batch's records only after the broker acknowledged it. A batch that
// fails MaxAttempts times is halved until the record that fails is alone, and
// that record is quarantined, so one bad record never blocks the queue.
func (q *Queue) uplink(ctx context.Context) {
	bo := backoff.New(q.opts.RetryMin, q.opts.RetryMax, q.opts.Clock)
	limit := q.opts.BatchRecords
	var suspectEnd uint64 // while > 0, batches stay small until past this seq
	var attempts int
	var headSeq uint64
	var body, payload []byte
	for ctx.Err() == nil {
		b, err := q.readBatch(limit, body[:0], payload[:0])
		if err != nil {
			q.log.Error("read batch", "err", err)
			if bo.Wait(ctx, nil) != nil {
				return
			}
			continue
		}
		body, payload = b.body, b.payload
		if len(b.entries) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-q.notify:
			}
			continue
		}
		if !b.full {
			// Linger: let a batch fill up until its oldest record has waited
			// BatchDelay, unless more records arrive first.
			// Capped, so a record stamped in the future cannot hold it.
			wait := min(q.opts.BatchDelay, b.oldest.Add(q.opts.BatchDelay).Sub(q.opts.Clock.Now()))
			if wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-q.notify:
					continue
				case <-q.opts.Clock.After(wait):
				}
				continue
			}
		}
		first, last := b.entries[0].seq, b.entries[len(b.entries)-1].seq
		if first != headSeq {
			headSeq, attempts = first, 0
		}
		err = q.publish(ctx, b.payload)
		if err == nil {
			if err := q.ack(b.entries); err != nil {
				// The broker has the records; we will send them again (same
				// sequence numbers) once the disk lets us delete them.
				q.log.Error("delete acknowledged records", "err", err)
				if bo.Wait(ctx, nil) != nil {
					return
				}
				continue
			}
			bo.Reset()
			attempts = 0
			if suspectEnd != 0 && last >= suspectEnd {
				suspectEnd, limit = 0, q.opts.BatchRecords
			}
			continue
		}
		// The link may still hold the payload of a failed publish (a
		// connection being torn down); never reuse that buffer.
		payload = nil
		if ctx.Err() != nil {
			return
		}
		var wake <-chan struct{}
		if errors.Is(err, fleetlink.ErrNotConnected) {
			wake = q.opts.Link.Up()
		} else {
			attempts++
			q.log.Warn("publish failed", "first_seq", first, "records", len(b.entries), "attempt", attempts, "err", err)
			if attempts >= q.opts.MaxAttempts {
				attempts = 0
				if len(b.entries) > 1 {
					limit = max(1, len(b.entries)/2)
					if suspectEnd == 0 {
						suspectEnd = last
					}
				} else if err := q.quarantine(first, b.entries[0].prio, err); err != nil {
					q.log.Error("quarantine", "seq", first, "err", err)
				}
				continue
			}
		}
		if bo.Wait(ctx, wake) != nil {
			return
		}
	}
}

// shutdownGrace is how long a publish in flight at shutdown may still wait
// for its PUBACK: without it, every clean stop would leave the receiver a
// duplicate batch.
const shutdownGrace = 2 * time.Second

// publish hands payload to the Link with a context that ends shutdownGrace
// (on the queue's clock) after ctx does.
func (q *Queue) publish(ctx context.Context, payload []byte) error {
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		select {
		case <-pctx.Done():
			return
		case <-ctx.Done():
		}
		select {
		case <-pctx.Done():
		case <-q.opts.Clock.After(shutdownGrace):
			cancel()
		}
	})
	return q.opts.Link.Publish(pctx, q.opts.Topic, false, payload)
}

// readBatch builds the next batch from the head of the queue: records merged
// from the priority buckets in sequence order, at most limit records and about
// BatchBytes bytes (a single record may exceed that). body and payload are
// buffers to reuse.
func (q *Queue) readBatch(limit int, body, payload []byte) (batch, error) {
	var res batch
	var h protocol.BatchHeader
	err := q.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketMeta)
		h.Epoch = binary.BigEndian.Uint64(mb.Get(keyEpoch))
		h.Drops = decodeDrops(mb.Get(keyDrops))
		var cur [numPrio]*bolt.Cursor
		var ks, vs [numPrio][]byte
		for p := range numPrio {
			cur[p] = tx.Bucket(bucketByPrio[p]).Cursor()
			ks[p], vs[p] = cur[p].First()
		}
		for len(res.entries) < limit {
			p := -1
			for i := range numPrio {
				if ks[i] != nil && (p < 0 || string(ks[i]) < string(ks[p])) {
					p = i
				}
			}
			if p < 0 {
				return nil
			}
			if len(res.entries) > 0 && len(body)+len(vs[p])+20 > q.opts.BatchBytes {
				res.full = true
				return nil
			}
			seq := binary.BigEndian.Uint64(ks[p])
			body = protocol.AppendBatchEntry(body, seq, vs[p])
			res.entries = append(res.entries, batchEntry{seq: seq, prio: p})
			if _, t, err := protocol.PeekRecord(vs[p]); err == nil && (res.oldest.IsZero() || t.Before(res.oldest)) {
				res.oldest = t
			}
			ks[p], vs[p] = cur[p].Next()
		}
		res.full = true
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("telemetry: read batch: %w", err)
	}
	// Drops not yet persisted (backpressure since the last commit) are
	// reported with the next batch after they are.
	h.Count = len(res.entries)
	res.payload = append(protocol.AppendBatchHeader(payload, h), body...)
	res.body = body
	return res, nil
}

// ack deletes records the broker acknowledged. Records the writer evicted
// meanwhile are already gone and are not counted twice.
func (q *Queue) ack(entries []batchEntry) error {
	q.txMu.Lock()
	defer q.txMu.Unlock()
	q.mu.Lock()
	st := q.buckets
	q.mu.Unlock()
	var n uint64
	err := q.db.Update(func(tx *bolt.Tx) error {
		var bks [numPrio]*bolt.Bucket
		for p := range numPrio {
			bks[p] = tx.Bucket(bucketByPrio[p])
		}
		for _, e := range entries {
			k := seqKey(e.seq)
			v := bks[e.prio].Get(k)
			if v == nil {
				continue
			}
			st[e.prio].count--
			st[e.prio].bytes -= int64(len(v) + recordOverhead)
			if err := bks[e.prio].Delete(k); err != nil {
				return err
			}
			n++
		}
		refreshHeads(bks, &st)
		return nil
	})
	if err != nil {
		return fmt.Errorf("telemetry: ack: %w", err)
	}
	q.mu.Lock()
	q.buckets = st
	q.published += n
	q.lastAck = q.opts.Clock.Now()
	q.mu.Unlock()
	return nil
}

// refreshHeads sets the head time of each bucket from its first record.
func refreshHeads(bks [numPrio]*bolt.Bucket, st *[numPrio]bucketState) {
	for p, b := range bks {
		st[p].head = time.Time{}
		if k, v := b.Cursor().First(); k != nil {
			_, st[p].head, _ = protocol.PeekRecord(v)
		}
	}
}

// quarantine moves the record seq out of the queue into the quarantine bucket
// and counts it, so the records behind it can go.
func (q *Queue) quarantine(seq uint64, prio int, cause error) error {
	q.txMu.Lock()
	defer q.txMu.Unlock()
	q.mu.Lock()
	m, st := q.meta, q.buckets
	q.mu.Unlock()
	qDelta := 0
	err := q.db.Update(func(tx *bolt.Tx) error {
		var bks [numPrio]*bolt.Bucket
		for p := range numPrio {
			bks[p] = tx.Bucket(bucketByPrio[p])
		}
		k := seqKey(seq)
		v := bks[prio].Get(k)
		if v == nil {
			return nil
		}
		d, err := putQuarantine(tx, quarantineValue(seq, "publish: "+cause.Error(), v), q.opts.QuarantineBytes)
		if err != nil {
			return err
		}
		qDelta = d
		st[prio].count--
		st[prio].bytes -= int64(len(v) + recordOverhead)
		if err := bks[prio].Delete(k); err != nil {
			return err
		}
		m.drops[protocol.DropQuarantined]++
		refreshHeads(bks, &st)
		return putMeta(tx, m.next, m.drops)
	})
	if err != nil {
		return fmt.Errorf("telemetry: quarantine %d: %w", seq, err)
	}
	q.log.Warn("record quarantined after repeated publish failures", "seq", seq, "err", cause)
	q.mu.Lock()
	q.meta, q.buckets = m, st
	q.quarantined += qDelta
	q.mu.Unlock()
	return nil
}
