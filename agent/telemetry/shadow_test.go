package telemetry

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/protocol"
)

// TestShadowAggregate: a version's answers to shadow copies make an
// aggregate of their own with the Shadow section, apart from the traffic
// the same version served (a canary's), and its sums add up: drops are no
// requests, the paired baseline latency counts the answered copies only.
func TestShadowAggregate(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	a := newAggregator(DefaultLatencyBounds, start)
	v2 := protocol.ModelRef{Name: "hand", Version: "2", Digest: "sha256:b"}
	out := func(diff float64, agree uint64) []OutputComparison {
		return []OutputComparison{
			{Name: "scores", Compared: true, MaxAbsDiff: diff, MeanAbsDiff: diff / 2, Top1Rows: 1, Top1Agree: agree},
			{Name: "flag", Compared: true, MaxAbsDiff: diff, MeanAbsDiff: diff},
		}
	}
	a.observe(&Observation{Model: v2, Latency: 3 * time.Millisecond}) // served: a canary's answer
	a.observe(&Observation{Model: v2, Latency: 4 * time.Millisecond, Shadow: &ShadowObservation{Baseline: "1", BaselineLatency: 2 * time.Millisecond, Outputs: out(0.5, 1)}})
	a.observe(&Observation{Model: v2, Latency: 6 * time.Millisecond, Shadow: &ShadowObservation{Baseline: "1", BaselineLatency: 2 * time.Millisecond, Outputs: out(1.5, 0)}})
	a.observe(&Observation{Model: v2, Latency: 9 * time.Millisecond, ErrCode: "internal", Shadow: &ShadowObservation{Baseline: "1", BaselineLatency: 2 * time.Millisecond}})
	a.observe(&Observation{Model: v2, Shadow: &ShadowObservation{Baseline: "1", Dropped: true}})
	recs := a.flush(start.Add(time.Minute))
	require.Len(t, recs, 2)
	served, shadow := recs[0].Aggregate, recs[1].Aggregate
	assert.Nil(t, served.Shadow, "served traffic first, without a shadow section")
	assert.EqualValues(t, 1, served.Requests)
	require.NotNil(t, shadow.Shadow)
	sh := shadow.Shadow
	assert.EqualValues(t, 3, shadow.Requests, "answers and the error; the drop is no request")
	assert.EqualValues(t, 1, shadow.Errors)
	assert.EqualValues(t, 19_000, shadow.Latency.SumMicros)
	assert.Equal(t, "1", sh.Baseline)
	assert.EqualValues(t, 1, sh.Dropped)
	var paired uint64
	for _, c := range sh.BaselineLatency.Counts {
		paired += c
	}
	assert.EqualValues(t, 2, paired, "the baseline latency of the copies both answered")
	assert.EqualValues(t, 4_000, sh.BaselineLatency.SumMicros)
	assert.Equal(t, []protocol.OutputAgreement{
		{Name: "scores", Compared: 2, MaxAbsDiff: 1.5, SumMeanAbsDiff: 1, Top1Compared: 2, Top1Agree: 1},
		{Name: "flag", Compared: 2, MaxAbsDiff: 1.5, SumMeanAbsDiff: 2},
	}, sh.Outputs)

	// It survives the codec: what the fleet decodes is what was counted.
	b, err := protocol.AppendRecord(nil, &recs[1])
	require.NoError(t, err)
	got, err := protocol.DecodeRecord(b)
	require.NoError(t, err)
	assert.Equal(t, sh, got.Aggregate.Shadow)
	assert.Empty(t, a.flush(start.Add(2*time.Minute)), "a new interval starts empty")
}
