package telemetry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Clock is the time source of the queue and the uplink. Tests inject one to
// make backoff and ages deterministic; nil means the real clock.
type Clock interface {
	Now() time.Time
	// After is like time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// backoff computes "full jitter" exponential delays: each wait is uniform in
// [min/2, cur] where cur doubles from min up to max, so a fleet of devices that
// lost the same broker does not come back in lock step. Not safe for
// concurrent use; each retry loop owns one.
type backoff struct {
	min, max time.Duration
	clock    Clock
	rand     func(n int64) int64 // uniform in [0, n)
	cur      time.Duration
}

func newBackoff(min, max time.Duration, clock Clock) *backoff {
	if clock == nil {
		clock = realClock{}
	}
	return &backoff{min: min, max: max, clock: clock, rand: rand.Int64N}
}

// next returns the next delay and grows the bound.
func (b *backoff) next() time.Duration {
	if b.cur < b.min {
		b.cur = b.min
	}
	lo := b.min / 2
	d := lo
	if span := int64(b.cur - lo); span > 0 {
		d += time.Duration(b.rand(span + 1))
	}
	b.cur *= 2
	if b.cur > b.max {
		b.cur = b.max
	}
	return d
}

// reset starts again from min after a success.
func (b *backoff) reset() { b.cur = 0 }

// wait sleeps for the next delay or until ctx is done, whichever is first, and
// returns ctx.Err() in the latter case. wake, if not nil, ends the wait early
// (for example when the link comes back).
func (b *backoff) wait(ctx context.Context, wake <-chan struct{}) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-b.clock.After(b.next()):
		return nil
	case <-wake:
		return nil
	}
}
