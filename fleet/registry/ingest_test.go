package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/hashchain"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// feeder sends a device's records as telemetry batches with rising
// sequence numbers, as the agent's queue does.
type feeder struct {
	r      *Registry
	device string
	epoch  uint64
	seq    uint64
}

// send stores recs as one batch and returns how many were new.
func (f *feeder) send(t *testing.T, recs ...protocol.Record) int {
	t.Helper()
	b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: f.epoch}}
	for i := range recs {
		body, err := protocol.AppendRecord(nil, &recs[i])
		require.NoError(t, err)
		f.seq++
		b.Entries = append(b.Entries, protocol.Entry{Seq: f.seq, Body: body})
	}
	n, err := f.r.RecordBatch(f.device, b, time.Now())
	require.NoError(t, err)
	return n
}

// resend stores the batch of sequence numbers from..to again, as a broker
// redelivering it would.
func (f *feeder) resend(t *testing.T, from uint64, recs ...protocol.Record) int {
	t.Helper()
	b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: f.epoch}}
	for i := range recs {
		body, err := protocol.AppendRecord(nil, &recs[i])
		require.NoError(t, err)
		b.Entries = append(b.Entries, protocol.Entry{Seq: from + uint64(i), Body: body})
	}
	n, err := f.r.RecordBatch(f.device, b, time.Now())
	require.NoError(t, err)
	return n
}

var face = protocol.ModelRef{Name: "face", Version: "3", Digest: "sha256:00"}

func aggregate(start time.Time, requests, errors uint64, bounds, counts []uint64, feats ...protocol.FeatureCounts) protocol.Record {
	return protocol.Record{Kind: protocol.KindAggregate, Time: start.Add(10 * time.Second), Model: face, Aggregate: &protocol.Aggregate{
		Start: start, End: start.Add(10 * time.Second), Requests: requests, Errors: errors,
		ErrorsByCode: []protocol.CodeCount{{Code: "bad_input", Count: errors}},
		Latency:      protocol.Histogram{BoundsMicros: bounds, Counts: counts, SumMicros: 1000 * requests},
		Features:     feats, StreamDropped: 1,
	}}
}

func TestIngestAggregates(t *testing.T) { eachEngine(t, testIngestAggregates) }

