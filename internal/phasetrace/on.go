//go:build phasetrace

package phasetrace

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// Trace is one request's marks.
type Trace struct {
	last   time.Time
	d      [nPhases]time.Duration
	marked [nPhases]bool
}

// Start begins a trace at the handler's start.
func Start() Trace { return Trace{last: time.Now()} }

// Mark ends phase p now; the next phase starts here.
func (t *Trace) Mark(p Phase) {
	now := time.Now()
	t.d[p] += now.Sub(t.last)
	t.marked[p] = true
	t.last = now
}

var record struct {
	mu   sync.Mutex
	d    [nPhases][]float64 // microseconds, one per request that marked the phase
	done int
}

// Done ends the trace and adds its phases to the process's record.
func (t *Trace) Done() {
	record.mu.Lock()
	defer record.mu.Unlock()
	for p := range nPhases {
		if t.marked[p] {
			record.d[p] = append(record.d[p], float64(t.d[p].Nanoseconds())/1e3)
		}
	}
	record.done++
	if record.done%100 == 0 {
		if path := os.Getenv("OUTPOST_PHASETRACE"); path != "" {
			// Whole or not at all: the reader may look at any time.
			if os.WriteFile(path+".tmp", []byte(summary()), 0o644) == nil {
				os.Rename(path+".tmp", path)
			}
		}
	}
}

func summary() string {
	var sb strings.Builder
	for p := range nPhases {
		v := slices.Clone(record.d[p])
		if len(v) == 0 {
			continue
		}
		slices.Sort(v)
		fmt.Fprintf(&sb, "%s %.2f %d\n", p, v[len(v)/2], len(v))
	}
	return sb.String()
}
