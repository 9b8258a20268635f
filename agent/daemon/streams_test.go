package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"image"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/config"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/agent/stream"
	"github.com/outpost-edge/outpost/agent/telemetry"
	"github.com/outpost-edge/outpost/agent/updater"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startAgent runs an agent on cfg until the test ends, and checks that it stops
// cleanly then.
func startAgent(t *testing.T, cfg config.Config) *Agent {
	t.Helper()
	a, err := New(cfg, nil)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop")
		}
	})
	return a
}

// TestAgentStream runs the agent with a configured stream on a real
// Mosquitto: a PNG frame published on the topic comes back as a result
// from the served model, and /metrics counts it.
func TestAgentStream(t *testing.T) {
	dir := os.Getenv("OUTPOST_MODELS")
	if dir == "" {
		dir = filepath.Join("..", "..", ".deps", "models")
	}
	model, err := filepath.Abs(filepath.Join(dir, "hand_landmark_lite.tflite"))
	require.NoError(t, err)
	mq := testbroker.StartMosquitto(t, "")
	cfg := config.Config{
		Listen:  "127.0.0.1:0",
		DataDir: t.TempDir(),
		Workers: 1,
		Models:  []config.Model{{Name: "hand", Path: model}},
		Streams: []config.Stream{{Name: "cam", Broker: mq.URL(), Topic: "cam/frames", Decoder: "image",
			Model: "hand", ResultTopic: "cam/hands"}},
	}
	a := startAgent(t, cfg)
	base := "http://" + a.Addr()
	metric := func(want string) bool {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return bytes.Contains(b, []byte(want))
	}
	require.Eventually(t, func() bool { return metric(`outpost_stream_connected{stream="cam"} 1`) },
		20*time.Second, 20*time.Millisecond, "the stream subscribes once the model is loaded")

	results := make(chan []byte, 4)
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mq.URL()).SetClientID("test"))
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	defer cl.Disconnect(100)
	tok = cl.Subscribe("cam/hands", 1, func(_ mqtt.Client, m mqtt.Message) { results <- m.Payload() })
	require.True(t, tok.WaitTimeout(10*time.Second))
	var frame bytes.Buffer
	require.NoError(t, png.Encode(&frame, image.NewGray(image.Rect(0, 0, 32, 24))))
	tok = cl.Publish("cam/frames", 1, false, frame.Bytes())
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())

	select {
	case b := <-results:
		var r struct {
			ModelName    string `json:"model_name"`
			ModelVersion string `json:"model_version"`
			ID           string `json:"id"`
			Parameters   struct {
				Digest string `json:"model_digest"`
			} `json:"parameters"`
		}
		require.NoError(t, json.Unmarshal(b, &r), "%s", b)
		assert.Equal(t, "hand", r.ModelName)
		assert.Equal(t, "1", r.ModelVersion)
		assert.Equal(t, "1", r.ID)
		assert.Contains(t, r.Parameters.Digest, "sha256:")
	case <-time.After(20 * time.Second):
		t.Fatal("no result within 20 s")
	}
	require.Eventually(t, func() bool { return metric(`outpost_stream_results_total{stream="cam"} 1`) },
		10*time.Second, 20*time.Millisecond)
	assert.True(t, metric(`outpost_stream_dropped_total{reason="queue_full",stream="cam"} 0`))
	assert.True(t, metric(`outpost_stream_republished_total{stream="cam"} 0`))
	assert.True(t, metric(`outpost_stream_publish_errors_total{stream="cam"} 0`))
}

// TestStreamTelemetry: through the real queue, fleet link and Mosquitto,
// a stream's inferences reach the fleet as the model's requests and errors,
// and its drops in the aggregate's own StreamDropped field (never as errors);
// probation counts only inferences; a drop while no model serves is not
// accounted.
func TestStreamTelemetry(t *testing.T) {
	q, aggs := uplink(t, 100*time.Millisecond)

	traffic := updater.NewTrafficCounter()
	obs := streamTelemetry{traffic: traffic, q: q}
	model := catalog.Entry{Name: "hand", Version: 3, Digest: "sha256:abc"}
	obs.ObserveStream(stream.Observation{Stream: "cam", Model: model, Latency: time.Millisecond})
	obs.ObserveStream(stream.Observation{Stream: "cam", Model: model, Latency: time.Millisecond, Code: "bad_input"})
	obs.ObserveStream(stream.Observation{Stream: "cam", Model: model, Dropped: 2})
	obs.ObserveStream(stream.Observation{Stream: "cam", Model: model, Dropped: 3})
	obs.ObserveStream(stream.Observation{Stream: "cam", Dropped: 1}) // no model served: not accounted

	var got aggSum
	require.Eventually(t, func() bool {
		got = aggs.sum("hand", "3")
		return got.requests == 2 && got.dropped == 5
	}, 20*time.Second, 20*time.Millisecond, "aggregates: %+v", &got)
	assert.Equal(t, aggSum{requests: 2, errors: 1, dropped: 5, byCode: map[string]uint64{"bad_input": 1}}, got)
	assert.Equal(t, uint64(2), traffic.Traffic("hand", 3).Requests, "probation counts the inferences, not the drops")
}

