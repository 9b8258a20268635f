package telemetry

import (
	"bufio"
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// healthReader samples the device from /proc, /sys and statfs. CPU use is the
// share of non-idle time since the previous sample. Not safe for concurrent
// use; the writer goroutine owns it.
type healthReader struct {
	dir                 string // the disk to report: the queue's directory
	procRoot, sysRoot   string // "/proc" and "/sys", replaced in tests
	prevIdle, prevTotal uint64
}

func newHealthReader(dir string) *healthReader {
	return &healthReader{dir: dir, procRoot: "/proc", sysRoot: "/sys"}
}

func (h *healthReader) read() protocol.Health {
	hl := protocol.Health{TemperatureC: math.NaN()}
	if idle, total, ok := h.cpuTimes(); ok {
		if total > h.prevTotal && h.prevTotal != 0 {
			busy := float64((total - h.prevTotal) - (idle - h.prevIdle))
			hl.CPUPercent = 100 * busy / float64(total-h.prevTotal)
		}
		h.prevIdle, h.prevTotal = idle, total
	}
	if b, err := os.ReadFile(filepath.Join(h.procRoot, "loadavg")); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			hl.Load1, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	if b, err := os.ReadFile(filepath.Join(h.procRoot, "meminfo")); err == nil {
		mem := map[string]uint64{}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) >= 2 {
				v, _ := strconv.ParseUint(f[1], 10, 64)
				mem[strings.TrimSuffix(f[0], ":")] = v * 1024
			}
		}
		hl.MemTotalBytes = mem["MemTotal"]
		if avail, ok := mem["MemAvailable"]; ok && avail <= hl.MemTotalBytes {
			hl.MemUsedBytes = hl.MemTotalBytes - avail
		}
	}
	if b, err := os.ReadFile(filepath.Join(h.procRoot, "uptime")); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			if s, err := strconv.ParseFloat(f[0], 64); err == nil {
				hl.Uptime = time.Duration(s * float64(time.Second))
			}
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(h.dir, &st); err == nil {
		hl.DiskTotalBytes = st.Blocks * uint64(st.Bsize)
		hl.DiskUsedBytes = (st.Blocks - st.Bfree) * uint64(st.Bsize)
	}
	// The hottest thermal zone: boards expose one per sensor, in millidegrees.
	zones, _ := filepath.Glob(filepath.Join(h.sysRoot, "class/thermal/thermal_zone*/temp"))
	for _, z := range zones {
		b, err := os.ReadFile(z)
		if err != nil {
			continue
		}
		if m, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
			c := float64(m) / 1000
			if math.IsNaN(hl.TemperatureC) || c > hl.TemperatureC {
				hl.TemperatureC = c
			}
		}
	}
	return hl
}

// cpuTimes returns idle (idle + iowait) and total jiffies from /proc/stat.
func (h *healthReader) cpuTimes() (idle, total uint64, ok bool) {
	f, err := os.Open(filepath.Join(h.procRoot, "stat"))
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0, false
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 5 || fields[0] != "cpu" {
		return 0, 0, false
	}
	// user nice system idle iowait irq softirq steal; guest time is already
	// in user.
	for i, s := range fields[1:min(len(fields), 9)] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	return idle, total, true
}
