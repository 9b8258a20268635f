package telemetry

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func TestInputSummaryMerge(t *testing.T) {
	tests := []struct {
		name   string
		parts  [][]float64
		mean   float64
		vari   float64
		min    float64
		max    float64
		count  uint64
		nans   uint64
		nparts int
	}{
		{"one part", [][]float64{{1, 2, 3, 4}}, 2.5, 1.25, 1, 4, 4, 0, 1},
		{"split", [][]float64{{1, 2}, {3, 4}}, 2.5, 1.25, 1, 4, 4, 0, 2},
		{"empty part", [][]float64{{}, {5, 5, 5}}, 5, 0, 5, 5, 3, 0, 2},
		{"nan and inf", [][]float64{{math.NaN(), -2}, {math.Inf(1), 2}}, 0, 4, -2, 2, 2, 2, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var total InputSummary
			for _, p := range tt.parts {
				s := InputSummary{Name: "x"}
				for _, v := range p {
					s.Add(v)
				}
				total.merge(&s)
			}
			st := total.stats()
			assert.Equal(t, tt.count, st.Count, "count")
			assert.Equal(t, tt.nans, st.NaNs, "nans")
			assert.InDelta(t, tt.mean, st.Mean, 1e-12, "mean")
			assert.InDelta(t, tt.vari, st.Variance, 1e-12, "variance")
			assert.Equal(t, tt.min, st.Min, "min")
			assert.Equal(t, tt.max, st.Max, "max")
		})
	}
}

// TestAggregatesWritten: observations become one aggregate per model per
// interval, with the histogram and error codes, and land in the queue.
func TestAggregatesWritten(t *testing.T) {
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "q.db")
	q := startQueue(t, Options{Path: path, Clock: clk, AggregateInterval: time.Minute, HealthInterval: -1,
		LatencyBounds: []uint64{1000, 10_000}})
	other := protocol.ModelRef{Name: "other", Version: "2", Digest: "sha256:00"}
	for i := range 10 {
		o := Observation{Model: testModel, Latency: time.Duration(i) * 2 * time.Millisecond}
		if i%5 == 0 {
			o.ErrCode = "bad_input"
		}
		in := InputSummary{Name: "image"}
		in.Add(float64(i))
		o.Inputs = []InputSummary{in}
		q.Observe(o)
	}
	q.Observe(Observation{Model: other, Latency: time.Second})
	// Stream drops count apart: not requests, errors nor latencies.
	q.Observe(Observation{Model: testModel, StreamDropped: 3})
	q.Observe(Observation{Model: testModel, StreamDropped: 4, ErrCode: "ignored"})
	// Advance until the writer, which may not have set its timer yet, fires.
	waitFor(t, "two aggregates", 5*time.Second, func() bool {
		clk.Advance(time.Minute)
		time.Sleep(time.Millisecond)
		return q.Stats().DepthByPriority[protocol.PriorityNormal] == 2
	})
	q.stop()

	recs := readRecords(t, path, protocol.PriorityNormal)
	require.Len(t, recs, 2)
	byName := map[string]*protocol.Aggregate{}
	for _, r := range recs {
		require.Equal(t, protocol.KindAggregate, r.Kind)
		byName[r.Model.Name] = r.Aggregate
	}
	a := byName["face"]
	require.NotNil(t, a)
	assert.Equal(t, uint64(10), a.Requests)
	assert.Equal(t, uint64(2), a.Errors)
	assert.Equal(t, []protocol.CodeCount{{Code: "bad_input", Count: 2}}, a.ErrorsByCode)
	assert.Equal(t, uint64(7), a.StreamDropped)
	assert.Equal(t, uint64(0), byName["other"].StreamDropped)
	// 0 and 2 ms... 18 ms: 0 is <= 1 ms, 2..10 ms are <= 10 ms, 12..18 above.
	assert.Equal(t, []uint64{1, 5, 4}, a.Latency.Counts)
	assert.Equal(t, uint64(90_000), a.Latency.SumMicros)
	require.Len(t, a.Inputs, 1)
	assert.InDelta(t, 4.5, a.Inputs[0].Mean, 1e-9)
	assert.Equal(t, uint64(10), a.Inputs[0].Count)
	assert.True(t, a.End.After(a.Start), "interval %v to %v", a.Start, a.End)
	assert.Equal(t, []uint64{0, 0, 1}, byName["other"].Latency.Counts)
}

// readRecords decodes the records of one priority bucket of a queue file.
func readRecords(t *testing.T, path string, p protocol.Priority) []protocol.Record {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	require.NoError(t, err)
	defer db.Close()
	var recs []protocol.Record
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketByPrio[p]).ForEach(func(_, v []byte) error {
			r, err := protocol.DecodeRecord(v)
			recs = append(recs, r)
			return err
		})
	}))
	return recs
}

// TestUnencodableQuarantined: a record that cannot be encoded is refused
// with the reason, kept in quarantine, counted, and does not take a number.
func TestUnencodableQuarantined(t *testing.T) {
	q := startQueue(t, Options{Path: filepath.Join(t.TempDir(), "q.db")})
	ctx := context.Background()
	_, err := q.Emit(ctx, protocol.Record{Kind: protocol.KindAudit, Update: &protocol.Update{}})
	if !errors.Is(err, protocol.ErrInvalidRecord) {
		t.Fatalf("got error %v, want ErrInvalidRecord", err)
	}
	seq, err := q.Emit(ctx, audit(1))
	require.NoError(t, err)
	assert.Equal(t, uint64(1), seq, "an unencodable record must not use a sequence number")
	s := q.Stats()
	assert.Equal(t, uint64(1), s.Dropped[protocol.DropUnencodable])
	assert.Equal(t, 1, s.Quarantined)
	entries, err := q.Quarantine()
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Equal(t, uint64(0), entries[0].Seq)
	assert.Contains(t, entries[0].Reason, "invalid record")
	q.stop()
	_, err = q.Quarantine()
	assert.ErrorIs(t, err, ErrClosed)
}
