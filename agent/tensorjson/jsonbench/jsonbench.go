// Package jsonbench times the agent's JSON tensor codecs against
// encoding/json within one benchmark, for the figures we hold ourselves to
// ("at least 3 times faster than encoding/json").
//
// These machines drift between fast and slow spells lasting seconds, so
// two benchmarks run one after the other do not compare. Compare runs both
// codecs back to back, many times, and reports the median of the per-round
// ratios; it does enough rounds within a single benchmark op that
// `-benchtime 1x` (make bench) still prints a meaningful figure.
package jsonbench

import (
	"runtime"
	"slices"
	"testing"
	"time"
)

// MinRounds is the fewest rounds Compare runs, whatever b.N is.
const MinRounds = 15

// Compare runs ours and theirs alternately, max(b.N, MinRounds) times
// each, switching which goes first every round and starting each on a
// freshly collected heap, so neither pays for the other's garbage. theirs
// is the baseline doing the same work, named by base ("encjson" for
// encoding/json). It reports:
//
//   - speedup: the median over rounds of theirs' time over ours';
//   - ours-ns/op and <base>-ns/op: the median time of each;
//   - ours-MB/s: bytes (the JSON's size; omitted when 0) over ours' median;
//   - ns/op: the mean time of a round, both together;
//   - B/op and allocs/op: what one run of ours allocates.
func Compare(b *testing.B, base string, bytes int, ours, theirs func()) {
	b.Helper()
	ours()
	theirs()
	allocs, allocBytes := allocated(ours)
	rounds := max(b.N, MinRounds)
	to := make([]time.Duration, 0, rounds)
	tt := make([]time.Duration, 0, rounds)
	ratios := make([]float64, 0, rounds)
	b.ResetTimer()
	for i := range rounds {
		var o, t time.Duration
		if i%2 == 0 {
			o = timed(ours)
			t = timed(theirs)
		} else {
			t = timed(theirs)
			o = timed(ours)
		}
		to = append(to, o)
		tt = append(tt, t)
		ratios = append(ratios, float64(t)/float64(max(o, 1)))
	}
	b.StopTimer()
	var sum time.Duration
	for i := range to {
		sum += to[i] + tt[i]
	}
	b.ReportMetric(float64(sum.Nanoseconds())/float64(rounds), "ns/op")
	b.ReportMetric(Median(ratios), "speedup")
	mo := Median(to)
	b.ReportMetric(float64(mo.Nanoseconds()), "ours-ns/op")
	if bytes > 0 {
		b.ReportMetric(float64(bytes)/mo.Seconds()/1e6, "ours-MB/s")
	}
	b.ReportMetric(float64(Median(tt).Nanoseconds()), base+"-ns/op")
	b.ReportMetric(allocs, "allocs/op")
	b.ReportMetric(allocBytes, "B/op")
}

// allocated returns the allocations and bytes of one run of f, averaged
// over a few.
func allocated(f func()) (allocs, bytes float64) {
	const runs = 3
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&m1)
	return float64(m1.Mallocs-m0.Mallocs) / runs, float64(m1.TotalAlloc-m0.TotalAlloc) / runs
}

// timed collects garbage, then returns how long f takes.
func timed(f func()) time.Duration {
	runtime.GC()
	t0 := time.Now()
	f()
	return time.Since(t0)
}

// Median returns the middle value of v (the upper one of the two middle
// values when len(v) is even), sorting v in place. v must not be empty.
func Median[T int64 | float64 | time.Duration](v []T) T {
	slices.Sort(v)
	return v[len(v)/2]
}
