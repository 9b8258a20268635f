package stream

import "sync"

// message is one MQTT message waiting for inference. seq numbers the
// messages a stream received, from 1, so a gap shows a drop.
type message struct {
	seq     uint64
	payload []byte
}

// queue is a bounded FIFO of messages, bounded both by count and by the
// bytes of their payloads. When a message does not fit, the overflow policy
// decides which message goes: the oldest waiting (dropOldest) or the new
// one. It is safe for concurrent use.
type queue struct {
	maxLen     int
	maxBytes   int64
	dropOldest bool

	mu     sync.Mutex // guards the fields below
	items  []message  // a ring of maxLen slots
	head   int
	n      int
	bytes  int64
	peak   int64         // the most bytes ever held
	closed bool          // no more pushes; pop drains then reports done
	ready  chan struct{} // has a token while the queue is non-empty or closed
}

func newQueue(maxLen int, maxBytes int64, dropOldest bool) *queue {
	return &queue{maxLen: maxLen, maxBytes: maxBytes, dropOldest: dropOldest,
		items: make([]message, maxLen), ready: make(chan struct{}, 1)}
}

// push adds m and returns how many messages were dropped to respect the
// bounds (m itself included, under drop_newest or when it alone is larger
// than maxBytes), or 1 and closed once the queue is closed. It never
// blocks.
func (q *queue) push(m message) (dropped int, closed bool) {
	size := int64(len(m.payload))
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return 1, true
	}
	if size > q.maxBytes {
		return 1, false
	}
	for q.n == q.maxLen || q.bytes+size > q.maxBytes {
		if !q.dropOldest {
			return 1, false
		}
		q.take()
		dropped++
	}
	q.items[(q.head+q.n)%q.maxLen] = m
	q.n++
	q.bytes += size
	q.peak = max(q.peak, q.bytes)
	q.signal()
	return dropped, false
}

// take removes the head; q.mu is held and q.n > 0.
func (q *queue) take() message {
	m := q.items[q.head]
	q.items[q.head] = message{} // let the payload go
	q.head = (q.head + 1) % q.maxLen
	q.n--
	q.bytes -= int64(len(m.payload))
	return m
}

func (q *queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop returns the oldest message, waiting for one until done is closed;
// ok is false once done is closed or the queue is closed and empty.
func (q *queue) pop(done <-chan struct{}) (m message, ok bool) {
	for {
		q.mu.Lock()
		if q.n > 0 {
			m = q.take()
			if q.n > 0 {
				q.signal()
			}
			q.mu.Unlock()
			return m, true
		}
		closed := q.closed
		q.mu.Unlock()
		if closed {
			return message{}, false
		}
		select {
		case <-q.ready:
		case <-done:
			return message{}, false
		}
	}
}

// close refuses further pushes and returns how many messages were waiting
// (they are dropped).
func (q *queue) close() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.n
	for q.n > 0 {
		q.take()
	}
	q.closed = true
	q.signal()
	return n
}

// depth is the number of messages and bytes waiting, and the peak bytes.
func (q *queue) depth() (n int, bytes, peak int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n, q.bytes, q.peak
}
