package protocol

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var model = ModelRef{Name: "face", Version: "1.2.0", Digest: "sha256:" + strings.Repeat("ab", 32)}

func testRecords() []Record {
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 123, time.UTC)
	return []Record{
		{Kind: KindAggregate, Time: t0, Model: model, Aggregate: &Aggregate{
			Start: t0.Add(-time.Minute), End: t0, Requests: 1200, Errors: 3,
			ErrorsByCode:  []CodeCount{{"bad_input", 2}, {"overload", 1}},
			Latency:       Histogram{BoundsMicros: []uint64{500, 1000, 5000}, Counts: []uint64{100, 1000, 90, 10}, SumMicros: 987654},
			Inputs:        []InputStats{{Name: "image", Count: 1200, NaNs: 1, Min: -1, Max: 1, Mean: 0.25, Variance: 0.1}},
			StreamDropped: 17,
			Features: []FeatureCounts{
				{Name: "in:image:c0:mean", Counts: []uint64{3, 1000, 190, 7}, NaNs: 0, Sum: 600.5, SumSq: 400.25},
				{Name: "out:scores:max", Counts: []uint64{0, 0, 1200}, NaNs: 2, Sum: 1100, SumSq: 1010},
			},
		}},
		{Kind: KindAggregate, Time: t0, Model: ModelRef{Name: "face", Version: "1.3.0"}, Aggregate: &Aggregate{
			Start: t0.Add(-time.Minute), End: t0, Requests: 120, Errors: 1,
			Latency: Histogram{BoundsMicros: []uint64{500, 1000}, Counts: []uint64{10, 100, 10}, SumMicros: 98765},
			Shadow: &Shadow{
				Baseline: "1.2.0", Dropped: 4,
				BaselineLatency: Histogram{BoundsMicros: []uint64{500, 1000}, Counts: []uint64{20, 99, 0}, SumMicros: 76543},
				Outputs: []OutputAgreement{
					{Name: "scores", Compared: 119, MaxAbsDiff: 0.5, SumMeanAbsDiff: 1.25, Top1Compared: 119, Top1Agree: 117},
					{Name: "boxes", Compared: 119, MaxAbsDiff: 2, SumMeanAbsDiff: 30},
				},
			},
		}},
		{Kind: KindSample, Time: t0, Model: model, Sample: &Sample{
			RequestID: "req-1", Latency: 1500 * time.Microsecond,
			Inputs:  []TensorSample{{Name: "image", Datatype: "UINT8", Shape: []int64{1, 2, 2, 3}, Data: []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}}},
			Outputs: []TensorSample{{Name: "scores", Datatype: "FP32", Shape: []int64{1, -1}, Data: []byte{0, 0, 128, 63}, Truncated: true}},
		}},
		{Kind: KindSample, Time: t0, Model: model, Sample: &Sample{RequestID: "req-2", Error: "bad input"}},
		{Kind: KindHealth, Time: t0, Health: &Health{CPUPercent: 12.5, Load1: 0.7, MemUsedBytes: 1 << 28, MemTotalBytes: 1 << 30, DiskUsedBytes: 5, DiskTotalBytes: 10, TemperatureC: math.NaN(), Uptime: time.Hour}},
		{Kind: KindUpdate, Time: t0, Model: model, Update: &Update{RolloutID: "r-7", State: "downloading", BytesDone: 10, BytesTotal: 100}},
		{Kind: KindAudit, Model: model, Audit: &Audit{Actor: "agent", Action: "telemetry.queue_reset", Outcome: "ok", Detail: "moved aside"}},
		{Kind: KindAudit, Model: model, Audit: &Audit{Actor: "updater", Action: "update.committed", Outcome: "ok",
			Seq: 7, Prev: strings.Repeat("ab", 32), Hash: strings.Repeat("cd", 32)}},
	}
}