func testIngestAggregates(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	defer r.Close()
	t0 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	bounds := []uint64{1000, 5000, 20000}
	feat := func(counts ...uint64) protocol.FeatureCounts {
		return protocol.FeatureCounts{Name: "image.mean.r", Counts: counts, NaNs: 1, Sum: 2.5, SumSq: 4}
	}
	a := &feeder{r: r, device: "gw-a", epoch: 1}
	recs := []protocol.Record{
		aggregate(t0, 10, 1, bounds, []uint64{4, 3, 2, 1}, feat(1, 2, 3)),
		aggregate(t0.Add(20*time.Second), 5, 0, bounds, []uint64{5, 0, 0, 0}, feat(0, 1, 0)),
		aggregate(t0.Add(61*time.Second), 7, 2, bounds, []uint64{0, 7, 0, 0}),
	}
	require.Equal(t, 3, a.send(t, recs...))
	// Delivered again (a broker's redelivery, another replica): nothing
	// counts twice.
	require.Equal(t, 0, a.resend(t, 1, recs...))
	// Another device, with other latency bounds: re-binned into the
	// stored ones, each bucket to the stored bucket of its upper bound.
	b := &feeder{r: r, device: "gw-b", epoch: 1}
	require.Equal(t, 1, b.send(t, aggregate(t0.Add(5*time.Second), 4, 0, []uint64{2000, 30000}, []uint64{1, 2, 1}, feat(1, 1, 1))))

	fleetMin, err := r.Buckets("face", "", MinuteBucket)
	require.NoError(t, err)
	require.Len(t, fleetMin, 2)
	m0 := fleetMin[0]
	assert.Equal(t, t0, m0.Start)
	assert.Equal(t, "3", m0.Version)
	assert.Equal(t, uint64(3), m0.Records)
	assert.Equal(t, uint64(19), m0.Requests)
	assert.Equal(t, uint64(1), m0.Errors)
	assert.Equal(t, uint64(3), m0.StreamDropped)
	assert.Equal(t, map[string]uint64{"bad_input": 1}, m0.ErrorsByCode)
	assert.Equal(t, bounds, m0.Latency.BoundsMicros)
	// gw-a: 4+5, 3, 2, 1; gw-b: <=2000 -> 5000 bucket, <=30000 -> overflow, >30000 -> overflow.
	assert.Equal(t, []uint64{9, 4, 2, 4}, m0.Latency.Counts)
	assert.Equal(t, uint64(19000), m0.Latency.SumMicros)
	require.Len(t, m0.Features, 1)
	assert.Equal(t, []uint64{2, 4, 4}, m0.Features[0].Counts)
	assert.Equal(t, uint64(3), m0.Features[0].NaNs)
	assert.InDelta(t, 7.5, m0.Features[0].Sum, 1e-9)
	assert.Equal(t, uint64(7), fleetMin[1].Requests)
	assert.Equal(t, t0.Add(time.Minute), fleetMin[1].Start)

	devMin, err := r.Buckets("face", "gw-a", MinuteBucket)
	require.NoError(t, err)
	require.Len(t, devMin, 2)
	assert.Equal(t, uint64(15), devMin[0].Requests)
	assert.Equal(t, uint64(2), devMin[0].Records)

	hours, err := r.Buckets("face", "", HourBucket)
	require.NoError(t, err)
	require.Len(t, hours, 1)
	assert.Equal(t, uint64(26), hours[0].Requests)
	assert.Equal(t, uint64(3), hours[0].Errors)
	assert.Equal(t, t0, hours[0].Start)

	tot, err := r.Totals("face", "3")
	require.NoError(t, err)
	assert.Equal(t, uint64(26), tot.Requests)
	assert.Equal(t, uint64(3), tot.Errors)
	assert.Equal(t, uint64(4), tot.StreamDropped)
	assert.Equal(t, map[string]uint64{"bad_input": 3}, tot.ErrorsByCode)
	assert.Equal(t, []uint64{9, 11, 2, 4}, tot.Latency.Counts)

	d, err := r.Device("gw-a")
	require.NoError(t, err)
	assert.Equal(t, uint64(3), d.Telemetry.Records)
	assert.Equal(t, uint64(3), d.Telemetry.Duplicates)
}

// TestIngestConcurrent: many devices' aggregates stored at once (group
// commit, and on PostgreSQL two store handles like two replicas) add up
// exactly in the fleet's rows.
func TestIngestConcurrent(t *testing.T) { eachEngine(t, testIngestConcurrent) }

