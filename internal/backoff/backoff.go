// Package backoff computes jittered, exponentially growing delays for
// reconnect and retry loops (the agent's fleet link, streams, telemetry uplink
// and updater; the fleet controller's broker connection), and waits them out
// on an injectable clock so tests need not sleep. It lives in internal/ because
// both sides use it and the agent and the fleet may not import each other.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Clock is a time source. Tests inject one that they move by hand; nil
// means the real clock wherever a Clock is accepted. Implementations must be
// safe for concurrent use.
type Clock interface {
	Now() time.Time
	// After is like time.After.
	After(d time.Duration) <-chan time.Time
}

// RealClock is the system clock.
type RealClock struct{}

// Now is time.Now.
func (RealClock) Now() time.Time { return time.Now() }

// After is time.After.
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Backoff computes "full jitter" exponential delays: each wait is uniform in
// [min/2, cur] where cur doubles from min up to max, so a fleet of devices
// that lost the same broker does not come back in lock step. Not safe for
// concurrent use; each retry loop owns one.
type Backoff struct {
	min, max time.Duration
	clock    Clock
	rand     func(n int64) int64 // uniform in [0, n)
	cur      time.Duration
}

// New returns a backoff between min and max on clock (nil: the real clock).
// A max below min is raised to min.
func New(min, max time.Duration, clock Clock) *Backoff {
	if clock == nil {
		clock = RealClock{}
	}
	if max < min {
		max = min
	}
	return &Backoff{min: min, max: max, clock: clock, rand: rand.Int64N}
}

// Next returns the next delay and grows the bound.
func (b *Backoff) Next() time.Duration {
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

// Reset starts again from min after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Wait sleeps for the next delay on the clock, or until ctx is done, and
// then returns ctx.Err(). wake, if not nil, ends the wait early with nil (for
// example when a link comes back).
func (b *Backoff) Wait(ctx context.Context, wake <-chan struct{}) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-b.clock.After(b.Next()):
		return nil
	case <-wake:
		return nil
	}
}