func TestRecordRoundTrip(t *testing.T) {
	for _, r := range testRecords() {
		t.Run(r.Kind.String(), func(t *testing.T) {
			body, err := AppendRecord(nil, &r)
			require.NoError(t, err)
			got, err := DecodeRecord(body)
			require.NoError(t, err)
			if r.Health != nil {
				// NaN != NaN; compare it apart.
				require.True(t, math.IsNaN(got.Health.TemperatureC), "got temperature %v, want NaN", got.Health.TemperatureC)
				got.Health.TemperatureC, r.Health.TemperatureC = 0, 0
			}
			assert.Equal(t, r, got)
			k, tm, err := PeekRecord(body)
			require.NoError(t, err)
			assert.Equal(t, r.Kind, k)
			assert.True(t, tm.Equal(r.Time), "got time %v, want %v", tm, r.Time)
			// Decoders ignore fields appended by newer versions.
			_, err = DecodeRecord(append(body, 1, 2, 3))
			assert.NoError(t, err)
		})
	}
}

// TestAggregateWithoutStreamDropped: an aggregate from an agent older than
// the stream_dropped field (the payload ends after the inputs) decodes with
// 0 drops, and a new one's field is the payload's last.
func TestAggregateWithoutStreamDropped(t *testing.T) {
	r := testRecords()[0]
	r.Aggregate.StreamDropped = 0
	r.Aggregate.Features = nil
	body, err := AppendRecord(nil, &r)
	require.NoError(t, err)
	require.Equal(t, byte(0), body[len(body)-1], "stream_dropped 0 is the last byte")
	old := body[:len(body)-1]
	got, err := DecodeRecord(old)
	require.NoError(t, err)
	assert.Equal(t, r, got)

	r.Aggregate.StreamDropped = 300
	body, err = AppendRecord(nil, &r)
	require.NoError(t, err)
	assert.Equal(t, old, body[:len(old)], "the field is appended, nothing before it moves")
	got, err = DecodeRecord(body)
	require.NoError(t, err)
	assert.Equal(t, uint64(300), got.Aggregate.StreamDropped)
}

func TestAppendRecordInvalid(t *testing.T) {
	tests := []struct {
		name string
		r    Record
	}{
		{"no payload", Record{Kind: KindSample}},
		{"two payloads", Record{Kind: KindAudit, Audit: &Audit{}, Update: &Update{}}},
		{"wrong payload", Record{Kind: KindAudit, Update: &Update{}}},
		{"unknown kind", Record{Kind: 99, Audit: &Audit{}}},
		{"long string", Record{Kind: KindAudit, Audit: &Audit{Detail: strings.Repeat("x", MaxStringLen+1)}}},
		{"too big", Record{Kind: KindSample, Sample: &Sample{Inputs: []TensorSample{{Data: make([]byte, MaxRecordSize)}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := AppendRecord(nil, &tt.r)
			if !errors.Is(err, ErrInvalidRecord) {
				t.Fatalf("got error %v, want ErrInvalidRecord", err)
			}
		})
	}
}

func encodeBatch(t testing.TB, h BatchHeader, seqs []uint64, recs []Record) []byte {
	h.Count = len(seqs)
	p := AppendBatchHeader(nil, h)
	for i, s := range seqs {
		body, err := AppendRecord(nil, &recs[i%len(recs)])
		require.NoError(t, err)
		p = AppendBatchEntry(p, s, body)
	}
	return p
}

func TestBatchRoundTrip(t *testing.T) {
	var drops DropCounts
	drops[DropEvicted] = 7
	drops[DropBackpressure] = 100
	seqs := []uint64{3, 4, 9, 1 << 40}
	p := encodeBatch(t, BatchHeader{Epoch: 42, Drops: drops}, seqs, testRecords())
	b, err := DecodeBatch(p)
	require.NoError(t, err)
	assert.Equal(t, uint8(Version), b.Version)
	assert.Equal(t, uint64(42), b.Epoch)
	assert.Equal(t, drops, b.Drops)
	assert.Equal(t, uint64(7), b.Drops.Sequenced())
	require.Len(t, b.Entries, len(seqs))
	for i, e := range b.Entries {
		assert.Equal(t, seqs[i], e.Seq)
		_, err := DecodeRecord(e.Body)
		assert.NoError(t, err)
	}
}

func TestDecodeBatchRejects(t *testing.T) {
	good := encodeBatch(t, BatchHeader{Epoch: 1}, []uint64{1, 2}, testRecords())
	tests := []struct {
		name string
		p    []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"magic", append([]byte("XX"), good[2:]...), ErrMalformed},
		{"version", append([]byte{'O', 'T', 9}, good[3:]...), ErrUnsupportedVersion},
		{"truncated", good[:len(good)-1], ErrMalformed},
		{"trailing", append(append([]byte(nil), good...), 0), ErrMalformed},
		{"falling seqs", encodeBatch(t, BatchHeader{}, []uint64{2, 1}, testRecords()), ErrMalformed},
		{"zero seq", encodeBatch(t, BatchHeader{}, []uint64{0}, testRecords()), ErrMalformed},
		{"huge count", append(AppendBatchHeader(nil, BatchHeader{Count: 1 << 40}), 1), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeBatch(tt.p)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got error %v, want %v", err, tt.want)
			}
		})
	}
}

