package updater

import (
	"fmt"
	"sync"
	"time"
)

// TrafficSource reports a served model version's traffic as counters that
// only grow while the process runs; probation looks at their change. It must
// be safe for concurrent use; an unknown model or version has zero counts.
type TrafficSource interface {
	Traffic(model string, version int64) TrafficStats
}

// TrafficStats are cumulative request counters of one model version.
type TrafficStats struct {
	Requests uint64 `json:"requests,omitempty"`
	// Errors counts requests the model failed to answer (the daemon's 5xx,
	// not bad input from clients).
	Errors uint64 `json:"errors,omitempty"`
	// Latency is the sum of the requests' latencies.
	Latency time.Duration `json:"latency_ns,omitempty"`
}

// Add returns the sum of s and o.
func (s TrafficStats) Add(o TrafficStats) TrafficStats {
	return TrafficStats{Requests: s.Requests + o.Requests, Errors: s.Errors + o.Errors, Latency: s.Latency + o.Latency}
}

// Sub returns the change from base to s.
func (s TrafficStats) Sub(base TrafficStats) TrafficStats {
	if s.Requests < base.Requests || s.Errors < base.Errors {
		return s // counters started again
	}
	return TrafficStats{Requests: s.Requests - base.Requests, Errors: s.Errors - base.Errors, Latency: s.Latency - base.Latency}
}

// Mean is the mean latency, 0 without requests.
func (s TrafficStats) Mean() time.Duration {
	if s.Requests == 0 {
		return 0
	}
	return s.Latency / time.Duration(s.Requests)
}

func (s TrafficStats) String() string {
	return fmt.Sprintf("%d requests, %d errors, mean latency %s", s.Requests, s.Errors, s.Mean().Round(time.Microsecond))
}

// TrafficCounter is a TrafficSource the daemon feeds from its API observer:
// one Observe per answered inference request.
type TrafficCounter struct {
	mu sync.Mutex // guards m
	m  map[trafficKey]*TrafficStats
}

type trafficKey struct {
	model   string
	version int64
}

// NewTrafficCounter returns an empty counter.
func NewTrafficCounter() *TrafficCounter {
	return &TrafficCounter{m: map[trafficKey]*TrafficStats{}}
}

// Observe counts one request answered by model at version; failed means the
// model could not answer (not a client's bad input).
func (c *TrafficCounter) Observe(model string, version int64, failed bool, latency time.Duration) {
	k := trafficKey{model, version}
	c.mu.Lock()
	s := c.m[k]
	if s == nil {
		s = &TrafficStats{}
		c.m[k] = s
	}
	s.Requests++
	if failed {
		s.Errors++
	}
	s.Latency += latency
	c.mu.Unlock()
}

// Traffic implements TrafficSource.
func (c *TrafficCounter) Traffic(model string, version int64) TrafficStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.m[trafficKey{model, version}]; s != nil {
		return *s
	}
	return TrafficStats{}
}
