package main

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fleetBroker is the embedded broker on a free loopback port, collecting
// what devices of one fleet publish: telemetry records and status.
type fleetBroker struct {
	url string

	mu     sync.Mutex // guards the fields below
	got    []protocol.Record
	seen   []arrival
	drops  map[uint64]protocol.DropCounts
	status map[string]*protocol.Status // by device, the latest
}

// arrival is one record as the broker saw it.
type arrival struct{ epoch, seq uint64 }

func startBroker(t *testing.T, fleet string) *fleetBroker {
	t.Helper()
	addr := testbroker.FreeAddr(t)
	srv, _ := testbroker.Start(t, addr)

	fb := &fleetBroker{url: "tcp://" + addr, drops: map[uint64]protocol.DropCounts{}, status: map[string]*protocol.Status{}}
	filter, err := protocol.FleetEventsFilter(fleet)
	require.NoError(t, err)
	require.NoError(t, srv.Subscribe(filter, 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		b, err := protocol.DecodeBatch(pk.Payload)
		if err != nil {
			t.Errorf("bad batch on %s: %v", pk.TopicName, err)
			return
		}
		fb.mu.Lock()
		defer fb.mu.Unlock()
		d := fb.drops[b.Epoch]
		for i, c := range b.Drops {
			d[i] = max(d[i], c)
		}
		fb.drops[b.Epoch] = d
		for _, e := range b.Entries {
			fb.seen = append(fb.seen, arrival{b.Epoch, e.Seq})
			r, err := protocol.DecodeRecord(e.Body)
			if err != nil {
				t.Errorf("bad record %d: %v", e.Seq, err)
				continue
			}
			fb.got = append(fb.got, r)
		}
	}))
	require.NoError(t, srv.Subscribe("outpost/v1/"+fleet+"/+/status", 2, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		st, err := protocol.ParseStatus(pk.Payload)
		if err != nil {
			t.Errorf("bad status on %s: %v", pk.TopicName, err)
			return
		}
		fb.mu.Lock()
		defer fb.mu.Unlock()
		fb.status[st.Device] = st
	}))
	return fb
}

func (fb *fleetBroker) records() []protocol.Record {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return append([]protocol.Record(nil), fb.got...)
}

// arrivals returns every record's (epoch, seq) as it arrived and the highest
// drop counters seen per epoch.
func (fb *fleetBroker) arrivals() ([]arrival, map[uint64]protocol.DropCounts) {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return append([]arrival(nil), fb.seen...), maps.Clone(fb.drops)
}

func (fb *fleetBroker) deviceStatus(device string) *protocol.Status {
	fb.mu.Lock()
	defer fb.mu.Unlock()
	return fb.status[device]
}

