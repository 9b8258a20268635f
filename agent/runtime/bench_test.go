package runtime

import (
	"context"
	"os"
	"sort"
	"strconv"
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
