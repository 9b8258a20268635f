package telemetry

import (
	"time"

	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// The eviction policy, applied inside every group commit: the queue is held
// to MaxBytes by dropping the oldest low-priority records (samples, health)
// first, then the oldest normal ones (aggregates); records older than MaxAge
// go whatever the size. Update and audit records are never dropped. Each
// drop is counted by reason (evicted, expired) and the counters travel in
// every batch, so the receiver can tell a gap from a loss.

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
