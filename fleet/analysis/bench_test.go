package analysis_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/registry"
)

// BenchmarkAnalyzeWave: a wave analysis on the embedded store, 250
// devices on the candidate against 250 on the baseline, 15 minute
// intervals each (7,500 intervals read per arm), the exact-test budget
// exceeded (normal approximation).
func BenchmarkAnalyzeWave(b *testing.B) {
	r, err := registry.Open(b.TempDir(), registry.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var cand, base []string
	for i := range 500 {
		d := fmt.Sprintf("gw-%03d", i)
		v := int64(1)
		if i%2 == 0 {
			v = 2
			cand = append(cand, d)
		} else {
			base = append(base, d)
		}
		send(b, r, t0, time.Minute, traffic{device: d, version: v, intervals: 15, requests: 100, meanMS: 5, seed: uint64(i)})
	}
	a, err := analysis.New(analysis.Options{Store: r})
	if err != nil {
		b.Fatal(err)
	}
	req := analysis.Request{Phase: analysis.PhaseWave, Model: "hands", Baseline: 1, Candidate: 2, Devices: cand,
		BaselineDevices: base, From: t0, To: t0.Add(15 * time.Minute)}
	b.ResetTimer()
	for range b.N {
		rep, err := a.Analyze(b.Context(), req)
		if err != nil || rep.Verdict != analysis.Pass {
			b.Fatalf("%v %s %s", err, rep.Verdict, rep.Reason)
		}
	}
}
