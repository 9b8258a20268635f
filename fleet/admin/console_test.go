package admin

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
)

// TestSummaryCache: an overview is counted once per summaryFresh, however
// many ask at once; a failed count is not kept.
func TestSummaryCache(t *testing.T) {
	var c summaryCache
	var counts atomic.Int32
	fail := false
	count := func() (*registry.FleetSummary, error) {
		n := counts.Add(1)
		if fail {
			return nil, errors.New("store down")
		}
		return &registry.FleetSummary{Devices: int(n)}, nil
	}
	t0 := time.Unix(1000, 0)
	var wg sync.WaitGroup
	got := make([]int, 8)
	for i := range got {
		wg.Go(func() {
			s, err := c.get(t0, count)
			if err == nil {
				got[i] = s.Devices
			}
		})
	}
	wg.Wait()
	for i, d := range got {
		if d != 1 {
			t.Fatalf("caller %d got the summary of count %d, want 1 (one count for all)", i, d)
		}
	}
	for _, tc := range []struct {
		at   time.Duration
		fail bool
		want int // Devices of the summary, 0 for an error
	}{
		{at: time.Second, want: 1},
		{at: summaryFresh, want: 2},
		{at: summaryFresh + time.Second, want: 2},
		{at: 2 * summaryFresh, fail: true, want: 0},
		{at: 2 * summaryFresh, want: 4},
		{at: -time.Second, want: 5}, // the clock went back: count again
	} {
		fail = tc.fail
		s, err := c.get(t0.Add(tc.at), count)
		d := 0
		if err == nil {
			d = s.Devices
		}
		if d != tc.want || (err != nil) != tc.fail {
			t.Errorf("at %s: got %d, %v; want %d", tc.at, d, err, tc.want)
		}
	}
}
