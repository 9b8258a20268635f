//go:build cgo

package api

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/runtime"
)

// process is a child process that printed "PREFIX: listening on ADDR".
type process struct {
	url    string
	cmd    *exec.Cmd
	reaped chan struct{}
}

// startProcess runs bin with args and waits (at most 60 s) for its
// "listening on" line. Cleanup kills it and waits for it to be reaped.
func startProcess(b testing.TB, bin string, args ...string) *process {
	b.Helper()
	return startProcessEnv(b, nil, bin, args...)
}

// startProcessEnv is startProcess with env added to the environment.
func startProcessEnv(b testing.TB, env []string, bin string, args ...string) *process {
	b.Helper()
	cmd := exec.Command(bin, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &process{cmd: cmd, reaped: make(chan struct{})}
	addr := make(chan string, 1)
	var tail strings.Builder // the output, kept for a failure message
	var tailMu sync.Mutex
	go func() { // reads stderr to its end, then reaps
		defer close(p.reaped)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if _, a, ok := strings.Cut(line, ": listening on "); ok {
				select {
				case addr <- a:
				default:
				}
			}
			tailMu.Lock()
			if tail.Len() < 16<<10 {
				tail.WriteString(line + "\n")
			}
			tailMu.Unlock()
		}
		cmd.Wait()
	}()
	b.Cleanup(func() {
		cmd.Process.Kill()
		<-p.reaped
	})
	select {
	case a := <-addr:
		p.url = "http://" + a
		return p
	case <-p.reaped:
	case <-time.After(60 * time.Second):
	}
	tailMu.Lock()
	defer tailMu.Unlock()
	b.Fatalf("%s did not start listening:\n%s", filepath.Base(bin), tail.String())
	return nil
}

// waitReady polls the agent's readiness (at most 60 s): it listens before
// its models are loaded.
func waitReady(b testing.TB, url string) {
	b.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(url + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("agent at %s not ready after 60 s (last: %v)", url, err)
		}
		time.Sleep(20 * time.Millisecond) // polling a child process: no event to wait on
	}
}

// buildBinaries builds outpost-agent and the floor server into dir, with
// the build tags given.
func buildBinaries(b testing.TB, dir string, tags ...string) (agentBin, floorBin string) {
	b.Helper()
	agentBin, floorBin = filepath.Join(dir, "outpost-agent"), filepath.Join(dir, "floor")
	for _, c := range [][2]string{{agentBin, "../../cmd/outpost-agent"}, {floorBin, "./testdata/floor"}} {
		if msg, err := exec.Command("go", "build", "-tags", strings.Join(tags, ","), "-o", c[0], c[1]).CombinedOutput(); err != nil {
			b.Fatalf("go build %s: %v\n%s", c[1], err, msg)
		}
	}
	return agentBin, floorBin
}

// timedPost is post with its wall time; it fails on anything but 200.
func timedPost(client *http.Client, url string, body []byte, hdr map[string]string) (time.Duration, error) {
	start := time.Now()
	code, _ := post(client, url, body, hdr)
	d := time.Since(start)
	if code != http.StatusOK {
		return d, fmt.Errorf("%s answered %d", url, code)
	}
	return d, nil
}

func quantile(v []float64, q float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[int(q*float64(len(s)-1))]
}