func testIngestConcurrent(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	r1 := tg.open(t)
	defer r1.Close()
	r2 := tg.open(t)
	defer r2.Close()
	t0 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	const devices, batches, perBatch = 16, 5, 10
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	for d := range devices {
		wg.Go(func() {
			r := []*Registry{r1, r2}[d%2]
			var seq uint64
			for range batches {
				b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: 1}}
				for i := range perBatch {
					rec := aggregate(t0.Add(time.Duration(i)*time.Second), 2, 1, []uint64{1000}, []uint64{1, 1})
					body, err := protocol.AppendRecord(nil, &rec)
					if err != nil {
						errs <- err
						return
					}
					seq++
					b.Entries = append(b.Entries, protocol.Entry{Seq: seq, Body: body})
				}
				// Every batch twice, to both handles.
				for _, rr := range []*Registry{r, r1, r2} {
					if _, err := rr.RecordBatch(fmt.Sprintf("gw-%02d", d), b, time.Now()); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	const records = devices * batches * perBatch
	bs, err := r1.Buckets("face", "", MinuteBucket)
	require.NoError(t, err)
	require.Len(t, bs, 1)
	assert.Equal(t, uint64(records), bs[0].Records)
	assert.Equal(t, uint64(2*records), bs[0].Requests)
	assert.Equal(t, []uint64{records, records}, bs[0].Latency.Counts)
	tot, err := r2.Totals("face", "3")
	require.NoError(t, err)
	assert.Equal(t, uint64(records), tot.Errors)
}

func TestIngestHealth(t *testing.T) { eachEngine(t, testIngestHealth) }

func testIngestHealth(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	defer r.Close()
	t0 := time.Now().Add(-time.Hour).Truncate(time.Second).UTC()
	health := func(at time.Time, temp float64) protocol.Record {
		return protocol.Record{Kind: protocol.KindHealth, Time: at, Health: &protocol.Health{CPUPercent: 12.5, Load1: 0.5,
			MemUsedBytes: 1 << 20, MemTotalBytes: 1 << 30, DiskUsedBytes: 5, DiskTotalBytes: 10, TemperatureC: temp, Uptime: 90 * time.Second}}
	}
	f := &feeder{r: r, device: "gw-a", epoch: 1}
	require.Equal(t, 3, f.send(t, health(t0, 41.5), health(t0.Add(time.Minute), math.NaN()), health(t0.Add(2*time.Minute), 42)))
	pts, err := r.DeviceHealth("gw-a", time.Time{}, 0)
	require.NoError(t, err)
	require.Len(t, pts, 3)
	assert.Equal(t, t0, pts[0].Time)
	require.NotNil(t, pts[0].TemperatureC)
	assert.Equal(t, 41.5, *pts[0].TemperatureC)
	assert.Nil(t, pts[1].TemperatureC, "NaN temperature")
	assert.Equal(t, 90.0, pts[2].UptimeSeconds)
	assert.Equal(t, uint64(1<<30), pts[2].MemTotalBytes)
	pts, err = r.DeviceHealth("gw-a", t0.Add(time.Minute), 0)
	require.NoError(t, err)
	assert.Len(t, pts, 2)
	pts, err = r.DeviceHealth("gw-a", time.Time{}, 1)
	require.NoError(t, err)
	require.Len(t, pts, 1)
	assert.Equal(t, t0.Add(2*time.Minute), pts[0].Time, "limit keeps the newest")
	pts, err = r.DeviceHealth("gw-other", time.Time{}, 0)
	require.NoError(t, err)
	assert.Empty(t, pts)
}

// trail builds a device audit trail the way agent/audit does: each
// record's hash is over its bytes, which name the previous hash.
type trail struct {
	salt string // tells two trails' records apart (their times would)
	seq  uint64
	hash string
}

func (tr *trail) next(action string) protocol.Record {
	tr.seq++
	prev := tr.hash
	tr.hash = hashchain.Hash(fmt.Appendf(nil, `{"seq":%d,"action":%q,"prev":%q,"salt":%q}`, tr.seq, action, prev, tr.salt))
	return protocol.Record{Kind: protocol.KindAudit, Time: time.Now(), Model: face, Audit: &protocol.Audit{
		Actor: "updater", Action: action, Outcome: "ok", Seq: tr.seq, Prev: prev, Hash: tr.hash}}
}

func TestIngestDeviceAudit(t *testing.T) { eachEngine(t, testIngestDeviceAudit) }

func testIngestDeviceAudit(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	var mu sync.Mutex
	var breaks []ChainBreak
	// A break's webhook deliveries are stored with the broken record:
	// when OnAuditChainBroken hears of it, its row is there already.
	var r *Registry
	var stored []string
	tg.opts.AuditBreakAlerts = func(b ChainBreak) []AlertDelivery {
		now := time.Now()
		id := fmt.Sprintf("break/%s/%d", b.Device, b.N)
		return []AlertDelivery{{Webhook: "security", EventID: id, Event: "audit_chain_broken", Subject: b.Device, Key: "k-" + id,
			Body: []byte(`{}`), Created: now, Due: now}}
	}
	tg.opts.OnAuditChainBroken = func(b ChainBreak) {
		ds, err := r.AlertDeliveries(AlertQuery{Limit: 10})
		mu.Lock()
		defer mu.Unlock()
		breaks = append(breaks, b)
		for _, d := range ds {
			if err == nil && d.EventID == fmt.Sprintf("break/%s/%d", b.Device, b.N) && d.State == AlertPending {
				stored = append(stored, d.EventID)
			}
		}
	}
	r = tg.open(t)
	defer r.Close()
	f := &feeder{r: r, device: "gw-a", epoch: 1}
	var tr trail
	r1, r2 := tr.next("update.downloading"), tr.next("update.committed")
	notice := protocol.Record{Kind: protocol.KindAudit, Time: time.Now(), Audit: &protocol.Audit{Actor: "agent", Action: "telemetry.queue_reset", Outcome: "replaced"}}
	require.Equal(t, 3, f.send(t, r1, r2, notice))
	// The updater sends record 2 again after a crash, under a new
	// telemetry sequence number: a repeat, not stored twice.
	require.Equal(t, 1, f.send(t, r2))
	// Record 3 skipped (not every trail record travels): a gap, not a break.
	tr.next("command.accepted")
	r4 := tr.next("update.activating")
	require.Equal(t, 1, f.send(t, r4))
	// Record 5 names a hash other than record 4's: someone edited the trail.
	r5 := tr.next("update.committed")
	r5.Audit.Prev = strings.Repeat("0", 64)
	require.Equal(t, 1, f.send(t, r5))
	// Record 6 follows 5 as received: the chain goes on from the break.
	r6 := tr.next("update.rolled_back")
	require.Equal(t, 1, f.send(t, r6))
	// The trail starts again at 1 (the device's data was wiped).
	fresh := trail{salt: "wiped"}
	require.Equal(t, 1, f.send(t, fresh.next("update.downloading")))

	recs, err := r.DeviceAudit("gw-a", 0, 0)
	require.NoError(t, err)
	var got []string
	for _, rec := range recs {
		got = append(got, fmt.Sprintf("%d %s %d %s", rec.Seq, rec.Action, rec.ChainSeq, rec.Chain))
	}
	assert.Equal(t, []string{
		"7 update.downloading 1 broken",
		"6 update.rolled_back 6 ok",
		"5 update.committed 5 broken",
		"4 update.activating 4 ok",
		"3 telemetry.queue_reset 0 none",
		"2 update.committed 2 ok",
		"1 update.downloading 1 ok",
	}, got)
	assert.Contains(t, recs[3].Reason, "gap")
	assert.Contains(t, recs[0].Reason, "started again")
	n, err := r.AuditChainBreaks("gw-a")
	require.NoError(t, err)
	assert.Equal(t, uint64(2), n)
	mu.Lock()
	require.Len(t, breaks, 2)
	assert.Equal(t, ChainBreak{Device: "gw-a", N: 5, Seq: 5, Time: r5.Time.UTC(), Model: "face", Action: "update.committed",
		Reason: breaks[0].Reason}, breaks[0])
	assert.Equal(t, uint64(7), breaks[1].N)
	assert.Equal(t, []string{"break/gw-a/5", "break/gw-a/7"}, stored, "each break's delivery stored before it was reported")
	mu.Unlock()

	page, err := r.DeviceAudit("gw-a", 2, 5)
	require.NoError(t, err)
	require.Len(t, page, 2)
	assert.Equal(t, []uint64{4, 3}, []uint64{page[0].Seq, page[1].Seq})
}

func TestIngestSamplesBounded(t *testing.T) { eachEngine(t, testIngestSamplesBounded) }

func testIngestSamplesBounded(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	tg.opts.MaxSamples = 20
	r := tg.open(t)
	defer r.Close()
	t0 := time.Now().Add(-time.Hour).UTC()
	sample := func(i int) protocol.Record {
		return protocol.Record{Kind: protocol.KindSample, Time: t0.Add(time.Duration(i) * time.Second), Model: face, Sample: &protocol.Sample{
			RequestID: fmt.Sprint("req-", i), Latency: time.Millisecond,
			Inputs:  []protocol.TensorSample{{Name: "x", Datatype: "FP32", Shape: []int64{1, 2}, Data: make([]byte, 8)}},
			Outputs: []protocol.TensorSample{{Name: "y", Datatype: "FP32", Shape: []int64{1}, Data: []byte{0, 0, 128, 63}}}}}
	}
	f := &feeder{r: r, device: "gw-a", epoch: 1}
	for i := range 25 {
		f.send(t, sample(i))
	}
	var ids []string
	require.NoError(t, r.Samples(SampleFilter{Model: "face"}, func(s *StoredSample) error {
		ids = append(ids, s.Sample.RequestID)
		return nil
	}))
	// Over 20 at the 21st: down to 18 (9/10); again at the 24th, then one more.
	assert.Equal(t, 19, len(ids))
	assert.Equal(t, "req-6", ids[0], "the oldest dropped first")
	assert.Equal(t, "req-24", ids[len(ids)-1])
	st, err := r.SampleStats()
	require.NoError(t, err)
	assert.Equal(t, int64(19), st.Count)

	// A byte bound on the same store, opened again.
	r.Close()
	one, err := protocol.AppendRecord(nil, ptr(sample(10))) // the size of the samples left
	require.NoError(t, err)
	tg.opts.MaxSamples, tg.opts.MaxSampleBytes = 0, int64(10*len(one))
	r = tg.open(t)
	defer r.Close()
	f.r = r
	f.send(t, sample(25))
	st, err = r.SampleStats()
	require.NoError(t, err)
	assert.LessOrEqual(t, st.Bytes, int64(10*len(one)))
	assert.Equal(t, int64(9), st.Count)
	var last []string
	require.NoError(t, r.Samples(SampleFilter{Model: "face", Version: "3", Since: t0.Add(20 * time.Second)}, func(s *StoredSample) error {
		last = append(last, s.Sample.RequestID)
		return nil
	}))
	assert.Equal(t, []string{"req-20", "req-21", "req-22", "req-23", "req-24", "req-25"}, last)
	require.NoError(t, r.Samples(SampleFilter{Model: "face", Version: "4"}, func(s *StoredSample) error {
		t.Errorf("sample of version %s, want none", s.Version)
		return nil
	}))
}

func ptr[T any](v T) *T { return &v }

func TestPrune(t *testing.T) { eachEngine(t, testPrune) }

func testPrune(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	defer r.Close()
	now := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	f := &feeder{r: r, device: "gw-a", epoch: 1}
	var recs []protocol.Record
	// One aggregate an hour for 40 days, and one a minute for the last
	// two hours; a health point a day.
	for h := range 40 * 24 {
		recs = append(recs, aggregate(now.Add(-time.Duration(h)*time.Hour-time.Second), 1, 0, []uint64{1000}, []uint64{1, 0}))
	}
	for m := range 120 {
		recs = append(recs, aggregate(now.Add(-time.Duration(m)*time.Minute-time.Second), 1, 0, []uint64{1000}, []uint64{1, 0}))
	}
	for d := range 40 {
		recs = append(recs, protocol.Record{Kind: protocol.KindHealth, Time: now.Add(-time.Duration(d) * 24 * time.Hour), Health: &protocol.Health{}})
	}
	require.Equal(t, len(recs), f.send(t, recs...))
	pruned := false
	count := func(step int64) int {
		bs, err := r.Buckets("face", "gw-a", step)
		require.NoError(t, err)
		for _, b := range bs {
			if pruned && step == MinuteBucket && b.Start.Before(now.Add(-30*24*time.Hour)) {
				t.Errorf("minute bucket of %v kept", b.Start)
			}
		}
		return len(bs)
	}
	require.Equal(t, 40*24+120-2, count(MinuteBucket)) // two minutes had an hourly one too
	p, err := r.Prune(context.Background(), now, Retention{})
	require.NoError(t, err)
	pruned = true
	assert.Equal(t, int64(2*(10*24)), p.MinuteBuckets, "device and fleet rows of the 10 days past 30")
	assert.Equal(t, int64(0), p.HourBuckets)
	assert.Equal(t, int64(9), p.Health, "health points past 30 days")
	assert.Equal(t, int64(0), p.Telemetry)
	assert.Equal(t, 30*24+120-2, count(MinuteBucket))
	// Hour buckets a year; raw rows a week after they arrived.
	p, err = r.Prune(context.Background(), time.Now().Add(366*24*time.Hour), Retention{})
	require.NoError(t, err)
	assert.Equal(t, int64(2*40*24), p.HourBuckets)
	assert.Equal(t, int64(40), p.Telemetry, "raw rows of the health points: an aggregate's de-duplication is its agg_records row")
	assert.Equal(t, 0, count(HourBucket))
	assert.Equal(t, 0, count(MinuteBucket))
	tot, err := r.Totals("face", "3")
	require.NoError(t, err)
	assert.Equal(t, uint64(40*24+120), tot.Requests, "totals are never pruned")
}

// TestPruneBound: over MaxBucketRows the oldest minute buckets go first,
// in several chunks.
func TestPruneBound(t *testing.T) { eachEngine(t, testPruneBound) }

func testPruneBound(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	defer r.Close()
	now := time.Now().UTC().Truncate(time.Hour)
	f := &feeder{r: r, device: "gw-a", epoch: 1}
	var recs []protocol.Record
	for m := range 6000 {
		recs = append(recs, aggregate(now.Add(-time.Duration(m)*time.Minute), 1, 0, nil, []uint64{1}))
	}
	require.Equal(t, len(recs), f.send(t, recs...))
	// 6000 minute rows each for the device and the fleet, 101 hours each.
	p, err := r.Prune(context.Background(), now, Retention{MaxBucketRows: 5000})
	require.NoError(t, err)
	assert.Equal(t, int64(2*6000+2*101-5000), p.OverBound) // 6000 minutes back from a whole hour touch 101 hours
	bs, err := r.Buckets("face", "", MinuteBucket)
	require.NoError(t, err)
	require.NotEmpty(t, bs)
	assert.Equal(t, now, bs[len(bs)-1].Start, "the newest kept")
	hs, err := r.Buckets("face", "", HourBucket)
	require.NoError(t, err)
	assert.Len(t, hs, 101, "hour buckets kept while minute ones remain")
}

// TestBucketJSON: the hand-written JSON columns read back as encoding/json
// reads them, and match what it writes.
func TestBucketJSON(t *testing.T) {
	fs := []protocol.FeatureCounts{{Name: "a\"b", Counts: []uint64{1, 2}, NaNs: 3, Sum: 1e300, SumSq: 0.1}, {Name: "c", Sum: math.NaN()}}
	want, err := json.Marshal([]protocol.FeatureCounts{fs[0], {Name: "c"}})
	require.NoError(t, err)
	assert.JSONEq(t, string(want), featuresJSON(fs))
	assert.Equal(t, "[]", featuresJSON(nil))
	l := LatencyHistogram{BoundsMicros: []uint64{1, 2}, Counts: []uint64{3, 4, 5}, SumMicros: 6}
	want, err = json.Marshal(l)
	require.NoError(t, err)
	assert.JSONEq(t, string(want), l.json())
	m := map[string]uint64{"x": 1, "y\n\x00\xff": 2, `a"b\c<&>`: 3, "é": 4}
	want, err = json.Marshal(m)
	require.NoError(t, err)
	assert.JSONEq(t, string(want), codesJSON(m))
	assert.Equal(t, "{}", codesJSON(nil))
}

// FuzzCodesJSON: whatever error code a device sends, the hand-written
// errors_by_code column is JSON that reads back as encoding/json's own
// encoding does (so a hostile code cannot make a bucket unreadable).
func FuzzCodesJSON(f *testing.F) {
	for _, s := range []string{"bad_input", "y\n\x00\xff", `a"b\c<&>`, "é", ""} {
		f.Add(s, "overload")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		m := map[string]uint64{a: 1, b: 2}
		var got, want map[string]uint64
		if err := json.Unmarshal([]byte(codesJSON(m)), &got); err != nil {
			t.Fatalf("codesJSON(%v): %v", m, err)
		}
		ref, _ := json.Marshal(m)
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, want) {
			t.Fatalf("codesJSON(%v) reads back as %v, encoding/json's as %v", m, got, want)
		}
		var fs []protocol.FeatureCounts
		if err := json.Unmarshal([]byte(featuresJSON([]protocol.FeatureCounts{{Name: a}})), &fs); err != nil {
			t.Fatalf("featuresJSON(%q): %v", a, err)
		}
	})
}

// TestDeviceMinutesAcrossTheUpgrade: a store written before agg_records
// (schema 10) holds a device's minute buckets as agg_buckets rows; after the
// upgrade new aggregates go to agg_records, and every reader of the
// device's minutes adds both, each once. A copy of a record already stored
// (redelivered after the upgrade) counts nothing.
func TestDeviceMinutesAcrossTheUpgrade(t *testing.T) {
	eachEngine(t, testDeviceMinutesAcrossTheUpgrade)
}

func testDeviceMinutesAcrossTheUpgrade(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	eng, w, rd := tg.openAt(t, 10)
	t0 := time.Now().UTC().Truncate(time.Hour).Add(-2 * time.Hour)
	// The device's minute row as schema 10's ingest wrote it: 10 requests,
	// 1 error, at t0.
	_, err := w.Exec(eng.rebind(`INSERT INTO agg_buckets (model, version, device, step, start, records, requests, errors,
		stream_dropped, errors_by_code, latency, features) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
		"face", "3", "gw-a", MinuteBucket, t0.Unix(), 1, 10, 1, 0, `{"bad_input":1}`,
		`{"bounds_micros":[1000],"counts":[10,0],"sum_micros":10000}`, `[]`)
	require.NoError(t, err)
	w.Close()
	if rd != w {
		rd.Close()
	}
	r := tg.open(t)
	defer r.Close()
	f := &feeder{r: r, device: "gw-a", epoch: 1}
	recs := []protocol.Record{
		aggregate(t0.Add(20*time.Second), 5, 0, []uint64{1000}, []uint64{5, 0}), // the same minute
		aggregate(t0.Add(time.Minute), 7, 2, []uint64{1000}, []uint64{6, 1}),
	}
	require.Equal(t, 2, f.send(t, recs...))
	require.Equal(t, 0, f.resend(t, 1, recs...), "a copy")

	bs, err := r.Buckets("face", "gw-a", MinuteBucket)
	require.NoError(t, err)
	require.Len(t, bs, 2)
	assert.Equal(t, t0, bs[0].Start)
	assert.Equal(t, uint64(15), bs[0].Requests, "the row from before and the record after")
	assert.Equal(t, uint64(2), bs[0].Records)
	assert.Equal(t, []uint64{15, 0}, bs[0].Latency.Counts)
	assert.Equal(t, uint64(7), bs[1].Requests)

	m, err := r.Metrics(MetricsQuery{Model: "face", Version: "3", Device: "gw-a", Since: t0, Until: t0.Add(2 * time.Minute), Step: time.Minute})
	require.NoError(t, err)
	require.Len(t, m.Series, 2)
	assert.Equal(t, uint64(15), m.Series[0].Requests)
	assert.Equal(t, uint64(1), m.Series[0].Errors)
	assert.Equal(t, uint64(7), m.Series[1].Requests)
	assert.Equal(t, uint64(22), m.Totals.Requests)
	assert.Equal(t, map[string]uint64{"bad_input": 3}, m.Totals.ErrorsByCode)

	in, err := r.Intervals(EvidenceQuery{Model: "face", Version: "3", Devices: []string{"gw-a"}, Since: t0, Until: t0.Add(2 * time.Minute), Step: MinuteBucket})
	require.NoError(t, err)
	require.Len(t, in, 2, "one interval per bucket")
	assert.Equal(t, uint64(15), in[0].Requests)
	assert.Equal(t, uint64(3), in[0].Errors+in[1].Errors)

	// The hour: the device's hour row holds only what arrived after the
	// upgrade (schema 10's hour row was not written here); the fleet's
	// minute row likewise.
	hs, err := r.Buckets("face", "gw-a", HourBucket)
	require.NoError(t, err)
	require.Len(t, hs, 1)
	assert.Equal(t, uint64(12), hs[0].Requests)
}
