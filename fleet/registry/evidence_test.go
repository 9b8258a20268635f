package registry

import (
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var faceV4 = protocol.ModelRef{Name: "face", Version: "4", Digest: "sha256:04"}

// shadowAggregate is candidate v4's aggregate of copies of v3's requests.
func shadowAggregate(start time.Time, requests, errors uint64, candMicros, baseMicros uint64, outs ...protocol.OutputAgreement) protocol.Record {
	bounds := []uint64{1000, 5000, 20000}
	return protocol.Record{Kind: protocol.KindAggregate, Time: start.Add(10 * time.Second), Model: faceV4, Aggregate: &protocol.Aggregate{
		Start: start, End: start.Add(10 * time.Second), Requests: requests, Errors: errors,
		Latency:  protocol.Histogram{BoundsMicros: bounds, Counts: []uint64{0, requests - errors, 0, 0}, SumMicros: candMicros * (requests - errors)},
		Features: []protocol.FeatureCounts{{Name: "out:score:max", Counts: []uint64{requests - errors, 0}}},
		Shadow: &protocol.Shadow{Baseline: "3", Dropped: 2,
			BaselineLatency: protocol.Histogram{BoundsMicros: bounds, Counts: []uint64{requests - errors, 0, 0, 0}, SumMicros: baseMicros * (requests - errors)},
			Outputs:         outs},
	}}
}

// TestIngestShadow: an aggregate with a shadow section goes to
// shadow_buckets only (never into the served traffic's buckets or totals),
// merged per device and step: counts added, outputs merged (max of max),
// and read back by ShadowIntervals.
func TestIngestShadow(t *testing.T) { eachEngine(t, testIngestShadow) }

func testIngestShadow(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	tg.opts.FineStep = 5
	r := tg.open(t)
	defer r.Close()
	t0 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	out := func(compared uint64, maxd, sum float64, top1c, top1a uint64) protocol.OutputAgreement {
		return protocol.OutputAgreement{Name: "score", Compared: compared, MaxAbsDiff: maxd, SumMeanAbsDiff: sum, Top1Compared: top1c, Top1Agree: top1a}
	}
	a := &feeder{r: r, device: "gw-a", epoch: 1}
	recs := []protocol.Record{
		shadowAggregate(t0, 10, 1, 3000, 800, out(9, 0.5, 0.9, 9, 8)),
		shadowAggregate(t0.Add(2*time.Second), 6, 0, 3000, 800, out(6, 0.75, 0.3, 6, 6), protocol.OutputAgreement{Name: "box", Compared: 6, SumMeanAbsDiff: 1.2}),
		shadowAggregate(t0.Add(7*time.Second), 4, 0, 3000, 800, out(4, math.NaN(), 0.2, 4, 1)),
		aggregate(t0, 100, 0, []uint64{1000, 5000, 20000}, []uint64{100, 0, 0, 0}), // v3 served
	}
	require.Equal(t, 4, a.send(t, recs...))
	require.Equal(t, 0, a.resend(t, 1, recs...))

	// Served traffic: v3's only.
	bs, err := r.Buckets("face", "", MinuteBucket)
	require.NoError(t, err)
	require.Len(t, bs, 1)
	assert.Equal(t, "3", bs[0].Version)
	assert.Equal(t, uint64(100), bs[0].Requests)
	tot, err := r.Totals("face", "4")
	require.NoError(t, err)
	assert.Zero(t, tot.Requests, "shadow copies counted as v4's served traffic")

	q := EvidenceQuery{Model: "face", Version: "4", Baseline: "3", Since: t0, Until: t0.Add(time.Minute), Step: MinuteBucket}
	sh, err := r.ShadowIntervals(q)
	require.NoError(t, err)
	require.Len(t, sh, 1)
	s := sh[0]
	assert.Equal(t, "gw-a", s.Device)
	assert.Equal(t, t0, s.Start)
	assert.Equal(t, uint64(20), s.Requests)
	assert.Equal(t, uint64(1), s.Errors)
	assert.Equal(t, uint64(6), s.Dropped)
	assert.Equal(t, []uint64{0, 19, 0, 0}, s.Latency.Counts)
	assert.Equal(t, uint64(19*3000), s.Latency.SumMicros)
	assert.Equal(t, []uint64{19, 0, 0, 0}, s.BaselineLatency.Counts)
	assert.Equal(t, uint64(19*800), s.BaselineLatency.SumMicros)
	require.Len(t, s.Outputs, 2)
	assert.Equal(t, protocol.OutputAgreement{Name: "score", Compared: 19, MaxAbsDiff: 0.75, SumMeanAbsDiff: 1.4, Top1Compared: 19, Top1Agree: 15},
		roundSum(s.Outputs[0]))
	assert.Equal(t, protocol.OutputAgreement{Name: "box", Compared: 6, SumMeanAbsDiff: 1.2}, s.Outputs[1])
	require.Len(t, s.Features, 1)
	assert.Equal(t, []uint64{19, 0}, s.Features[0].Counts)

	// The fine step: three buckets of 5 s (0, 5: the third record).
	q.Step = 5
	sh, err = r.ShadowIntervals(q)
	require.NoError(t, err)
	require.Len(t, sh, 2)
	assert.Equal(t, uint64(16), sh[0].Requests)
	assert.Equal(t, t0.Add(5*time.Second), sh[1].Start)
	assert.Equal(t, uint64(4), sh[1].Requests)

	// Hour buckets are kept too; another baseline is another series.
	q.Step = HourBucket
	sh, err = r.ShadowIntervals(q)
	require.NoError(t, err)
	require.Len(t, sh, 1)
	assert.Equal(t, uint64(20), sh[0].Requests)
	q.Baseline = "2"
	sh, err = r.ShadowIntervals(q)
	require.NoError(t, err)
	assert.Empty(t, sh)

	// Prune: the fine buckets go after an hour, the minute ones with the
	// minute buckets' retention.
	p, err := r.Prune(t.Context(), t0.Add(2*time.Hour), Retention{})
	require.NoError(t, err)
	// Two fine rows of shadow_buckets (device, fleet), one of agg_buckets
	// (the fleet's: a device's fine buckets are its agg_records rows,
	// kept as long as minute buckets).
	assert.Equal(t, int64(3), p.MinuteBuckets)
	q.Baseline, q.Step = "3", 5
	sh, err = r.ShadowIntervals(q)
	require.NoError(t, err)
	assert.Empty(t, sh)
}

func roundSum(o protocol.OutputAgreement) protocol.OutputAgreement {
	o.SumMeanAbsDiff = math.Round(o.SumMeanAbsDiff*1e9) / 1e9
	return o
}

// TestIntervals: the served traffic of a version per device and bucket,
// for the devices named, or all but those excepted (also past the size of
// a device list the query names in SQL), from the bucket holding Since.
func TestIntervals(t *testing.T) { eachEngine(t, testIntervals) }

func testIntervals(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	defer r.Close()
	t0 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	bounds := []uint64{1000, 5000, 20000}
	for d := range 4 {
		f := &feeder{r: r, device: fmt.Sprintf("gw-%d", d), epoch: 1}
		for m := range 3 {
			f.send(t, aggregate(t0.Add(time.Duration(m)*time.Minute), uint64(10+d), uint64(d), bounds, []uint64{uint64(10 + d), 0, 0, 0}))
		}
	}
	q := EvidenceQuery{Model: "face", Version: "3", Devices: []string{"gw-1", "gw-3"}, Since: t0.Add(30 * time.Second), Until: t0.Add(2 * time.Minute)}
	in, err := r.Intervals(q)
	require.NoError(t, err)
	require.Len(t, in, 4) // minutes 0 (holding Since) and 1, two devices
	assert.Equal(t, "gw-1", in[0].Device)
	assert.Equal(t, t0, in[0].Start)
	assert.Equal(t, int64(MinuteBucket), in[0].Step)
	assert.Equal(t, uint64(11), in[0].Requests)
	assert.Equal(t, uint64(1), in[0].Errors)
	assert.Equal(t, uint64(11), in[0].Latency.Total())
	assert.Equal(t, "gw-3", in[3].Device)
	assert.Equal(t, t0.Add(time.Minute), in[3].Start)

	q.Devices, q.Except = nil, []string{"gw-0"}
	in, err = r.Intervals(q)
	require.NoError(t, err)
	require.Len(t, in, 6)
	for _, i := range in {
		assert.NotEqual(t, "gw-0", i.Device)
		assert.NotEmpty(t, i.Device, "the fleet's row read as a device")
	}

	// A device list longer than the query names in SQL.
	long := []string{"gw-2"}
	for i := range maxDeviceList {
		long = append(long, fmt.Sprintf("other-%d", i))
	}
	q.Devices, q.Except = long, nil
	in, err = r.Intervals(q)
	require.NoError(t, err)
	require.Len(t, in, 2)
	assert.Equal(t, "gw-2", in[0].Device)

	_, err = r.Intervals(EvidenceQuery{Model: "face", Version: "3", Since: t0, Until: t0})
	assert.ErrorIs(t, err, ErrInvalidQuery)
}

// TestEvidenceStep: fine buckets for recent short windows when the store
// keeps them, minutes, then hours.
func TestEvidenceStep(t *testing.T) {
	now := time.Now()
	fine, err := Open(t.TempDir(), Options{FineStep: 1})
	require.NoError(t, err)
	defer fine.Close()
	coarse, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	defer coarse.Close()
	for _, tc := range []struct {
		r            *Registry
		since, until time.Duration // before now
		want         int64
	}{
		{fine, 30 * time.Second, 0, 1},
		{fine, 2 * time.Hour, 119 * time.Minute, MinuteBucket}, // fine buckets pruned by now
		{fine, 10 * time.Minute, 0, MinuteBucket},              // 600 fine buckets
		{coarse, 30 * time.Second, 0, MinuteBucket},
		{coarse, 90 * time.Minute, 0, MinuteBucket},
		{coarse, 3 * time.Hour, 0, HourBucket},
	} {
		if got := tc.r.EvidenceStep(now.Add(-tc.since), now.Add(-tc.until), now); got != tc.want {
			t.Errorf("window %s..%s ago: got step %d, want %d", tc.since, tc.until, got, tc.want)
		}
	}
}

// TestIngestShadowConcurrent: two store handles (two replicas on
// PostgreSQL) merging the same shadow rows lose nothing.
func TestIngestShadowConcurrent(t *testing.T) { eachEngine(t, testIngestShadowConcurrent) }

func testIngestShadowConcurrent(t *testing.T, newTarget func(*testing.T) target) {
	tg := newTarget(t)
	r1 := tg.open(t)
	defer r1.Close()
	r2 := tg.open(t)
	defer r2.Close()
	t0 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	const senders, records = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for s := range senders {
		wg.Go(func() {
			r := []*Registry{r1, r2}[s%2]
			for i := range records {
				rec := shadowAggregate(t0.Add(time.Duration(i)*time.Second), 3, 0, 2000, 1000,
					protocol.OutputAgreement{Name: "score", Compared: 3, Top1Compared: 3, Top1Agree: 2})
				body, err := protocol.AppendRecord(nil, &rec)
				if err != nil {
					errs <- err
					return
				}
				// One device, distinct epochs: every record is fresh.
				b := &protocol.Batch{BatchHeader: protocol.BatchHeader{Epoch: uint64(s + 1)}, Entries: []protocol.Entry{{Seq: uint64(i + 1), Body: body}}}
				if _, err := r.RecordBatch("gw-a", b, time.Now()); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	sh, err := r1.ShadowIntervals(EvidenceQuery{Model: "face", Version: "4", Baseline: "3", Since: t0, Until: t0.Add(time.Minute), Step: MinuteBucket})
	require.NoError(t, err)
	require.Len(t, sh, 1)
	assert.Equal(t, uint64(3*senders*records), sh[0].Requests)
	require.Len(t, sh[0].Outputs, 1)
	assert.Equal(t, uint64(2*senders*records), sh[0].Outputs[0].Top1Agree)
}