// FuzzDecodeBatch feeds arbitrary payloads, as a controller receives them from
// any device, to the batch and record decoders: no panics, no huge
// allocations, and what decodes re-encodes to the same entries.
func FuzzDecodeBatch(f *testing.F) {
	f.Add(encodeBatch(f, BatchHeader{Epoch: 5}, []uint64{1, 2, 3, 4, 5, 6}, testRecords()))
	f.Add([]byte("OT\x01\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, p []byte) {
		b, err := DecodeBatch(p)
		if err != nil {
			return
		}
		h := b.BatchHeader
		again := AppendBatchHeader(nil, h)
		for _, e := range b.Entries {
			again = AppendBatchEntry(again, e.Seq, e.Body)
			_, _ = DecodeRecord(e.Body)
		}
		b2, err := DecodeBatch(again)
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
		if len(b2.Entries) != len(b.Entries) || b2.Epoch != b.Epoch || b2.Drops != b.Drops {
			t.Fatalf("re-encoded batch differs")
		}
	})
}

// FuzzDecodeRecord checks that a record that decodes encodes again and
// decodes to the same thing.
func FuzzDecodeRecord(f *testing.F) {
	for _, r := range testRecords() {
		body, err := AppendRecord(nil, &r)
		require.NoError(f, err)
		f.Add(body)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeRecord(body)
		if err != nil {
			return
		}
		if _, ok := kindNames[r.Kind]; !ok {
			return
		}
		again, err := AppendRecord(nil, &r)
		if err != nil {
			return // e.g. a string over the limit is decodable but not encodable
		}
		r2, err := DecodeRecord(again)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if r2.Kind != r.Kind || !r2.Time.Equal(r.Time) || r2.Model != r.Model {
			t.Fatalf("round trip changed the record header")
		}
	})
}

// TestAggregateFeaturesAppended: the features follow stream_dropped, so a
// decoder from before them reads everything it knew unchanged, and a
// record without features keeps the older layout byte for byte.
func TestAggregateFeaturesAppended(t *testing.T) {
	r := testRecords()[0]
	with, err := AppendRecord(nil, &r)
	require.NoError(t, err)
	feats := r.Aggregate.Features
	r.Aggregate.Features = nil
	without, err := AppendRecord(nil, &r)
	require.NoError(t, err)
	assert.Equal(t, without, with[:len(without)], "the features are appended, nothing before them moves")

	got, err := DecodeRecord(with)
	require.NoError(t, err)
	assert.Equal(t, feats, got.Aggregate.Features)
	got, err = DecodeRecord(without)
	require.NoError(t, err)
	assert.Nil(t, got.Aggregate.Features)
}

// TestAggregateShadowAppended: the shadow section follows the features (an
// empty feature list is written before it), so a decoder from before it
// reads everything it knew unchanged.
func TestAggregateShadowAppended(t *testing.T) {
	r := testRecords()[1]
	require.NotNil(t, r.Aggregate.Shadow)
	with, err := AppendRecord(nil, &r)
	require.NoError(t, err)
	sh := r.Aggregate.Shadow
	r.Aggregate.Shadow = nil
	without, err := AppendRecord(nil, &r)
	require.NoError(t, err)
	assert.Equal(t, without, with[:len(without)], "the shadow section is appended, nothing before it moves")
	assert.Equal(t, []byte{0, 1}, with[len(without):len(without)+2], "an empty feature count, then the presence flag")

	got, err := DecodeRecord(with)
	require.NoError(t, err)
	assert.Equal(t, sh, got.Aggregate.Shadow)
	got, err = DecodeRecord(without)
	require.NoError(t, err)
	assert.Nil(t, got.Aggregate.Shadow)
}
