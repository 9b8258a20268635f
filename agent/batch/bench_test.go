//go:build cgo

package batch

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	goruntime "runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/oip"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/models/testmodel"
)

// BenchmarkBatchVsPool measures batch throughput (an .npy file in, a
// results file out, records encoded as JSON and synced) against the bare
// throughput of the same interpreter pool (the same rows already in memory,
// outputs discarded, one caller per interpreter yielding after each call:
// the fastest way to run the pool measured, see bare), in rounds that
// alternate which goes first so both see the same machine. GOMAXPROCS is
// what the agent's binaries set (runtime.RaiseProcs) for both. Until
// December 2026 the baseline was twice as many callers as interpreters, not
// yielding, at one P per CPU: 10-30% slower than this one on this machine,
// which flattered the batch (docs/MODES.md, "Throughput").
// It reports the median of the per-round ratios batch/pool; the goal is at
// least 0.95. A run's fixed costs (opening and syncing the output, the
// final sync) weigh on a short run: face/auto-2000 is ten times the items
// of face/auto, about 1 s a side here. batch/pool-steady compares the two
// paces over the middle 80% of the items (middle), without those costs.
func BenchmarkBatchVsPool(b *testing.B) {
	defer goruntime.GOMAXPROCS(goruntime.GOMAXPROCS(0))
	runtime.RaiseProcs()
	for _, tc := range []struct {
		model string
		enc   OutputEncoding
		rows  int
		name  string // beside model/enc, when not the default rows
	}{
		{testmodel.FaceShort, OutputsAuto, 200, ""},
		{testmodel.FaceShort, OutputsAuto, 2000, "-2000"},
		{testmodel.FaceShort, OutputsJSON, 200, ""},
		{testmodel.FaceShort, OutputsBase64, 200, ""},
		{testmodel.Hand, OutputsAuto, 100, ""},
		{testmodel.Hand, OutputsAuto, 1000, "-1000"},
	} {
		b.Run(tc.model+"/"+string(tc.enc)+tc.name, func(b *testing.B) {
			reg := serving.New(serving.Options{Runtime: runtime.Options{}})
			defer reg.Close()
			e, err := reg.LoadFile(context.Background(), tc.model, 1, testmodel.Path(b, tc.model))
			if err != nil {
				b.Fatal(err)
			}
			in := e.Inputs[0]
			size, _ := in.ByteSize()
			row := make([]byte, size)
			for i := range row {
				row[i] = byte(i * 7)
			}
			// Finite FP32 values: every fourth byte small.
			for i := 3; i < len(row); i += 4 {
				row[i] = 0x3f
			}
			data := make([]byte, 0, tc.rows*len(row))
			for range tc.rows {
				data = append(data, row...)
			}
			dir := b.TempDir()
			npy := filepath.Join(dir, "in.npy")
			shape := append([]int{tc.rows}, in.Shape[1:]...)
			if err := os.WriteFile(npy, appendNpy(nil, tensor.FP32, shape, data), 0o644); err != nil {
				b.Fatal(err)
			}
			out := filepath.Join(dir, "out.jsonl")
			batchRun := func() (time.Duration, time.Duration) {
				os.Remove(out)
				r, err := New(Options{Backend: reg, Model: tc.model, Input: npy, Output: out, Outputs: tc.enc})
				if err != nil {
					b.Fatal(err)
				}
				var d, steady time.Duration
				steady = middle(r.done.Load, tc.rows, func() {
					start := time.Now()
					if err := r.Run(context.Background()); err != nil {
						b.Fatal(err)
					}
					d = time.Since(start)
				})
				// A rate of items the batch did not answer would mean nothing.
				if n, err := answers(out); err != nil || n != tc.rows {
					b.Fatalf("the results hold %d answers, want %d (%v)", n, tc.rows, err)
				}
				return d, steady
			}
			poolRun := func() (time.Duration, time.Duration) {
				var done atomic.Int64
				var d time.Duration
				steady := middle(done.Load, tc.rows, func() { d = bare(b, reg, tc.model, data, size, e.Workers, &done) })
				return d, steady
			}
			rounds := 5
			if n, err := strconv.Atoi(os.Getenv("OUTPOST_BENCH_ROUNDS")); err == nil && n > 0 {
				rounds = n
			}
			// The setup's garbage (the rows, the .npy) is collected now, not
			// in whichever leg runs first.
			debug.FreeOSMemory()
			b.ResetTimer()
			for range b.N {
				var ratios, steadyRatios, cpuRatios, pool, batch, busyPool, busyBatch []float64
				for i := range rounds {
					var tp, tb, cp, cb, sp, sb time.Duration
					if i%2 == 0 {
						tp, sp, cp = withCPU(poolRun)
						tb, sb, cb = withCPU(batchRun)
					} else {
						tb, sb, cb = withCPU(batchRun)
						tp, sp, cp = withCPU(poolRun)
					}
					pool = append(pool, float64(tc.rows)/tp.Seconds())
					batch = append(batch, float64(tc.rows)/tb.Seconds())
					ratios = append(ratios, tp.Seconds()/tb.Seconds())
					steadyRatios = append(steadyRatios, sp.Seconds()/sb.Seconds())
					cpuRatios = append(cpuRatios, cp.Seconds()/cb.Seconds())
					busyPool = append(busyPool, cp.Seconds()/tp.Seconds())
					busyBatch = append(busyBatch, cb.Seconds()/tb.Seconds())
				}
				b.Logf("per-round cores busy, pool: %.2f, batch: %.2f", busyPool, busyBatch)
				b.ReportMetric(median(pool), "pool-items/s")
				b.ReportMetric(median(batch), "batch-items/s")
				b.Logf("per-round batch/pool: %.3f", ratios)
				b.Logf("per-round batch/pool-steady: %.3f", steadyRatios)
				b.ReportMetric(median(ratios), "batch/pool")
				b.ReportMetric(median(steadyRatios), "batch/pool-steady")
				// On a machine shared with other work the wall-clock ratio
				// says how much CPU each side got; the ratio of CPU seconds
				// per item is what batch costs beyond the pool.
				b.ReportMetric(median(cpuRatios), "batch/pool-cpu")
			}
		})
	}
}

