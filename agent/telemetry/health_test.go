package telemetry

import (
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestHealthRecordNamesModel: every health record names the model served
// when it was taken, asked at that moment (a swap in between shows).
func TestHealthRecordNamesModel(t *testing.T) {
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	path := filepath.Join(t.TempDir(), "q.db")
	v1 := protocol.ModelRef{Name: "face", Version: "1", Digest: "sha256:01"}
	v2 := protocol.ModelRef{Name: "face", Version: "2", Digest: "sha256:02"}
	var serving atomic.Pointer[protocol.ModelRef]
	serving.Store(&v1)
	q := startQueue(t, Options{Path: path, Clock: clk, HealthInterval: time.Minute, AggregateInterval: time.Hour,
		CurrentModel: func() protocol.ModelRef { return *serving.Load() }})
	health := func() int { return q.Stats().DepthByPriority[protocol.PriorityLow] }
	// Advance until the writer, which may not have set its timer yet, fires.
	waitFor(t, "a health record", 5*time.Second, func() bool {
		clk.Advance(time.Minute)
		time.Sleep(time.Millisecond)
		return health() >= 1
	})
	serving.Store(&v2)
	n := health()
	waitFor(t, "another health record", 5*time.Second, func() bool {
		clk.Advance(time.Minute)
		time.Sleep(time.Millisecond)
		return health() > n
	})
	q.stop()

	recs := readRecords(t, path, protocol.PriorityLow)
	require.GreaterOrEqual(t, len(recs), 2)
	for _, r := range recs {
		require.Equal(t, protocol.KindHealth, r.Kind)
		assert.NotEmpty(t, r.Model.Digest, "a health record without its model")
	}
	assert.Equal(t, v1, recs[0].Model)
	assert.Equal(t, v2, recs[len(recs)-1].Model)
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, r := range recs {
		// Stamped by the injected clock, not the machine's.
		assert.True(t, r.Time.After(start) && !r.Time.After(clk.Now()), "health record at %v", r.Time)
	}
}
