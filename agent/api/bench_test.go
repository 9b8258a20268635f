//go:build cgo

package api

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/runtime"
)

// floorServer is the transport floor: a net/http server that reads the
// request body and answers with a body the size of the model's outputs,
// running no inference.
func floorServer(b *testing.B, respSize int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	resp := make([]byte, respSize)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		buf := make([]byte, r.ContentLength)
		io.ReadFull(r.Body, buf)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(len(resp)))
		w.Write(resp)
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

// post sends one request on a kept-alive connection and drains the answer.
func post(client *http.Client, url string, body []byte, hdr map[string]string) (int, int) {
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, int(n)
}

func medianDur(v []time.Duration) time.Duration {
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkPredictOverhead measures the agent's own overhead on a binary
// v2 request to face_detection_short_range with one thread, in back-to-back
// triplets: (a) a bare C API invoke of the same model and input, (b) a round
// trip of the same bytes to a server that runs no inference (the transport
// floor), (c) the same round trip to the agent. It reports the medians and
// the median over triplets of ((c) - (a)) / (b). Goal: at most 1.10.
func BenchmarkPredictOverhead(b *testing.B) {
	path := modelPath(b, face)
	a := startAgent(b, Options{}, runtime.Options{Workers: 1, Threads: 1})
	bare, err := runtime.NewBaseline(path, 1, true)
	if err != nil {
		b.Fatal(err)
	}
	defer bare.Close()
	in := input(0)
	if err := bare.SetInput(0, le(in)); err != nil {
		b.Fatal(err)
	}
	body, hdr := binaryRequest(b, in)
	agentURL := a.url + "/v2/models/face/infer"
	// The floor answers with as many bytes as the agent does.
	code, respLen := post(http.DefaultClient, agentURL, body, hdr)
	if code != 200 {
		b.Fatalf("agent answered %d", code)
	}
	floorURL := floorServer(b, respLen)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	for range 50 { // warm connections, caches and XNNPACK
		bare.Run()
		post(client, floorURL, body, hdr)
		post(client, agentURL, body, hdr)
	}
	const triplets = 300
	b.ResetTimer()
	for range b.N {
		var ta, tb, tc []time.Duration
		var ratios []float64
		for i := range triplets {
			var da, db, dc time.Duration
			steps := []func(){
				func() { s := time.Now(); bare.Run(); da = time.Since(s) },
				func() { s := time.Now(); post(client, floorURL, body, hdr); db = time.Since(s) },
				func() { s := time.Now(); post(client, agentURL, body, hdr); dc = time.Since(s) },
			}
			// Rotate the order so no step always follows the same one.
			for k := range steps {
				steps[(i+k)%3]()
			}
			ta, tb, tc = append(ta, da), append(tb, db), append(tc, dc)
			ratios = append(ratios, float64(dc-da)/float64(db))
		}
		sort.Float64s(ratios)
		b.ReportMetric(float64(medianDur(ta).Microseconds()), "bare-invoke-µs")
		b.ReportMetric(float64(medianDur(tb).Microseconds()), "http-floor-µs")
		b.ReportMetric(float64(medianDur(tc).Microseconds()), "agent-µs")
		b.ReportMetric(ratios[len(ratios)/2], "overhead/floor")
	}
}

// BenchmarkThroughputWorkers reports requests/s with 1 and 2 interpreters
// in the pool, alternating the two agents in rounds within one run.
func BenchmarkThroughputWorkers(b *testing.B) {
	body, hdr := binaryRequest(b, input(0))
	agents := map[int]*agent{}
	for _, w := range []int{1, 2} {
		agents[w] = startAgent(b, Options{}, runtime.Options{Workers: w, Threads: 1})
	}
	round := func(url string) float64 {
		const clients, perClient = 4, 40
		var wg sync.WaitGroup
		var okCount atomic.Int64
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
		start := time.Now()
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range perClient {
					if code, _ := post(client, url, body, hdr); code == 200 {
						okCount.Add(1)
					}
				}
			}()
		}
		wg.Wait()
		return float64(okCount.Load()) / time.Since(start).Seconds()
	}
	for range b.N {
		rates := map[int][]float64{}
		for range 3 {
			for _, w := range []int{1, 2} {
				rates[w] = append(rates[w], round(agents[w].url+"/v2/models/face/infer"))
			}
		}
		med := func(v []float64) float64 { sort.Float64s(v); return v[len(v)/2] }
		r1, r2 := med(rates[1]), med(rates[2])
		b.ReportMetric(r1, "req/s-1-worker")
		b.ReportMetric(r2, "req/s-2-workers")
		b.ReportMetric(r2/r1, "speedup")
	}
}
