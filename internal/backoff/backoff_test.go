package backoff

import (
	"context"
	"sync"
	"testing"
	"time"
)

// manualClock fires a timer only when the test advances past it.
type manualClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []chan time.Time
	ats     []time.Time
	asked   chan time.Duration
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, ch)
	c.ats = append(c.ats, c.now.Add(d))
	c.asked <- d
	return ch
}

func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for i, ch := range c.waiters {
		if ch != nil && !c.ats[i].After(c.now) {
			ch <- c.now
			c.waiters[i] = nil
		}
	}
}

func TestNext(t *testing.T) {
	tests := []struct {
		name     string
		rand     func(int64) int64
		min, max time.Duration
		want     []time.Duration
	}{
		{"lowest draws", func(int64) int64 { return 0 }, 100 * time.Millisecond, time.Second,
			[]time.Duration{50, 50, 50, 50, 50}},
		{"highest draws", func(n int64) int64 { return n - 1 }, 100 * time.Millisecond, time.Second,
			[]time.Duration{100, 200, 400, 800, 1000, 1000}},
		{"max below min", func(n int64) int64 { return n - 1 }, 100 * time.Millisecond, time.Millisecond,
			[]time.Duration{100, 100, 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := New(tt.min, tt.max, nil)
			b.rand = tt.rand
			for i, w := range tt.want {
				if got := b.Next(); got != w*time.Millisecond {
					t.Fatalf("delay %d: got %v, want %v", i, got, w*time.Millisecond)
				}
			}
			b.Reset()
			if got := b.Next(); got > tt.min {
				t.Fatalf("after reset: got %v, want at most %v", got, tt.min)
			}
		})
	}
}

// TestJitterSpreads: many draws at the same step are not all equal, so
// devices that lost the same broker do not come back together.
func TestJitterSpreads(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 50 {
		b := New(time.Second, time.Minute, nil)
		b.Next()
		seen[b.Next()] = true
	}
	if len(seen) < 10 {
		t.Fatalf("got %d distinct delays in 50 draws, want at least 10", len(seen))
	}
}

func TestWaitOnTheClock(t *testing.T) {
	clk := &manualClock{asked: make(chan time.Duration, 1)}
	b := New(time.Hour, time.Hour, clk)
	b.rand = func(n int64) int64 { return n - 1 }
	done := make(chan error, 1)
	go func() { done <- b.Wait(context.Background(), nil) }()
	if d := <-clk.asked; d != time.Hour {
		t.Fatalf("got a wait of %v, want 1h", d)
	}
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before the clock moved", err)
	default:
	}
	clk.advance(time.Hour)
	if err := <-done; err != nil {
		t.Fatalf("got %v, want nil", err)
	}
}

func TestWaitEnds(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := New(time.Hour, time.Hour, nil).Wait(cancelled, nil); err == nil {
		t.Fatal("Wait returned nil on a cancelled context")
	}
	wake := make(chan struct{})
	close(wake)
	clk := &manualClock{asked: make(chan time.Duration, 1)}
	if err := New(time.Hour, time.Hour, clk).Wait(context.Background(), wake); err != nil {
		t.Fatalf("woken: got %v, want nil", err)
	}
}