// The daemon feeds every answered request into telemetry, which reaches the
// fleet's broker: aggregates with the right counts, samples with the
// request's tensors, device health, each naming the model's digest.
func TestServeSendsTelemetry(t *testing.T) {
	b := build(t)
	fb := startBroker(t, "acme")
	url, records := fb.url, fb.records
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, `
data_dir: %s
models:
  - {name: face, path: %s}
fleet: {broker: %q, name: acme, device: gw-1, labels: {site: north}, status_interval: 200ms}
telemetry: {sample_rate: 1, aggregate_interval: 200ms, health_interval: 200ms}
`, filepath.Join(dir, "data"), testModel(t, "face_detection_short_range.tflite"), url), 0o644))
	s := startServe(t, b.agent, "--config", cfg)

	var meta struct {
		Parameters map[string]any `json:"parameters"`
	}
	require.Equal(t, 200, getJSON(t, s.url+"/v2/models/face", &meta))
	digest := meta.Parameters["model_digest"]

	body := `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"data":[` +
		strings.Repeat("0.25,", 128*128*3-1) + `0.25]}]}`
	const good, bad = 4, 2
	for range good {
		resp, err := http.Post(s.url+"/v2/models/face/infer", "application/json", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 200, resp.StatusCode)
	}
	for range bad {
		resp, err := http.Post(s.url+"/v2/models/face/infer", "application/json", strings.NewReader(`{"inputs":[]}`))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 400, resp.StatusCode)
	}

	var requests, errors, samples, health int
	pollEvery(t, 100*time.Millisecond, func() bool {
		requests, errors, samples, health = 0, 0, 0, 0
		for _, r := range records() {
			switch r.Kind {
			case protocol.KindAggregate:
				assert.Equal(t, "face", r.Model.Name)
				assert.Equal(t, digest, r.Model.Digest)
				requests += int(r.Aggregate.Requests)
				errors += int(r.Aggregate.Errors)
			case protocol.KindSample:
				assert.Equal(t, digest, r.Model.Digest)
				if assert.Len(t, r.Sample.Inputs, 1) {
					in := r.Sample.Inputs[0]
					assert.Equal(t, "input", in.Name)
					assert.Equal(t, []int64{1, 128, 128, 3}, in.Shape)
					assert.True(t, in.Truncated, "a 192 KiB input is cut short")
				}
				assert.Len(t, r.Sample.Outputs, 2)
				samples++
			case protocol.KindHealth:
				health++
			}
		}
		return requests == good+bad && samples == good && health > 0
	}, 30*time.Second, fmt.Sprintf("got requests=%d errors=%d samples=%d health=%d", requests, errors, samples, health))
	assert.Equal(t, bad, errors)

	// The retained status names the device, its labels and what it serves,
	// and its counters move with the traffic.
	require.Eventually(t, func() bool {
		st := fb.deviceStatus("gw-1")
		return st != nil && st.Health.Requests == good+bad
	}, 30*time.Second, 100*time.Millisecond, "no status with the request counts")
	st := fb.deviceStatus("gw-1")
	assert.Equal(t, map[string]string{"site": "north"}, st.Labels)
	if assert.Len(t, st.Models, 1) {
		assert.Equal(t, protocol.ModelStatus{Name: "face", Version: 1, Digest: digest.(string)}, st.Models[0])
	}
	assert.Equal(t, uint64(bad), st.Health.Errors)
	assert.Equal(t, protocol.HealthOK, st.Health.Status)

	// The queue's metrics are served with the API's.
	resp, err := http.Get(s.url + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	m, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Contains(t, string(m), "outpost_telemetry_queue_records")

	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-s.exited:
		assert.NoError(t, s.err)
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

// The real agent, SIGKILLed again and again while it serves, records and
// sends telemetry (and while it drains a backlog built with the broker out
// of reach), loses nothing it kept: when a last run has drained, the broker
// has seen every sequence number from 1 up, in one epoch (no kill corrupted
// the queue file), with gaps only where drops were counted.
func TestServeTelemetrySurvivesSIGKILL(t *testing.T) {
	b := build(t)
	fb := startBroker(t, "acme")
	url, arrivals := fb.url, fb.arrivals
	dir := t.TempDir()
	model := testModel(t, "face_detection_short_range.tflite")
	config := func(name, broker string) string {
		p := filepath.Join(dir, name+".yaml")
		require.NoError(t, os.WriteFile(p, fmt.Appendf(nil, `
data_dir: %s
models: [{name: face, path: %s}]
fleet: {broker: %q, name: acme, device: gw-crash}
telemetry: {sample_rate: 1, aggregate_interval: 50ms, health_interval: 50ms}
`, filepath.Join(dir, "data"), model, broker), 0o644))
		return p
	}
	up, down := config("up", url), config("down", "tcp://127.0.0.1:1")
	body := `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"data":[` +
		strings.Repeat("0.5,", 128*128*3-1) + `0.5]}]}`
	load := func(s *serving, d time.Duration) {
		var wg sync.WaitGroup
		stop := time.Now().Add(d)
		for range 2 {
			wg.Go(func() {
				for time.Now().Before(stop) {
					resp, err := http.Post(s.url+"/v2/models/face/infer", "application/json", strings.NewReader(body))
					if err != nil {
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		}
		time.Sleep(d)
		require.NoError(t, s.cmd.Process.Kill()) // mid-load, mid-commit
		<-s.exited
		wg.Wait()
	}
	loops := 2
	if testing.Short() {
		loops = 1
	}
	for i := range loops {
		load(startServe(t, b.agent, "--config", up), time.Duration(300+100*i)*time.Millisecond)
		load(startServe(t, b.agent, "--config", down), 400*time.Millisecond) // a backlog
		s := startServe(t, b.agent, "--config", up)                          // drains it...
		time.Sleep(time.Duration(50+100*i) * time.Millisecond)
		require.NoError(t, s.cmd.Process.Kill()) // ...and dies amid it
		<-s.exited
	}
	// A last run drains everything kept so far (and goes on recording).
	s := startServe(t, b.agent, "--config", up)
	var kept uint64
	pollEvery(t, 20*time.Millisecond, func() bool {
		kept = metricValue(t, s.url, "outpost_telemetry_last_sequence")
		return kept > 0 // the queue file is open
	}, 30*time.Second, "the telemetry queue never opened")
	var epoch, missing, sequenced uint64
	var got []arrival
	pollEvery(t, 100*time.Millisecond, func() bool {
		var drops map[uint64]protocol.DropCounts
		got, drops = arrivals()
		epochs := map[uint64]bool{}
		seen := map[uint64]bool{}
		for _, a := range got {
			epochs[a.epoch] = true
			seen[a.seq] = true
			epoch = a.epoch
		}
		require.Len(t, epochs, 1, "one queue file across all kills")
		missing = 0
		for q := uint64(1); q <= kept; q++ {
			if !seen[q] {
				missing++
			}
		}
		sequenced = drops[epoch].Sequenced()
		return missing == sequenced
	}, 60*time.Second, "records kept before the last start never arrived")
	assert.Equal(t, sequenced, missing, "sequence gaps must equal the sequenced drops counted")
	last := kept
	assert.Greater(t, last, uint64(20), "enough traffic to mean something")
	t.Logf("%d records kept and delivered over %d kills (%d arrivals in all), %d sequenced drops",
		kept, 3*loops, len(got), sequenced)
}

// metricValue reads one unlabelled series from the agent's /metrics.
func metricValue(t *testing.T, base, name string) uint64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	m, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	for line := range strings.Lines(string(m)) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			require.NoError(t, err, line)
			return uint64(f)
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}
