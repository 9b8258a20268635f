package telemetry

import (
	"fmt"
	"sort"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

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
