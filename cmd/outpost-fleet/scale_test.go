package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/models/manifest"
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

	// A random "model": the controller checks the signed manifest, not TFLite.
	model := make([]byte, modelBytes)
	_, _ = rand.Read(model)
	sum := sha256.Sum256(model)
	rel, err := k.SignRelease(manifest.Manifest{Name: "face", Version: 1, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(model)), Runtime: "tflite",
		Inputs:  []manifest.Tensor{{Name: "in", DataType: "FP32", Shape: []int{1}}},
		Outputs: []manifest.Tensor{{Name: "out", DataType: "FP32", Shape: []int{1}}}}, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	w, _ := mw.CreateFormFile("release", "release.json")
	w.Write(rel)
	w, _ = mw.CreateFormFile("model", "model.tflite")
	w.Write(model)
	mw.Close()
	resp, err := http.Post(admin+"/v1/models", mw.FormDataContentType(), &body)
	if err != nil || resp.StatusCode != http.StatusCreated {
		tb.Fatalf("push: %v %v", resp, err)
	}
	resp.Body.Close()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for i := range n {
		a, err := simdevice.New(simdevice.Options{Broker: "tcp://" + mqttAddr, Fleet: "scale", Device: fmt.Sprintf("sim-%04d", i), Root: k.Root(),
			RetryAfter: 5 * time.Second})
		if err != nil {
			tb.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = a.Run(ctx) }()
	}
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
	b, _ := json.Marshal(map[string]any{"model": "face", "version": 1, "waves": []int{10, 50, 100}})
	resp, err = http.Post(admin+"/v1/rollouts", "application/json", bytes.NewReader(b))
	if err != nil || resp.StatusCode != http.StatusCreated {
		tb.Fatalf("rollout create: %v %v", resp, err)
	}
	var rep struct {
		ID        string `json:"id"`
		State     string `json:"state"`
		Committed int    `json:"committed"`
	}
	json.NewDecoder(resp.Body).Decode(&rep)
	resp.Body.Close()
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

// procMem reads VmHWM and VmRSS of a process.
func procMem(tb testing.TB, pid int) (peak, rss int64) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Logf("no /proc: %v", err)
		return 0, 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fs[1], 10, 64)
		switch fs[0] {
		case "VmHWM:":
			peak = v << 10
		case "VmRSS:":
			rss = v << 10
		}
	}
	return peak, rss
}

func getJSON(tb testing.TB, url string, out any) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		tb.Fatalf("%s: %v", url, err)
	}
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
