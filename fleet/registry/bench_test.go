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
// Batches are of 500 audit records (about 60 bytes each), from 64
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
	body, err := protocol.AppendRecord(nil, &protocol.Record{Kind: protocol.KindAudit, Time: time.Now(),
		Audit: &protocol.Audit{Actor: "agent", Action: "model.activate"}})
	if err != nil {
		b.Fatal(err)
	}
	const devices, perBatch, perIter = 64, 500, 32000
	seq := make([]uint64, devices) // caller c owns devices c, c+callers, ...
	var mu sync.Mutex              // guards records and errs
	records := 0
	var errs []error
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		var wg sync.WaitGroup
		for c := range callers {
			wg.Go(func() {
				for n := c; n < perIter/perBatch; n += callers {
					d := n % devices
					bt := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: 1}, Entries: make([]protocol.Entry, perBatch)}
					for j := range bt.Entries {
						seq[d]++
						bt.Entries[j] = protocol.Entry{Seq: seq[d], Body: body}
					}
					fresh, err := r.RecordBatch(fmt.Sprintf("gw-%03d", d), bt, time.Now())
					mu.Lock()
					records += fresh
					if err == nil && fresh != perBatch {
						err = fmt.Errorf("got %d new records, want %d", fresh, perBatch)
					}
					if err != nil {
						errs = append(errs, err)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	elapsed := time.Since(start)
	if len(errs) > 0 {
		b.Fatal(errs[0])
	}
	b.ReportMetric(float64(records)/elapsed.Seconds(), "records/s")
}
