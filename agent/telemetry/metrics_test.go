package telemetry

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

func TestCollector(t *testing.T) {
	q := startQueue(t, Options{Path: filepath.Join(t.TempDir(), "q.db"), Buffer: 1})
	for i := range 3 {
		_, err := q.Emit(context.Background(), audit(i))
		require.NoError(t, err)
	}
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(q.Collector()))
	mfs, err := reg.Gather()
	require.NoError(t, err)
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "/" + l.GetValue()
			}
			if m.Gauge != nil {
				got[key] = m.GetGauge().GetValue()
			} else {
				got[key] = m.GetCounter().GetValue()
			}
		}
	}
	for key, want := range map[string]float64{
		"outpost_telemetry_queue_records/critical":        3,
		"outpost_telemetry_queue_records/low":             0,
		"outpost_telemetry_last_sequence":                 3,
		"outpost_telemetry_dropped_records_total/evicted": 0,
		"outpost_telemetry_published_records_total":       0,
	} {
		v, ok := got[key]
		require.True(t, ok, "metric %s missing", key)
		require.Equal(t, want, v, "metric %s", key)
	}
	require.Greater(t, got["outpost_telemetry_queue_bytes"], 0.0)
}