// answers counts the records of a results file that are answers, not
// errors, reading it a line at a time: reading 170 MB of results whole
// left that much garbage for the next leg's collector.
func answers(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	n := 0
	for sc.Scan() {
		if bytes.Contains(sc.Bytes(), []byte(`"error":`)) {
			return n, fmt.Errorf("an error record: %.200s", sc.Bytes())
		}
		n++
	}
	return n, sc.Err()
}

// bare runs every row of data (each size bytes) through the pool from
// callers goroutines and returns how long they took. Each row is its own
// memory, as the batch's rows are. Each caller yields after each call, as
// the batch's workers do: on its own that made the pool 6-14% faster
// (BenchmarkPoolCallers in agent/runtime, 1x-yield), and a baseline
// without it would credit the batch with the gain. done, if not nil,
// counts the rows answered.
func bare(b *testing.B, reg *serving.Registry, model string, data []byte, size, callers int, done *atomic.Int64) time.Duration {
	var wg sync.WaitGroup
	n := len(data) / size
	jobs := make(chan []byte, n)
	for i := range n {
		jobs <- data[i*size : (i+1)*size]
	}
	close(jobs)
	errs := make(chan error, callers)
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for row := range jobs {
				_, _, err := reg.Infer(context.Background(), model, 0,
					func(catalog.Entry) ([][]byte, error) { return [][]byte{row}, nil },
					func(int, []byte) error { return nil })
				if err != nil {
					errs <- err
					return
				}
				if done != nil {
					done.Add(1)
				}
				goruntime.Gosched()
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	return d
}

// withCPU runs f and returns its wall time, its steady time (see middle)
// and the CPU time (user and system) the whole process used meanwhile.
func withCPU(f func() (time.Duration, time.Duration)) (wall, steady, cpu time.Duration) {
	before := processCPU()
	wall, steady = f()
	return wall, steady, processCPU() - before
}

// middle runs run, watching done (items finished, out of total) every
// millisecond, and returns how long the middle 80% of the items took
// (from a tenth done to nine tenths done), scaled to the whole: the run's
// pace once started, without its fixed costs at either end. For the
// batch these are opening and syncing the results at the start, and at
// the end waiting for the disk to have them all (the last fsync): about
// 100 ms on this machine's disk, a tenth of a 2,000-item face detection
// run, which a run of hours does not feel.
func middle(done func() int64, total int, run func()) time.Duration {
	lo, hi := int64(total/10), int64(total-total/10)
	var t0, t1 time.Time
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case now := <-tick.C:
				n := done()
				if t0.IsZero() && n >= lo {
					t0 = now
				}
				if t1.IsZero() && n >= hi {
					t1 = now
				}
			}
		}
	}()
	run()
	close(stop)
	<-watched
	if t0.IsZero() || t1.IsZero() || !t1.After(t0) {
		return 0 // too short to see: the ratio is then +Inf or NaN
	}
	return time.Duration(float64(t1.Sub(t0)) * float64(total) / float64(hi-lo))
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkEncodeOutputs compares the three ways a record carries the face
// detection model's outputs (15,232 floats): JSON numbers and base64.
func BenchmarkEncodeOutputs(b *testing.B) {
	data := make([]byte, 4*(896*16+896))
	for i := 0; i < len(data); i += 4 {
		binary.LittleEndian.PutUint32(data[i:], math.Float32bits(float32(math.Sin(float64(i)))*30))
	}
	resp := &oip.Response{ModelName: "face", ModelVersion: "1", ModelDigest: "sha256:00", Outputs: []oip.Output{
		{Tensor: tensor.Tensor{Name: "regressors", DataType: tensor.FP32, Shape: []int{1, 896, 16}, Data: data[:4*896*16]}},
		{Tensor: tensor.Tensor{Name: "classificators", DataType: tensor.FP32, Shape: []int{1, 896, 1}, Data: data[4*896*16:]}},
	}}
	var buf []byte
	for _, enc := range []OutputEncoding{OutputsJSON, OutputsAuto, OutputsBase64} {
		b.Run(string(enc), func(b *testing.B) {
			for k := range resp.Outputs {
				resp.Outputs[k].Base64 = enc.base64(&resp.Outputs[k].Tensor)
			}
			for b.Loop() {
				buf, _ = oip.AppendResponse(buf[:0], resp)
			}
			b.ReportMetric(float64(len(buf)), "bytes/record")
		})
	}
}

