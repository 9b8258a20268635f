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
}

// TestStreamTelemetry: a stream's inferences and drops reach the fleet as
// the model's aggregates (drops as errors coded stream_dropped) through the
// real queue, fleet link and Mosquitto; probation counts only inferences.
func TestStreamTelemetry(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	link, err := fleetlink.New(fleetlink.Options{Broker: mq.URL(), Fleet: "acme", Device: "gw-1"})
	require.NoError(t, err)
	q, err := telemetry.New(telemetry.Options{Path: filepath.Join(t.TempDir(), "telemetry.db"),
		Link: link, Topic: link.Topics().Events, AggregateInterval: 100 * time.Millisecond, SampleRate: -1})
	require.NoError(t, err)

	var mu sync.Mutex
	var aggs []protocol.Record
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mq.URL()).SetClientID("fleet"))
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	defer cl.Disconnect(100)
	tok = cl.Subscribe(link.Topics().Events, 1, func(_ mqtt.Client, m mqtt.Message) {
		b, err := protocol.DecodeBatch(m.Payload())
		if err != nil {
			t.Errorf("bad batch: %v", err)
			return
		}
		for _, e := range b.Entries {
			r, err := protocol.DecodeRecord(e.Body)
			if err == nil && r.Kind == protocol.KindAggregate {
				mu.Lock()
				aggs = append(aggs, r)
				mu.Unlock()
			}
		}
	})
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = link.Run(ctx) })
	wg.Go(func() { _ = q.Run(ctx) })
	defer func() {
		cancel()
		wg.Wait()
	}()

	traffic := updater.NewTrafficCounter()
	obs := streamTelemetry{traffic: traffic, q: q}
	model := catalog.Entry{Name: "hand", Version: 3, Digest: "sha256:abc"}
	obs.ObserveStream(stream.Observation{Stream: "cam", Model: model, Latency: time.Millisecond})
	for range 5 {
		obs.ObserveStream(stream.Observation{Stream: "cam", Model: model, Code: "dropped"})
	}
	obs.ObserveStream(stream.Observation{Stream: "cam", Code: "dropped"}) // no model served: not accounted

	var requests, errs, dropped uint64
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		requests, errs, dropped = 0, 0, 0
		for _, r := range aggs {
			if r.Model.Name != "hand" || r.Model.Version != "3" {
				continue
			}
			requests += r.Aggregate.Requests
			errs += r.Aggregate.Errors
			for _, c := range r.Aggregate.ErrorsByCode {
				if c.Code == "stream_dropped" {
					dropped += c.Count
				}
			}
		}
		return requests == 6
	}, 20*time.Second, 20*time.Millisecond, "aggregates: requests %d", requests)
	assert.Equal(t, uint64(5), errs)
	assert.Equal(t, uint64(5), dropped)
	assert.Equal(t, uint64(1), traffic.Traffic("hand", 3).Requests, "probation counts the inference, not the drops")
}
