package stream

import (
	"bytes"
	"testing"
)

func msg(seq uint64, size int) message {
	return message{seq: seq, payload: bytes.Repeat([]byte{byte(seq)}, size)}
}

func popAll(q *queue) []uint64 {
	var got []uint64
	done := make(chan struct{})
	close(done)
	for {
		q.mu.Lock()
		n := q.n
		q.mu.Unlock()
		if n == 0 {
			return got
		}
		m, ok := q.pop(done)
		if !ok {
			return got
		}
		got = append(got, m.seq)
	}
}

func TestQueuePolicies(t *testing.T) {
	tests := []struct {
		name       string
		dropOldest bool
		maxLen     int
		maxBytes   int64
		sizes      []int
		wantKept   []uint64
		wantDrops  int
	}{
		{"oldest by count", true, 3, 1 << 20, []int{1, 1, 1, 1, 1}, []uint64{3, 4, 5}, 2},
		{"newest by count", false, 3, 1 << 20, []int{1, 1, 1, 1, 1}, []uint64{1, 2, 3}, 2},
		{"oldest by bytes", true, 10, 100, []int{40, 40, 40}, []uint64{2, 3}, 1},
		{"newest by bytes", false, 10, 100, []int{40, 40, 40}, []uint64{1, 2}, 1},
		{"one big message evicts several", true, 10, 100, []int{30, 30, 30, 90}, []uint64{4}, 3},
		{"larger than the whole queue", true, 10, 100, []int{10, 101}, []uint64{1}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQueue(tt.maxLen, tt.maxBytes, tt.dropOldest)
			drops := 0
			for i, n := range tt.sizes {
				d, closed := q.push(msg(uint64(i+1), n))
				if closed {
					t.Fatal("push reported a closed queue")
				}
				drops += d
				if _, b, _ := q.depth(); b > tt.maxBytes {
					t.Fatalf("after push %d: %d bytes held, bound %d", i+1, b, tt.maxBytes)
				}
			}
			if drops != tt.wantDrops {
				t.Errorf("got %d drops, want %d", drops, tt.wantDrops)
			}
			got := popAll(q)
			if len(got) != len(tt.wantKept) {
				t.Fatalf("got kept %v, want %v", got, tt.wantKept)
			}
			for i := range got {
				if got[i] != tt.wantKept[i] {
					t.Fatalf("got kept %v, want %v", got, tt.wantKept)
				}
			}
		})
	}
}

func TestQueueCloseDropsWaiting(t *testing.T) {
	q := newQueue(4, 1<<20, true)
	q.push(msg(1, 1))
	q.push(msg(2, 1))
	if n := q.close(); n != 2 {
		t.Errorf("close dropped %d, want 2", n)
	}
	if d, closed := q.push(msg(3, 1)); d != 1 || !closed {
		t.Errorf("push after close: %d dropped, closed %v; want 1, true", d, closed)
	}
	if _, ok := q.pop(make(chan struct{})); ok {
		t.Error("pop after close returned a message")
	}
}

// TestQueueHandOff: a popper waiting on an empty queue gets every message
// pushed from another goroutine, in order.
func TestQueueHandOff(t *testing.T) {
	q := newQueue(1024, 1<<20, false)
	const n = 500
	go func() {
		for i := range n {
			q.push(msg(uint64(i+1), 1))
		}
	}()
	done := make(chan struct{})
	for i := range n {
		m, ok := q.pop(done)
		if !ok || m.seq != uint64(i+1) {
			t.Fatalf("pop %d: got seq %d ok %v", i+1, m.seq, ok)
		}
	}
}
