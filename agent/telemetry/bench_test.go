package telemetry

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// Each benchmark iteration runs a fixed number of records, so -benchtime 1x
// (what make bench uses) gives a meaningful figure, and the baseline runs in
// the same iteration, back to back and in alternating order, so the ratio
// survives the machine drifting between fast and slow spells.

const (
	benchRecords      = 100_000 // group commit and replay
	benchNaiveRecords = 1_000   // one fsync or one PUBACK per record is slow
)

// BenchmarkEnqueue measures durable enqueue: records handed to Record by two
// producers until all are committed with fsync, against a naive baseline that
// commits each record in its own transaction, as most queues built on bbolt
// do.
func BenchmarkEnqueue(b *testing.B) {
	var groupDur, naiveDur time.Duration
	var groupN, naiveN int
	for i := 0; i < b.N; i++ {
		runs := []func(){
			func() { d, n := enqueueGroup(b); groupDur += d; groupN += n },
			func() { d, n := enqueueNaive(b); naiveDur += d; naiveN += n },
		}
		if i%2 == 1 {
			runs[0], runs[1] = runs[1], runs[0]
		}
		for _, run := range runs {
			run()
		}
	}
	group := float64(groupN) / groupDur.Seconds()
	naive := float64(naiveN) / naiveDur.Seconds()
	b.ReportMetric(group, "events/s")
	b.ReportMetric(naive, "naive-events/s")
	b.ReportMetric(group/naive, "x-naive")
	b.ReportMetric(0, "ns/op") // an op is a whole run; the rates above are the figures
}

func benchSample(i int) protocol.Record {
	r := sample(i)
	r.Time = time.Now()
	return r
}

