package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// BenchmarkShadowBinary is what mirroring 10% of the traffic to a candidate
// in shadow costs the serving version's clients: the real outpost-agent in
// its own process serves face_detection_short_range (v1, from a file) over
// HTTP with binary tensors, and a test fleet on the embedded broker puts the
// same model as v2 on trial in shadow at 10% (its own pool of one
// interpreter, one shadow worker) and aborts it again. Blocks of requests
// with no trial and with the shadow alternate, the order rotated each pair,
// so drift of the machine lands on both arms alike. Per arm: p50 and p99 of
// the client's wall time per request; then the ratios shadow/none.
//
// Run with make bench-shadow (OUTPOST_BENCH_SHADOW=full): 8 pairs of blocks
// of 200 requests per client, with 1 and 2 clients, at most 3 minutes each.
// Without it (make bench) a short version: 3 pairs of 150 requests, one
// client.
func BenchmarkShadowBinary(b *testing.B) {
	full := os.Getenv("OUTPOST_BENCH_SHADOW") == "full"
	dir := b.TempDir()
	bin := filepath.Join(dir, "outpost-agent")
	if msg, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, msg)
	}
	face, err := filepath.Abs(filepath.Join(modelsDir(), "face_detection_short_range.tflite"))
	if err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile(face)
	if err != nil {
		b.Fatalf("test model missing (run `make setup`): %v", err)
	}
	pairs, perBlock, all := 3, 150, []int{1}
	if full {
		pairs, perBlock, all = 8, 200, []int{1, 2}
	}
	for _, clients := range all {
		b.Run("clients="+strconv.Itoa(clients), func(b *testing.B) {
			for range b.N {
				shadowCost(b, bin, face, data, clients, pairs, perBlock)
			}
		})
	}
}

func modelsDir() string {
	if d := os.Getenv("OUTPOST_MODELS"); d != "" {
		return d
	}
	return filepath.Join("..", "..", ".deps", "models")
}

func shadowCost(b *testing.B, bin, face string, data []byte, clients, pairs, perBlock int) {
	const percent = 10
	f := newTrialFleet(b, "bench", "gw-1")
	a := startTrialAgent(b, bin, f, face)
	type req struct {
		body []byte
		hl   string
	}
	var reqs []req
	for i := range 16 {
		body, hl := faceBody(float64(i))
		reqs = append(reqs, req{body, hl})
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	deadline := time.Now().Add(3 * time.Minute)
	// block runs perBlock requests on each client and returns their times
	// in ms.
	block := func() []float64 {
		var mu sync.Mutex
		var out []float64
		var wg sync.WaitGroup
		for c := range clients {
			wg.Go(func() {
				times := make([]float64, 0, perBlock)
				for i := range perBlock {
					r := reqs[(c*perBlock+i)%len(reqs)]
					v, took, err := a.infer(client, r.body, r.hl, "")
					if err != nil || v != "1" {
						b.Errorf("request answered by v%q: %v", v, err)
						return
					}
					times = append(times, float64(took.Microseconds())/1000)
				}
				mu.Lock()
				out = append(out, times...)
				mu.Unlock()
			})
		}
		wg.Wait()
		return out
	}
	block() // warm-up: connections, caches, the allocator
	var none, shadow []float64
	var r50, r99 []float64 // per pair: shadow/none
	rollout := 0
	runShadow := func() []float64 {
		rollout++
		id := "bench-" + strconv.Itoa(rollout)
		f.install(id+"-install", id, "face", 2, data, &protocol.Trial{Mode: protocol.TrialShadow, Percent: percent})
		f.waitAck(id+"-install", protocol.UpdateShadow)
		t := block()
		f.abort(id+"-abort", id)
		f.waitAck(id+"-install", protocol.UpdateFailed)
		return t
	}
	for p := 0; p < pairs && time.Now().Before(deadline) && !b.Failed(); p++ {
		var n, s []float64
		if p%2 == 0 {
			n = block()
			s = runShadow()
		} else {
			s = runShadow()
			n = block()
		}
		none, shadow = append(none, n...), append(shadow, s...)
		r50 = append(r50, pct(s, 0.50)/pct(n, 0.50))
		r99 = append(r99, pct(s, 0.99)/pct(n, 0.99))
	}
	if b.Failed() {
		return
	}
	compared := metric(b, a.url, `outpost_shadow_copies_total{model="face",result="compared",version="2"}`)
	dropped := metric(b, a.url, `outpost_shadow_copies_total{model="face",result="dropped",version="2"}`)
	n50, n99 := pct(none, 0.50), pct(none, 0.99)
	s50, s99 := pct(shadow, 0.50), pct(shadow, 0.99)
	b.ReportMetric(n50, "none-p50-ms")
	b.ReportMetric(n99, "none-p99-ms")
	b.ReportMetric(s50, "shadow-p50-ms")
	b.ReportMetric(s99, "shadow-p99-ms")
	b.ReportMetric(s50/n50, "p50-shadow/none")
	b.ReportMetric(s99/n99, "p99-shadow/none")
	b.ReportMetric(pct(r50, 0.5), "pair-median-p50-shadow/none")
	b.ReportMetric(pct(r99, 0.5), "pair-median-p99-shadow/none")
	fmt.Printf("shadow %d%%, %d client(s): none p50 %.3f ms p99 %.3f ms (%d requests); shadow p50 %.3f ms p99 %.3f ms (%d requests, %.0f copies compared, %.0f dropped); ratio p50 %.3f p99 %.3f; median over %d pairs of blocks: p50 %.3f p99 %.3f\n",
		percent, clients, n50, n99, len(none), s50, s99, len(shadow), compared, dropped, s50/n50, s99/n99, len(r50), pct(r50, 0.5), pct(r99, 0.5))
}

func pct(v []float64, q float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[int(q*float64(len(s)-1))]
}