// BenchmarkOverheadBinary is the agent's overhead as a user sees it: the
// real outpost-agent binary in its own process serving
// face_detection_short_range, a server that runs no inference in its own
// process answering the agent's very response bytes (the transport floor,
// testdata/floor), and a bare TFLite C API invoke of the same model and
// input (runtime.Baseline, XNNPACK, one thread). One client thread, binary
// tensors, interleaved request by request with the order rotated. Per
// triplet, overhead = (agent - bare) / floor; reported as the median
// (overhead/floor) and p90 over triplets, beside the medians of each leg
// and median(agent - bare) / median(floor), which one slow invoke moves less.
// invoke-penalty/floor is the agent's mean invoke (its own invoke phase
// metric: the input copied in and the run) minus the bare invoke's mean
// (which copies the outputs out too), over the floor's mean: the part of the
// overhead that is the model running slower inside the agent.
//
// A fourth leg, the thin server (the floor binary given the model: it
// copies the request's tensor into a bare interpreter and invokes it
// between reading the body and answering), is the least any Go HTTP server
// running this model pays: thin-overhead/floor is (thin - bare) / floor per
// round, what serving the invoke over HTTP costs whoever serves it, and
// agent-over-thin/floor is (agent - thin) / floor, what the agent's own code
// adds to that. Each is the median over rounds.
// Sub-benchmarks: the default workers (one per core) and workers 1.
//
// Bounded: at most 400 rounds or 60 s per run, loopback only.
func BenchmarkOverheadBinary(b *testing.B) {
	path := modelPath(b, face)
	dir := b.TempDir()
	agentBin, floorBin := buildBinaries(b, dir)
	body, hdr := binaryRequest(b, input(0))
	bare, err := runtime.NewBaseline(path, 1, true)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bare.Close() })
	if err := bare.SetInput(0, le(input(0))); err != nil {
		b.Fatal(err)
	}
	// What the agent's telemetry (aggregates, and a sample of 1% of the
	// requests written to its durable queue) costs a request.
	noTelemetry := filepath.Join(dir, "no-telemetry.yaml")
	if err := os.WriteFile(noTelemetry, []byte("telemetry:\n  disabled: true\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"workers=default", nil},
		{"workers=1", []string{"--workers", "1"}},
		{"workers=1/telemetry=off", []string{"--workers", "1", "--config", noTelemetry}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", b.TempDir(),
				"--model", path, "--name", "face"}, tc.args...)
			agent := startProcess(b, agentBin, args...)
			waitReady(b, agent.url)
			agentURL := agent.url + "/v2/models/face/infer"
			floorURL := startFloor(b, floorBin, agentURL, body, hdr)
			thinURL := startFloor(b, floorBin, agentURL, body, hdr, path)
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
			b.Cleanup(client.CloseIdleConnections)
			for range 100 { // warm connections, caches and XNNPACK
				bare.Run()
				for _, u := range []string{floorURL, thinURL, agentURL} {
					if _, err := timedPost(client, u, body, hdr); err != nil {
						b.Fatal(err)
					}
				}
			}
			const rounds, budget = 400, 60 * time.Second
			b.ResetTimer()
			for range b.N {
				var ta, tb, tc, td, ratios, extra, thin, overThin []float64
				var before struct{ sum, n float64 }
				before.sum, before.n = scrapeInvoke(b, agent.url)
				deadline := time.Now().Add(budget)
				for i := 0; i < rounds && time.Now().Before(deadline); i++ {
					var da, db, dc, dd time.Duration
					var err error
					for k := range 4 { // rotate the order: no leg always follows the same one
						switch (i + k) % 4 {
						case 0:
							s := time.Now()
							bare.Run()
							da = time.Since(s)
						case 1:
							db, err = timedPost(client, floorURL, body, hdr)
						case 2:
							dc, err = timedPost(client, agentURL, body, hdr)
						case 3:
							dd, err = timedPost(client, thinURL, body, hdr)
						}
						if err != nil {
							b.Fatal(err)
						}
					}
					ta, tb, tc, td = append(ta, us(da)), append(tb, us(db)), append(tc, us(dc)), append(td, us(dd))
					ratios = append(ratios, float64(dc-da)/float64(db))
					extra = append(extra, us(dc-da))
					thin = append(thin, float64(dd-da)/float64(db))
					overThin = append(overThin, float64(dc-dd)/float64(db))
				}
				b.ReportMetric(quantile(ta, 0.5), "bare-µs")
				b.ReportMetric(quantile(tb, 0.5), "floor-µs")
				b.ReportMetric(quantile(tc, 0.5), "agent-µs")
				b.ReportMetric(quantile(td, 0.5), "thin-µs")
				b.ReportMetric(quantile(ratios, 0.5), "overhead/floor")
				b.ReportMetric(quantile(ratios, 0.9), "p90-overhead/floor")
				// Less sensitive to one slow invoke: median(agent - bare) / median(floor).
				b.ReportMetric(quantile(extra, 0.5)/quantile(tb, 0.5), "med-extra/med-floor")
				b.ReportMetric(quantile(thin, 0.5), "thin-overhead/floor")
				b.ReportMetric(quantile(overThin, 0.5), "agent-over-thin/floor")
				b.ReportMetric(float64(len(ratios)), "rounds")
				// The same invoke inside the agent (its own invoke phase:
				// input copy and run) against the bare one, both means
				// over the run: how much of the overhead is the model
				// running slower in the agent's process.
				sum, n := scrapeInvoke(b, agent.url)
				sum, n = sum-before.sum, n-before.n
				if n == 0 {
					b.Fatal("the agent's metrics counted no invokes")
				}
				b.ReportMetric((sum/n*1e6-mean(ta))/mean(tb), "invoke-penalty/floor")
			}
		})
	}
}

