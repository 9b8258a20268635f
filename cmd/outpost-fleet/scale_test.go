package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/simdevice"
)

// scaleResult is what one scale run measured.
type scaleResult struct {
	agents        int
	complete      time.Duration // rollout create -> completed
	messages      uint64        // controller messages in + out during the rollout
	peakRSS, rss  int64         // controller process, bytes (VmHWM, VmRSS)
	heap          uint64
	chunks, bytes uint64
}

func (r scaleResult) String() string {
	return fmt.Sprintf("%d agents: rollout completed in %s, %d controller messages (%.0f msg/s), %d chunks %.1f MiB, controller peak RSS %.1f MiB (RSS %.1f MiB, heap %.1f MiB; embedded broker included)",
		r.agents, r.complete.Round(time.Millisecond), r.messages, float64(r.messages)/r.complete.Seconds(), r.chunks, float64(r.bytes)/(1<<20),
		float64(r.peakRSS)/(1<<20), float64(r.rss)/(1<<20), float64(r.heap)/(1<<20))
}

// runScale starts the real controller binary with its embedded broker,
// pushes a model through the admin API, connects n simulated agents and
// times a three-wave rollout to all of them.
func runScale(tb testing.TB, n, modelBytes int) scaleResult {
	tb.Helper()
	bin, err := buildOnce()
	if err != nil {
		tb.Fatal(err)
	}
	srv := startServe(tb, bin, serveOptions{Fleet: "scale"})
	admin, mqttAddr, k := srv.admin, srv.mqtt, srv.keys

	pushRandomModel(tb, admin, k, modelBytes)
	startSims(tb, n, []string{"tcp://" + mqttAddr}, "scale", "sim", k, simdevice.Options{RetryAfter: 5 * time.Second})
	deadline := time.Now().Add(120 * time.Second)
	for {
		var ds []json.RawMessage
		getJSON(tb, admin+"/v1/devices", &ds)
		if len(ds) >= n {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d devices registered", len(ds), n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // let the online states land too
	var before controller.Stats
	getJSON(tb, admin+"/v1/stats", &before)

	start := time.Now()
	rep := createRollout(tb, admin, []int{10, 50, 100}, nil)
	deadline = time.Now().Add(10 * time.Minute)
	for rep.State != "completed" {
		if time.Now().After(deadline) || rep.State == "halted" {
			tb.Fatalf("rollout is %s with %d committed of %d", rep.State, rep.Committed, n)
		}
		time.Sleep(50 * time.Millisecond)
		getJSON(tb, admin+"/v1/rollouts/"+rep.ID, &rep)
	}
	res := scaleResult{agents: n, complete: time.Since(start)}
	if rep.Committed != n {
		tb.Fatalf("completed with %d committed of %d", rep.Committed, n)
	}
	var after controller.Stats
	getJSON(tb, admin+"/v1/stats", &after)
	res.messages = after.MessagesIn + after.MessagesOut - before.MessagesIn - before.MessagesOut
	res.heap, res.chunks, res.bytes = after.HeapBytes, after.Artifacts.Chunks, after.Artifacts.Bytes
	res.peakRSS, res.rss = procMem(tb, srv.cmd.Process.Pid)
	return res
}

// TestScaleShort: a rollout to 20 simulated agents through the real
// controller binary and its embedded broker completes; it prints the
// figures (the 200-agent run is BenchmarkRollout200, or OUTPOST_SCALE_AGENTS).
func TestScaleShort(t *testing.T) {
	n := 20
	if s := os.Getenv("OUTPOST_SCALE_AGENTS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	res := runScale(t, n, 256<<10)
	if res.messages == 0 || res.chunks < uint64(n*4) {
		t.Fatalf("implausible counters: %s", res)
	}
	t.Log(res)
}

// BenchmarkRollout200 is the scale benchmark of issue 6: 200 simulated
// agents, one broker, one controller process. make bench runs it once.
func BenchmarkRollout200(b *testing.B) {
	for range b.N {
		res := runScale(b, 200, 256<<10)
		b.ReportMetric(res.complete.Seconds(), "s/rollout")
		b.ReportMetric(float64(res.messages)/res.complete.Seconds(), "msgs/s")
		b.ReportMetric(float64(res.peakRSS)/(1<<20), "ctrl-peak-MiB")
		b.Log(res)
	}
}