func enqueueGroup(b *testing.B) (time.Duration, int) {
	b.StopTimer()
	path := filepath.Join(b.TempDir(), "q.db")
	q, err := New(Options{Path: path})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	waitFor(b, "open", 10*time.Second, func() bool { return q.Stats().Epoch != 0 })
	// Records are built before the clock starts and reused (Record copies the
	// struct; payloads are only read), so the figure is the queue's.
	recs := make([]protocol.Record, 1024)
	for i := range recs {
		recs[i] = benchSample(i)
	}
	b.StartTimer()
	start := time.Now()
	const producers = 2
	per := benchRecords / producers
	fin := make(chan struct{}, producers)
	for p := range producers {
		go func() {
			for i := range per {
				// Offer load as fast as the queue takes it, without drops: a
				// benchmark of what is kept, not of what is thrown away.
				for len(q.in) > cap(q.in)-64 {
					runtime.Gosched()
				}
				q.Record(recs[(p*per+i)%len(recs)])
			}
			fin <- struct{}{}
		}()
	}
	for range producers {
		<-fin
	}
	for q.Stats().LastSeq < benchRecords {
		time.Sleep(100 * time.Microsecond)
	}
	d := time.Since(start)
	b.StopTimer()
	if s := q.Stats(); s.Dropped.Total() != 0 {
		b.Fatalf("dropped %v", s.Dropped)
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	return d, benchRecords
}

func enqueueNaive(b *testing.B) (time.Duration, int) {
	b.StopTimer()
	db, err := bolt.Open(filepath.Join(b.TempDir(), "naive.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("q")); return err }); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	start := time.Now()
	for i := range benchNaiveRecords {
		r := benchSample(i)
		body, err := protocol.AppendRecord(nil, &r)
		if err != nil {
			b.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			bk := tx.Bucket([]byte("q"))
			seq, err := bk.NextSequence()
			if err != nil {
				return err
			}
			return bk.Put(seqKey(seq), body)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start), benchNaiveRecords
}

// BenchmarkReplay measures draining a backlog of 100k records to a local
// Mosquitto with QoS 1 (batches, one PUBACK per batch, deletes after each),
// against a baseline that publishes one record per message.
func BenchmarkReplay(b *testing.B) {
	br := startBroker(b, "")
	b.StopTimer()
	dir := b.TempDir()
	backlog := filepath.Join(dir, "backlog.db")
	fillBacklog(b, backlog, benchRecords)
	naiveBacklog := filepath.Join(dir, "naive-backlog.db")
	fillBacklog(b, naiveBacklog, benchNaiveRecords)
	b.StartTimer()
	var batchDur, naiveDur time.Duration
	var batchN, naiveN int
	for i := 0; i < b.N; i++ {
		runs := []func(){
			func() { batchDur += replay(b, br, backlog, benchRecords, 0); batchN += benchRecords },
			func() { naiveDur += replay(b, br, naiveBacklog, benchNaiveRecords, 1); naiveN += benchNaiveRecords },
		}
		if i%2 == 1 {
			runs[0], runs[1] = runs[1], runs[0]
		}
		for _, run := range runs {
			run()
		}
	}
	batch := float64(batchN) / batchDur.Seconds()
	naive := float64(naiveN) / naiveDur.Seconds()
	b.ReportMetric(batch, "events/s")
	b.ReportMetric(naive, "naive-events/s")
	b.ReportMetric(batch/naive, "x-naive")
	b.ReportMetric(0, "ns/op")
}

// fillBacklog writes n sample records to a queue file with no uplink.
func fillBacklog(b *testing.B, path string, n int) {
	q, err := New(Options{Path: path})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	for i := range n {
		for len(q.in) > cap(q.in)-64 {
			time.Sleep(50 * time.Microsecond)
		}
		q.Record(benchSample(i))
	}
	waitFor(b, "backlog written", time.Minute, func() bool { return q.Stats().LastSeq == uint64(n) })
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// replay copies the backlog file, then times a queue draining it to br with
// batches of at most batchRecords (0 means the default).
func replay(b *testing.B, br *testbroker.Mosquitto, backlog string, n, batchRecords int) time.Duration {
	b.StopTimer()
	path := filepath.Join(b.TempDir(), "q.db")
	copyFile(b, backlog, path)
	m, err := fleetlink.New(fleetlink.Options{Broker: br.URL(), Fleet: "bench", Device: fmt.Sprintf("replay-%d", time.Now().UnixNano())})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	mdone := make(chan error, 1)
	go func() { mdone <- m.Run(ctx) }()
	waitFor(b, "connected", 10*time.Second, m.Connected)
	q, err := New(Options{Path: path, Link: m, Topic: m.Topics().Events, BatchRecords: batchRecords})
	if err != nil {
		b.Fatal(err)
	}
	qdone := make(chan error, 1)
	b.StartTimer()
	start := time.Now()
	go func() { qdone <- q.Run(ctx) }()
	for {
		s := q.Stats()
		if s.Epoch != 0 && s.Depth == 0 {
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	d := time.Since(start)
	b.StopTimer()
	if got := q.Stats().Published; got != uint64(n) {
		b.Fatalf("published %d, want %d", got, n)
	}
	cancel()
	<-qdone
	<-mdone
	b.StartTimer()
	return d
}

func copyFile(b *testing.B, from, to string) {
	src, err := os.Open(from)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		b.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkRecord measures what the predict path pays per Record call, with
// the writer running: two goroutines make 500k calls each per iteration. When
// they outrun the disk the calls are drops; the share of those is reported.
func BenchmarkRecord(b *testing.B) {
	q := startQueue(b, Options{Path: filepath.Join(b.TempDir(), "q.db")})
	waitFor(b, "open", 10*time.Second, func() bool { return q.Stats().Epoch != 0 })
	r := benchSample(0)
	const producers, calls = 2, 500_000
	var total time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		var wg sync.WaitGroup
		for range producers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range calls {
					q.Record(r)
				}
			}()
		}
		wg.Wait()
		total += time.Since(start)
	}
	b.StopTimer()
	n := float64(b.N * producers * calls)
	// Wall time per call with both producers running: the per-call cost on
	// one core is twice this.
	b.ReportMetric(float64(total.Nanoseconds())/n, "ns/record")
	b.ReportMetric(100*float64(q.Stats().Dropped[protocol.DropBackpressure])/n, "%dropped")
	b.ReportMetric(0, "ns/op")
}