// BenchmarkOverheadPhases says where the agent's time beyond the thin
// server goes: both binaries built with the phasetrace tag time each phase
// of a request in their own process (internal/phasetrace), and this reports
// the median of each, over 1,000 requests to each, interleaved one by one
// from one client thread (default workers; face_detection_short_range,
// binary tensors). The thin server marks read, invoke and write only; its
// invoke is the agent's decode, lookup, prepare, invoke and release, and
// its write the agent's encode and write. agent-answer-µs and
// thin-answer-µs are the sums of the medians up to the answer's last byte
// written (the agent's observe comes after it); client-agent-minus-thin-µs
// is the median over the pairs of what the client waited for each.
//
// Bounded: 1,000 pairs or 60 s, loopback only.
func BenchmarkOverheadPhases(b *testing.B) {
	path := modelPath(b, face)
	dir := b.TempDir()
	agentBin, floorBin := buildBinaries(b, dir, "phasetrace")
	body, hdr := binaryRequest(b, input(0))
	agentTrace, thinTrace := filepath.Join(dir, "agent.phases"), filepath.Join(dir, "thin.phases")
	agent := startProcessEnv(b, []string{"OUTPOST_PHASETRACE=" + agentTrace}, agentBin, "serve", "--listen", "127.0.0.1:0",
		"--data-dir", b.TempDir(), "--model", path, "--name", "face")
	waitReady(b, agent.url)
	agentURL := agent.url + "/v2/models/face/infer"
	thinURL := startFloorEnv(b, []string{"OUTPOST_PHASETRACE=" + thinTrace}, floorBin, agentURL, body, hdr, path)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	b.Cleanup(client.CloseIdleConnections)
	for range 100 {
		for _, u := range []string{thinURL, agentURL} {
			if _, err := timedPost(client, u, body, hdr); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ResetTimer()
	for range b.N {
		// The warm-up's phases are in the record too: a process keeps
		// every request's; 1,000 more outweigh them.
		var diffs []float64
		deadline := time.Now().Add(60 * time.Second)
		for i := 0; i < 1000 && time.Now().Before(deadline); i++ {
			var da, dt time.Duration
			for k := range 2 {
				var err error
				if (i+k)%2 == 0 {
					da, err = timedPost(client, agentURL, body, hdr)
				} else {
					dt, err = timedPost(client, thinURL, body, hdr)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			diffs = append(diffs, us(da-dt))
		}
		// A process writes its record every 100 requests: both have
		// made 1,100 or more by now, so each file holds a record of at
		// least 1,100 requests.
		agentPhases, thinPhases := readPhases(b, agentTrace), readPhases(b, thinTrace)
		var agentSum, thinSum float64
		var table strings.Builder
		for _, p := range []string{"read", "decode", "lookup", "prepare", "invoke", "release", "encode", "write", "observe"} {
			a, aok := agentPhases[p]
			if !aok {
				b.Fatalf("the agent recorded no %s phase: %v", p, agentPhases)
			}
			b.ReportMetric(a, "agent-"+p+"-µs")
			if p != "observe" {
				agentSum += a
			}
			fmt.Fprintf(&table, "\n  %-8s agent %7.1f µs", p, a)
			if t, ok := thinPhases[p]; ok {
				b.ReportMetric(t, "thin-"+p+"-µs")
				thinSum += t
				fmt.Fprintf(&table, "  thin %7.1f µs", t)
			}
		}
		b.Logf("median phase times:%s", table.String())
		b.ReportMetric(agentSum, "agent-answer-µs")
		b.ReportMetric(thinSum, "thin-answer-µs")
		b.ReportMetric(quantile(diffs, 0.5), "client-agent-minus-thin-µs")
		b.ReportMetric(0, "ns/op")
	}
}

// readPhases reads a phasetrace record: phase, median microseconds and
// count per line.
func readPhases(b testing.TB, path string) map[string]float64 {
	b.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatalf("phase record: %v", err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			b.Fatalf("phase record %s: line %q", path, line)
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			b.Fatalf("phase record %s: line %q: %v", path, line, err)
		}
		out[f[0]] = v
	}
	return out
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func mean(v []float64) float64 {
	sum := 0.0
	for _, x := range v {
		sum += x
	}
	return sum / float64(max(len(v), 1))
}

// scrapeInvoke reads the sum (seconds) and count of the agent's invoke
// phase histogram from its /metrics (one model served: one series).
func scrapeInvoke(b *testing.B, url string) (sum, count float64) {
	b.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), "{")
		if !ok || !strings.Contains(rest, `phase="invoke"`) {
			continue
		}
		_, value, _ := strings.Cut(rest, "} ")
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch name {
		case "outpost_inference_phase_seconds_sum":
			sum += v
		case "outpost_inference_phase_seconds_count":
			count += v
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return sum, count
}

// startFloor asks the agent once for its answer to body and starts the
// floor server answering those bytes with the same headers; given a model
// (at most one), the thin server that invokes it first.
func startFloor(b testing.TB, floorBin, agentURL string, body []byte, hdr map[string]string, model ...string) string {
	b.Helper()
	return startFloorEnv(b, nil, floorBin, agentURL, body, hdr, model...)
}

// startFloorEnv is startFloor with env added to the server's environment.
func startFloorEnv(b testing.TB, env []string, floorBin, agentURL string, body []byte, hdr map[string]string, model ...string) string {
	b.Helper()
	req, _ := http.NewRequest("POST", agentURL, strings.NewReader(string(body)))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("agent answered %d: %v %s", resp.StatusCode, err, got)
	}
	file := filepath.Join(b.TempDir(), "response")
	if err := os.WriteFile(file, got, 0o600); err != nil {
		b.Fatal(err)
	}
	floor := startProcessEnv(b, env, floorBin, append([]string{file, resp.Header.Get("Content-Type"), resp.Header.Get("Inference-Header-Content-Length")}, model...)...)
	return floor.url + "/v2/models/face/infer"
}

// BenchmarkThroughputBinary is requests/s of the real binary with 1 and 2
// workers: 4 client goroutines on kept-alive connections, the two agent
// processes alternating in 3 rounds of 4x60 requests (each round at most
// 30 s), medians reported. With 2 cores the client, the HTTP server and the
// interpreters share the CPUs, which is what limits 2 workers.
func BenchmarkThroughputBinary(b *testing.B) {
	path := modelPath(b, face)
	agentBin, _ := buildBinaries(b, b.TempDir())
	body, hdr := binaryRequest(b, input(0))
	urls := map[int]string{}
	for _, w := range []int{1, 2} {
		p := startProcess(b, agentBin, "serve", "--listen", "127.0.0.1:0", "--data-dir", b.TempDir(),
			"--model", path, "--name", "face", "--workers", fmt.Sprint(w))
		waitReady(b, p.url)
		urls[w] = p.url + "/v2/models/face/infer"
	}
	round := func(url string) (float64, error) {
		const clients, perClient = 4, 60
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
		defer client.CloseIdleConnections()
		var wg sync.WaitGroup
		var ok, failed atomic.Int64
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range perClient {
					if ctx.Err() != nil {
						return
					}
					if _, err := timedPost(client, url, body, hdr); err != nil {
						failed.Add(1)
						continue
					}
					ok.Add(1)
				}
			}()
		}
		wg.Wait()
		if n := failed.Load(); n > 0 {
			return 0, fmt.Errorf("%d requests failed", n)
		}
		return float64(ok.Load()) / time.Since(start).Seconds(), nil
	}
	for _, u := range urls { // warm
		if _, err := round(u); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for range b.N {
		rates := map[int][]float64{}
		for range 3 {
			for _, w := range []int{1, 2} {
				r, err := round(urls[w])
				if err != nil {
					b.Fatal(err)
				}
				rates[w] = append(rates[w], r)
			}
		}
		r1, r2 := quantile(rates[1], 0.5), quantile(rates[2], 0.5)
		b.ReportMetric(r1, "req/s-1-worker")
		b.ReportMetric(r2, "req/s-2-workers")
		b.ReportMetric(r2/r1, "speedup")
	}
}
