package telemetry

import (
	"math"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testReference() *profile.Profile {
	return &profile.Profile{Version: 1, Requests: 4, Features: []profile.Feature{
		{Name: "in:x:mean", Edges: []float64{0, 1}, Counts: []uint64{1, 2, 1}, Count: 4, Max: 2},
		{Name: "out:y:max", Edges: []float64{10}, Counts: []uint64{2, 2}, Count: 4, Max: 20},
	}}
}

// The aggregate's feature histograms count every answered request once per
// feature, binned with the reference's edges, with NaNs apart, and an old
// decoder (which stops after stream_dropped) reads the rest unchanged.
func TestAggregateFeatures(t *testing.T) {
	ref := testReference()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a := newAggregator(DefaultLatencyBounds, start)
	m := protocol.ModelRef{Name: "m", Version: "1", Digest: "sha256:ab"}
	for _, vs := range [][]float64{{-1, 10}, {0, 9.5}, {0.5, 11}, {1, math.NaN()}, {7, 10}} {
		a.observe(&Observation{Model: m, Latency: time.Millisecond, Reference: ref, Features: vs})
	}
	a.observe(&Observation{Model: m, Latency: time.Millisecond, ErrCode: "bad_input"}) // not answered: no features
	recs := a.flush(start.Add(time.Minute))
	require.Len(t, recs, 1)
	agg := recs[0].Aggregate
	assert.Equal(t, uint64(6), agg.Requests)
	require.Len(t, agg.Features, 2)
	assert.Equal(t, protocol.FeatureCounts{Name: "in:x:mean", Counts: []uint64{1, 2, 2}, Sum: 7.5, SumSq: 1 + 0.25 + 1 + 49}, agg.Features[0])
	assert.Equal(t, protocol.FeatureCounts{Name: "out:y:max", Counts: []uint64{1, 3}, NaNs: 1, Sum: 40.5, SumSq: 100 + 90.25 + 121 + 100}, agg.Features[1])
	for _, f := range agg.Features {
		n := f.NaNs
		for _, c := range f.Counts {
			n += c
		}
		assert.Equal(t, agg.Requests-agg.Errors, n, "feature %s counts every answered request", f.Name)
	}

	body, err := protocol.AppendRecord(nil, &recs[0])
	require.NoError(t, err)
	back, err := protocol.DecodeRecord(body)
	require.NoError(t, err)
	assert.Equal(t, agg.Features, back.Aggregate.Features)
	old := recs[0]
	oldAgg := *agg
	oldAgg.Features = nil
	old.Aggregate = &oldAgg
	prefix, err := protocol.AppendRecord(nil, &old)
	require.NoError(t, err)
	assert.Equal(t, prefix, body[:len(prefix)], "the features come after everything an old controller reads")
	// What an old controller decodes: the fields it knows, from the prefix
	// it reads, the same as from the record of an agent without features.
	oldView, err := protocol.DecodeRecord(body[:len(prefix)])
	require.NoError(t, err)
	assert.Equal(t, old.Aggregate, oldView.Aggregate)

	// The next interval starts empty.
	recs = a.flush(start.Add(2 * time.Minute))
	assert.Empty(t, recs)
}

func TestAggregateFeaturesDoNotAllocate(t *testing.T) {
	ref := testReference()
	a := newAggregator(DefaultLatencyBounds, time.Now())
	o := Observation{Model: protocol.ModelRef{Name: "m", Version: "1"}, Latency: time.Millisecond, Reference: ref, Features: []float64{0.3, 12}}
	a.observe(&o)
	if n := testing.AllocsPerRun(1000, func() { a.observe(&o) }); n != 0 {
		t.Errorf("observe with features allocates %v times per request", n)
	}
}
