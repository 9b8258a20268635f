package runtime

import (
	"context"
	"os"
	goruntime "runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// benchCycles is the number of load/unload cycles BenchmarkLoadUnload runs
// per iteration; OUTPOST_LOAD_CYCLES overrides it.
func benchCycles() int {
	if n, err := strconv.Atoi(os.Getenv("OUTPOST_LOAD_CYCLES")); err == nil && n > 0 {
		return n
	}
	return 2000
}

// BenchmarkLoadUnload shows that RSS stays flat over thousands of
// load/run/free cycles: it reports the RSS growth between the first and the
// second half of the run (a leak grows both halves alike).
func BenchmarkLoadUnload(b *testing.B) {
	data := readModel(b, "face_detection_short_range.tflite")
	probe, err := Load(data, Options{Workers: 1})
	if err != nil {
		b.Fatal(err)
	}
	in := inputsFor(probe, 0)
	probe.Close()
	n := benchCycles()
	for range b.N {
		for range 50 {
			loadCycle(b, data, in)
		}
		start := rssBytes(b)
		for range n / 2 {
			loadCycle(b, data, in)
		}
		mid := rssBytes(b)
		for range n / 2 {
			loadCycle(b, data, in)
		}
		end := rssBytes(b)
		b.ReportMetric(float64(mid-start)/1024, "KB-rss-growth-1st-half")
		b.ReportMetric(float64(end-mid)/1024, "KB-rss-growth-2nd-half")
		b.ReportMetric(float64(end)/(1<<20), "MB-rss-end")
		b.ReportMetric(float64(n), "cycles")
	}
}

// BenchmarkInvokeVsBareC measures one pool invoke (copy in, run, copy out)
// against one bare C API invoke of the same model and input, alternating the
// two back to back so both see the same machine state, and reports the
// median of the per-pair ratios. Goal: under 1.05.
func BenchmarkInvokeVsBareC(b *testing.B) {
	for _, model := range []string{"face_detection_short_range.tflite", "hand_landmark_lite.tflite"} {
		b.Run(model, func(b *testing.B) {
			path := modelPath(b, model)
			m, err := LoadFile(path, Options{Workers: 1, Threads: 1})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			bare, err := NewBaseline(path, 1, true)
			if err != nil {
				b.Fatal(err)
			}
			defer bare.Close()
			in := inputsFor(m, 0)
			out := outBufs(m)
			for i := range in {
				if err := bare.SetInput(i, in[i]); err != nil {
					b.Fatal(err)
				}
			}
			ctx := context.Background()
			const pairs = 400
			for range 20 { // warm up both
				_ = bare.Run()
				_ = m.Invoke(ctx, in, out)
			}
			b.ResetTimer()
			for range b.N {
				ratios := make([]float64, 0, pairs)
				pool := make([]float64, 0, pairs)
				cc := make([]float64, 0, pairs)
				for i := range pairs {
					var tb, tp time.Duration
					// Alternate which goes first so neither always gets a warm cache.
					if i%2 == 0 {
						tb = timeIt(func() { _ = bare.Run() })
						tp = timeIt(func() { _ = m.Invoke(ctx, in, out) })
					} else {
						tp = timeIt(func() { _ = m.Invoke(ctx, in, out) })
						tb = timeIt(func() { _ = bare.Run() })
					}
					ratios = append(ratios, float64(tp)/float64(tb))
					pool = append(pool, float64(tp))
					cc = append(cc, float64(tb))
				}
				b.ReportMetric(median(cc)/1e3, "bare-µs")
				b.ReportMetric(median(pool)/1e3, "pool-µs")
				b.ReportMetric(median(ratios), "pool/bare")
			}
		})
	}
}

func timeIt(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkPoolCallers is why the agent's binaries raise GOMAXPROCS
// (RaiseProcs) and why the batch's workers yield after each invoke: a pool
// of one interpreter per CPU, run by as many callers as interpreters (none
// ever waits) and by twice as many (each interpreter is handed from caller
// to caller, as under an API's load), with GOMAXPROCS at the CPUs and at
// twice the CPUs ("-raised"), and one caller per interpreter that calls
// runtime.Gosched after each call ("-yield"). The legs alternate in rounds;
// it reports the median ratio of each leg's calls a second to the 1x leg's,
// the median invoke time of each leg, and the share of the CPUs left idle
// in each (from /proc/stat).
func BenchmarkPoolCallers(b *testing.B) {
	defer goruntime.GOMAXPROCS(goruntime.GOMAXPROCS(0))
	for _, tc := range []struct {
		model string
		calls int
	}{
		{"face_detection_short_range.tflite", 1200},
		{"hand_landmark_lite.tflite", 300},
	} {
		b.Run(tc.model, func(b *testing.B) {
			m, err := LoadFile(modelPath(b, tc.model), Options{Workers: cpus})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			in := inputsFor(m, 0)
			run := func(callers, procs int, yield bool) (perSec, invoke, idle float64) {
				goruntime.GOMAXPROCS(procs)
				var wg sync.WaitGroup
				var next, invokeNs atomic.Int64
				before := cpuTicks()
				start := time.Now()
				for range callers {
					wg.Go(func() {
						for next.Add(1) <= int64(tc.calls) {
							tm, err := m.InvokeFunc(context.Background(), in, func(int, []byte) error { return nil }, len(m.Outputs()))
							if err != nil {
								b.Error(err)
								return
							}
							invokeNs.Add(int64(tm.Invoke))
							if yield {
								goruntime.Gosched()
							}
						}
					})
				}
				wg.Wait()
				d := time.Since(start)
				after := cpuTicks()
				if total := after.total - before.total; total > 0 {
					idle = float64(after.idle-before.idle) / float64(total)
				}
				return float64(tc.calls) / d.Seconds(), float64(invokeNs.Load()) / float64(tc.calls) / 1e3, idle
			}
			legs := []struct {
				name           string
				callers, procs int
				yield          bool
			}{
				{"1x", cpus, cpus, false}, {"2x", 2 * cpus, cpus, false},
				{"1x-raised", cpus, 2 * cpus, false}, {"2x-raised", 2 * cpus, 2 * cpus, false},
				{"1x-raised-yield", cpus, 2 * cpus, true},
			}
			run(cpus, cpus, false) // warm up
			for range b.N {
				ratio := map[string][]float64{}
				invoke := map[string][]float64{}
				idle := map[string][]float64{}
				for round := range 5 {
					rate := map[string]float64{}
					for k := range legs {
						l := legs[(k+round)%len(legs)]
						r, inv, id := run(l.callers, l.procs, l.yield)
						rate[l.name] = r
						invoke[l.name] = append(invoke[l.name], inv)
						idle[l.name] = append(idle[l.name], id)
					}
					for _, l := range legs[1:] {
						ratio[l.name] = append(ratio[l.name], rate[l.name]/rate["1x"])
					}
				}
				for _, l := range legs {
					if l.name != "1x" {
						b.Logf("per-round %s/1x: %.3f", l.name, ratio[l.name])
						b.ReportMetric(median(ratio[l.name]), l.name+"/1x")
					}
					b.ReportMetric(median(invoke[l.name]), "invoke-µs-"+l.name)
					b.ReportMetric(100*median(idle[l.name]), "idle-%-"+l.name)
				}
			}
		})
	}
}

type ticks struct{ idle, total uint64 }

// cpuTicks reads the machine's CPU time counters (zero where /proc/stat is
// missing).
func cpuTicks() ticks {
	var t ticks
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return t
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		n, _ := strconv.ParseUint(f, 10, 64)
		t.total += n
		if i == 3 || i == 4 { // idle, iowait
			t.idle += n
		}
	}
	return t
}