// BenchmarkBatchBinary is BenchmarkBatchVsPool through the real binary:
// `outpost-agent batch` (default --outputs auto) in its own process against the bare
// pool in this one, alternating. binary/pool uses the items/s the binary
// reports for its run (after loading the model); binary-wall/pool counts
// the whole process, start and model load included; binary/pool-cpu
// compares CPU seconds per item (the child's rusage against ours).
func BenchmarkBatchBinary(b *testing.B) {
	defer goruntime.GOMAXPROCS(goruntime.GOMAXPROCS(0))
	runtime.RaiseProcs() // as the binary does
	bin := filepath.Join(b.TempDir(), "outpost-agent")
	if msg, err := exec.Command("go", "build", "-o", bin, "../../cmd/outpost-agent").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, msg)
	}
	const model, rows = testmodel.FaceShort, 1000
	reg := serving.New(serving.Options{})
	defer reg.Close()
	e, err := reg.LoadFile(context.Background(), model, 1, testmodel.Path(b, model))
	if err != nil {
		b.Fatal(err)
	}
	size, _ := e.Inputs[0].ByteSize()
	data := make([]byte, rows*size)
	for i := 3; i < len(data); i += 4 {
		data[i-3], data[i] = byte(i), 0x3f
	}
	dir := b.TempDir()
	npy := filepath.Join(dir, "in.npy")
	if err := os.WriteFile(npy, appendNpy(nil, tensor.FP32, []int{rows, 128, 128, 3}, data), 0o644); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(dir, "out.jsonl")
	rate := regexp.MustCompile(`; ([0-9.]+) items/s`)
	binRun := func() (wall, cpu time.Duration, itemsPerSec float64) {
		os.Remove(out)
		cmd := exec.Command(bin, "batch", "--model", testmodel.Path(b, model), "--input", npy, "--output", out,
			"--progress", "none", "--log-level", "warn")
		start := time.Now()
		msg, err := cmd.CombinedOutput()
		wall = time.Since(start)
		if err != nil {
			b.Fatalf("%v\n%s", err, msg)
		}
		m := rate.FindSubmatch(msg)
		if m == nil {
			b.Fatalf("no items/s in %s", msg)
		}
		itemsPerSec, _ = strconv.ParseFloat(string(m[1]), 64)
		return wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), itemsPerSec
	}
	poolRun := func() (time.Duration, time.Duration) {
		return bare(b, reg, model, data, size, e.Workers, nil), 0
	}
	const rounds = 5
	b.ResetTimer()
	for range b.N {
		var ratios, wallRatios, cpuRatios []float64
		for i := range rounds {
			var tp, cp, tw, cb time.Duration
			var ips float64
			if i%2 == 0 {
				tp, _, cp = withCPU(poolRun)
				tw, cb, ips = binRun()
			} else {
				tw, cb, ips = binRun()
				tp, _, cp = withCPU(poolRun)
			}
			pool := float64(rows) / tp.Seconds()
			ratios = append(ratios, ips/pool)
			wallRatios = append(wallRatios, tp.Seconds()/tw.Seconds())
			cpuRatios = append(cpuRatios, cp.Seconds()/cb.Seconds())
		}
		b.ReportMetric(median(ratios), "binary/pool")
		b.ReportMetric(median(wallRatios), "binary-wall/pool")
		b.ReportMetric(median(cpuRatios), "binary/pool-cpu")
	}
}