// TestAgentStreamDropsTelemetry runs the agent with a fleet and a stream on
// a real Mosquitto, and watches the events topic as the controller would:
// messages over the stream's size limit are dropped and arrive as the
// model's StreamDropped, apart from its requests and errors.
func TestAgentStreamDropsTelemetry(t *testing.T) {
	dir := os.Getenv("OUTPOST_MODELS")
	if dir == "" {
		dir = filepath.Join("..", "..", ".deps", "models")
	}
	model, err := filepath.Abs(filepath.Join(dir, "hand_landmark_lite.tflite"))
	require.NoError(t, err)
	mq := testbroker.StartMosquitto(t, "")
	topics, err := protocol.DeviceTopics("acme", "gw-1")
	require.NoError(t, err)
	aggs := subscribeAggregates(t, mq.URL(), topics.Events)
	cfg := config.Config{
		Listen:    "127.0.0.1:0",
		DataDir:   t.TempDir(),
		Workers:   1,
		Models:    []config.Model{{Name: "hand", Path: model}},
		Fleet:     config.Fleet{Broker: mq.URL(), Name: "acme", Device: "gw-1"},
		Telemetry: config.Telemetry{AggregateInterval: 100 * time.Millisecond, SampleRate: 1},
		Streams: []config.Stream{{Name: "cam", Broker: mq.URL(), Topic: "cam/frames", Decoder: "image",
			Model: "hand", ResultTopic: "cam/hands", MaxMessageBytes: 4096}},
	}
	a := startAgent(t, cfg)

	results := make(chan []byte, 8)
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mq.URL()).SetClientID("camera"))
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	defer cl.Disconnect(100)
	tok = cl.Subscribe("cam/hands", 1, func(_ mqtt.Client, m mqtt.Message) { results <- m.Payload() })
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	require.Eventually(t, func() bool { return a.streams[0].Stats().Connected },
		20*time.Second, 20*time.Millisecond, "the stream subscribes once the model is loaded")

	var frame bytes.Buffer
	require.NoError(t, png.Encode(&frame, image.NewGray(image.Rect(0, 0, 32, 24))))
	require.Less(t, frame.Len(), 4096)
	big := make([]byte, 5000)
	for _, p := range [][]byte{frame.Bytes(), big, []byte("not an image"), big, big} {
		tok = cl.Publish("cam/frames", 1, false, p)
		require.True(t, tok.WaitTimeout(10*time.Second))
		require.NoError(t, tok.Error())
	}
	for i := range 2 { // the frame's result and the bad message's error
		select {
		case <-results:
		case <-time.After(20 * time.Second):
			t.Fatalf("result %d did not come within 20 s", i+1)
		}
	}

	var got aggSum
	require.Eventually(t, func() bool {
		got = aggs.sum("hand", "1")
		return got.requests == 2 && got.dropped == 3
	}, 20*time.Second, 20*time.Millisecond, "aggregates: %+v", &got)
	assert.Equal(t, uint64(1), got.sampled, "the frame's inputs reach the drift statistics (every request sampled)")
	got.sampled = 0
	assert.Equal(t, aggSum{requests: 2, errors: 1, dropped: 3, byCode: map[string]uint64{"bad_input": 1}}, got)
	assert.Equal(t, uint64(3), a.streams[0].Stats().Dropped["too_large"])
}

// aggSum adds up a model's aggregates.
type aggSum struct {
	requests, errors, dropped uint64
	byCode                    map[string]uint64
	// sampled counts the input statistics' values over 224*224*3, the
	// hand model's input: the requests whose inputs were summarised.
	sampled uint64
}

// aggregates collects the aggregate records a subscriber on the events
// topic receives.
type aggregates struct {
	mu   sync.Mutex
	recs []protocol.Record
}

func (a *aggregates) sum(name, version string) aggSum {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := aggSum{byCode: map[string]uint64{}}
	for _, r := range a.recs {
		if r.Model.Name != name || r.Model.Version != version {
			continue
		}
		s.requests += r.Aggregate.Requests
		s.errors += r.Aggregate.Errors
		s.dropped += r.Aggregate.StreamDropped
		for _, c := range r.Aggregate.ErrorsByCode {
			s.byCode[c.Code] += c.Count
		}
		for _, in := range r.Aggregate.Inputs {
			s.sampled += in.Count / (224 * 224 * 3)
		}
	}
	return s
}

// subscribeAggregates subscribes to topic on the broker at url, as the
// controller does, and decodes the batches it receives.
// uplink runs a device's telemetry path on a real Mosquitto: a fleet link
// and a queue making aggregates every interval, until the test ends; aggs
// collects what reaches the fleet's side of the broker.
func uplink(t *testing.T, every time.Duration) (q *telemetry.Queue, aggs *aggregates) {
	t.Helper()
	mq := testbroker.StartMosquitto(t, "")
	link, err := fleetlink.New(fleetlink.Options{Broker: mq.URL(), Fleet: "acme", Device: "gw-1"})
	require.NoError(t, err)
	q, err = telemetry.New(telemetry.Options{Path: filepath.Join(t.TempDir(), "telemetry.db"),
		Link: link, Topic: link.Topics().Events, AggregateInterval: every, SampleRate: -1})
	require.NoError(t, err)
	aggs = subscribeAggregates(t, mq.URL(), link.Topics().Events)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = link.Run(ctx) })
	wg.Go(func() { _ = q.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return q, aggs
}

func subscribeAggregates(t *testing.T, url, topic string) *aggregates {
	t.Helper()
	aggs := &aggregates{}
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("fleet"))
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { cl.Disconnect(100) })
	tok = cl.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		b, err := protocol.DecodeBatch(m.Payload())
		if err != nil {
			t.Errorf("bad batch: %v", err)
			return
		}
		for _, e := range b.Entries {
			r, err := protocol.DecodeRecord(e.Body)
			if err == nil && r.Kind == protocol.KindAggregate {
				aggs.mu.Lock()
				aggs.recs = append(aggs.recs, r)
				aggs.mu.Unlock()
			}
		}
	})
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	return aggs
}
