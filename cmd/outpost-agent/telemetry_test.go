package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// allowAll lets every client connect and use every topic: a test broker.
type allowAll struct{ mochi.HookBase }

func (*allowAll) ID() string { return "allow-all" }

func (*allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (*allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (*allowAll) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// startBroker runs the embedded broker on a free loopback port and collects
// every record published on the fleet's events topics.
func startBroker(t *testing.T, fleet string) (url string, records func() []protocol.Record) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	srv := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, srv.AddHook(new(allowAll), nil))
	require.NoError(t, srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})))
	require.NoError(t, srv.Serve())
	t.Cleanup(func() { srv.Close() })

	var mu sync.Mutex
	var got []protocol.Record
	filter, err := protocol.FleetEventsFilter(fleet)
	require.NoError(t, err)
	require.NoError(t, srv.Subscribe(filter, 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		b, err := protocol.DecodeBatch(pk.Payload)
		if err != nil {
			t.Errorf("bad batch on %s: %v", pk.TopicName, err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range b.Entries {
			r, err := protocol.DecodeRecord(e.Body)
			if err != nil {
				t.Errorf("bad record %d: %v", e.Seq, err)
				continue
			}
			got = append(got, r)
		}
	}))
	return "tcp://" + addr, func() []protocol.Record {
		mu.Lock()
		defer mu.Unlock()
		return append([]protocol.Record(nil), got...)
	}
}

// The daemon feeds every answered request into telemetry, which reaches the
// fleet's broker: aggregates with the right counts, samples with the
// request's tensors, device health, each naming the model's digest.
func TestServeSendsTelemetry(t *testing.T) {
	b := build(t)
	url, records := startBroker(t, "acme")
	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, `
data_dir: %s
models:
  - {name: face, path: %s}
fleet: {broker: %q, name: acme, device: gw-1}
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
	require.Eventually(t, func() bool {
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
	}, 30*time.Second, 100*time.Millisecond, "got requests=%d errors=%d samples=%d health=%d", requests, errors, samples, health)
	assert.Equal(t, bad, errors)

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
