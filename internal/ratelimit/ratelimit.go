// Package ratelimit is a token bucket per key (a client's address), used
// by the agent's API for every request and by the fleet admin API for
// failed authentications.
package ratelimit

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// PerKey holds a token bucket per key: Burst tokens at first, refilled at
// Rate per second. Buckets idle long enough to be full again are dropped,
// so a scan of many addresses cannot grow it without bound. It is safe for
// concurrent use.
type PerKey struct {
	rate  float64 // tokens per second
	burst float64
	now   func() time.Time

	mu      sync.Mutex // guards buckets and lastGC
	buckets map[string]*bucket
	lastGC  time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a limiter of rate tokens per second (> 0) and burst tokens;
// burst <= 0 means max(1, rate). now nil means time.Now.
func New(rate float64, burst int, now func() time.Time) *PerKey {
	if burst <= 0 {
		burst = max(1, int(rate))
	}
	if now == nil {
		now = time.Now
	}
	return &PerKey{rate: rate, burst: float64(burst), now: now, buckets: map[string]*bucket{}}
}

// Allow takes a token from key's bucket. When there is none it returns
// false and how long until there is one.
func (l *PerKey) Allow(key string) (time.Duration, bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	// A bucket idle this long is full: dropping it changes nothing.
	idle := max(time.Minute, time.Duration(l.burst/l.rate*float64(time.Second)))
	if now.Sub(l.lastGC) > idle {
		for k, b := range l.buckets {
			if now.Sub(b.last) > idle {
				delete(l.buckets, k)
			}
		}
		l.lastGC = now
	}
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 {
		return time.Duration((1 - b.tokens) / l.rate * float64(time.Second)), false
	}
	b.tokens--
	return 0, true
}

// Len is the number of buckets held.
func (l *PerKey) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// ClientKey is the request's client address without the port ("unix" or
// whatever RemoteAddr holds for socket clients, which share one bucket).
func ClientKey(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
