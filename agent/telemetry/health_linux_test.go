package telemetry

import (
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHealthReader(t *testing.T) {
	root := t.TempDir()
	write := func(name, text string) {
		p := filepath.Join(root, name)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(text), 0o644))
	}
	write("proc/stat", "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
	write("proc/loadavg", "0.75 0.50 0.25 1/100 1234\n")
	write("proc/meminfo", "MemTotal:        1000 kB\nMemFree:          100 kB\nMemAvailable:     400 kB\n")
	write("proc/uptime", "3600.50 7000.00\n")
	write("sys/class/thermal/thermal_zone0/temp", "41000\n")
	write("sys/class/thermal/thermal_zone1/temp", "55500\n")
	h := newHealthReader(root)
	h.procRoot, h.sysRoot = filepath.Join(root, "proc"), filepath.Join(root, "sys")

	first := h.read()
	assert.Equal(t, 0.0, first.CPUPercent, "no rate from one sample")
	// 100 more busy and 100 more idle jiffies: 50%.
	write("proc/stat", "cpu  150 0 150 900 0 0 0 0 0 0\n")
	got := h.read()
	assert.InDelta(t, 50, got.CPUPercent, 1e-9)
	assert.Equal(t, 0.75, got.Load1)
	assert.Equal(t, uint64(1000*1024), got.MemTotalBytes)
	assert.Equal(t, uint64(600*1024), got.MemUsedBytes)
	assert.Equal(t, 3600*time.Second+500*time.Millisecond, got.Uptime)
	assert.Equal(t, 55.5, got.TemperatureC, "hottest zone")
	assert.Greater(t, got.DiskTotalBytes, uint64(0))

	// A board without sensors says so with NaN, not 0 degrees.
	require.NoError(t, os.RemoveAll(filepath.Join(root, "sys")))
	assert.True(t, math.IsNaN(h.read().TemperatureC))
}
