package registry

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/testpg"
	"github.com/outpost-edge/outpost/protocol"
)

// BenchmarkTelemetryIngest stores telemetry batches as the controller
// receives them (RecordBatch: multi-row inserts into the unique (device,
// epoch, seq) key and the device's counters, in one transaction per
// group of batches) and reports records/s. The target for the embedded
// store is at least 50,000 records/s on 2 cores (ARCHITECTURE.md), with
// the controller's 16 message workers calling at once ("16 callers");
// "1 caller" is the serial floor, one synced transaction per batch.
// Batches are of 500 update records (about 40 bytes each), from 64
// devices; every iteration stores 32,000 fresh records.
func BenchmarkTelemetryIngest(b *testing.B) {
	for _, callers := range []int{1, 16} {
		name := fmt.Sprintf("%d caller", callers)
		if callers > 1 {
			name += "s"
		}
		b.Run("sqlite/"+name, func(b *testing.B) { benchIngest(b, target{dir: b.TempDir()}, callers) })
		b.Run("postgres/"+name, func(b *testing.B) {
			benchIngest(b, target{dir: b.TempDir(), opts: Options{Store: testpg.Database(b)}}, callers)
		})
	}
}

func benchIngest(b *testing.B, tg target, callers int) {
	r, err := Open(tg.dir, tg.opts)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	// Update records: ingest keeps them raw only (the audit records this
	// benchmark used before now go to the devices' audit logs too).
	body, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindUpdate, Time: time.Now(),
		Update: &protocol.Update{RolloutID: "r-1", State: "downloading", BytesDone: 1 << 20, BytesTotal: 4 << 20}})
	if err != nil {
		b.Fatal(err)
	}
	bodies := func(int, int) []byte { return body }
	seq := make([]uint64, ingestDevices)
	var elapsed time.Duration
	records := 0
	b.ResetTimer()
	for range b.N {
		n, d, err := ingestRound(r, callers, seq, bodies)
		if err != nil {
			b.Fatal(err)
		}
		records, elapsed = records+n, elapsed+d
	}
	b.ReportMetric(float64(records)/elapsed.Seconds(), "records/s")
}

// BenchmarkAggregateIngest: aggregate records, each merged into its
// minute and hour buckets (the device's and the fleet's) and its
// version's totals, against the same records stored raw with the device's
// counters only (the ingest path before buckets), interleaved round by
// round on two stores, with the controller's 16 workers calling at once.
// It reports both rates and their ratio (merged / raw). An aggregate
// covers a minute (the agent's default aggregate_interval, so every record
// makes a new minute bucket for its device), with a 12-bound latency
// histogram, two error codes and 6 feature histograms of 21 bins; 64
// devices send batches of 500; every round stores 32,000 fresh records
// per store. The target is at least 50,000 merged records/s on the
// embedded store (issue #12).
func BenchmarkAggregateIngest(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) { benchAggregates(b, target{dir: b.TempDir()}, target{dir: b.TempDir()}) })
	b.Run("postgres", func(b *testing.B) {
		benchAggregates(b, target{dir: b.TempDir(), opts: Options{Store: testpg.Database(b)}},
			target{dir: b.TempDir(), opts: Options{Store: testpg.Database(b)}})
	})
}

func benchAggregates(b *testing.B, merged, raw target) {
	rm, err := Open(merged.dir, merged.opts)
	if err != nil {
		b.Fatal(err)
	}
	defer rm.Close()
	rr, err := Open(raw.dir, raw.opts)
	if err != nil {
		b.Fatal(err)
	}
	defer rr.Close()
	rr.mon.rawOnly = true
	t0 := time.Now().Add(-24 * time.Hour).Truncate(time.Hour)
	bounds := []uint64{250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 256000, 512000}
	feats := make([]protocol.FeatureCounts, 6)
	for i := range feats {
		feats[i] = protocol.FeatureCounts{Name: fmt.Sprintf("input.mean.%d", i), Counts: make([]uint64, 21), Sum: 12.5, SumSq: 40}
		for j := range feats[i].Counts {
			feats[i].Counts[j] = uint64(j + i)
		}
	}
	// One body per (device, interval): device d's n-th aggregate covers
	// [t0 + n minutes, +1 minute): the agent's default aggregate_interval.
	bodies := func(d, n int) []byte {
		start := t0.Add(time.Duration(n) * time.Minute)
		body, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindAggregate, Time: start.Add(time.Minute),
			Model: protocol.ModelRef{Name: "face", Version: "3", Digest: "sha256:00"}, Aggregate: &protocol.Aggregate{
				Start: start, End: start.Add(time.Minute), Requests: 100, Errors: 3,
				ErrorsByCode: []protocol.CodeCount{{Code: "bad_input", Count: 2}, {Code: "overload", Count: 1}},
				Latency:      protocol.Histogram{BoundsMicros: bounds, Counts: []uint64{0, 1, 5, 20, 40, 20, 10, 3, 1, 0, 0, 0, 0}, SumMicros: 400000},
				Features:     feats,
			}})
		if err != nil {
			panic(err)
		}
		return body
	}
	seqM, seqR := make([]uint64, ingestDevices), make([]uint64, ingestDevices)
	var dm, dr time.Duration
	records := 0
	b.ResetTimer()
	for range b.N {
		n, d, err := ingestRound(rr, 16, seqR, bodies)
		if err != nil {
			b.Fatal(err)
		}
		dr += d
		n2, d, err := ingestRound(rm, 16, seqM, bodies)
		if err != nil {
			b.Fatal(err)
		}
		if n2 != n {
			b.Fatalf("got %d merged records, %d raw", n2, n)
		}
		dm += d
		records += n
	}
	b.ReportMetric(float64(records)/dm.Seconds(), "merged-records/s")
	b.ReportMetric(float64(records)/dr.Seconds(), "raw-records/s")
	b.ReportMetric(dr.Seconds()/dm.Seconds(), "merged/raw")
	b.ReportMetric(0, "ns/op")
}

const (
	ingestDevices  = 64
	ingestPerBatch = 500
	ingestPerRound = 32000
)

// ingestRound stores ingestPerRound fresh records from ingestDevices
// devices in batches of ingestPerBatch, callers at once (caller c owns
// devices c, c+callers, ...; seq holds each device's last sequence
// number), and returns the records stored and the time it took.
func ingestRound(r *Registry, callers int, seq []uint64, body func(device, n int) []byte) (int, time.Duration, error) {
	var mu sync.Mutex // guards records and errs
	records := 0
	var errs []error
	var wg sync.WaitGroup
	// Bodies are made before the clock starts.
	batches := make([]*protocol.Batch, ingestPerRound/ingestPerBatch)
	for n := range batches {
		d := n % ingestDevices
		bt := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: 1}, Entries: make([]protocol.Entry, ingestPerBatch)}
		for j := range bt.Entries {
			seq[d]++
			bt.Entries[j] = protocol.Entry{Seq: seq[d], Body: body(d, int(seq[d]))}
		}
		batches[n] = bt
	}
	start := time.Now()
	for c := range callers {
		wg.Go(func() {
			for n := c; n < len(batches); n += callers {
				fresh, err := r.RecordBatch(fmt.Sprintf("gw-%03d", n%ingestDevices), batches[n], time.Now())
				mu.Lock()
				records += fresh
				if err == nil && fresh != ingestPerBatch {
					err = fmt.Errorf("got %d new records, want %d", fresh, ingestPerBatch)
				}
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return records, 0, errs[0]
	}
	return records, time.Since(start), nil
}
