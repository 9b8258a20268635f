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
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/agent/config"
	"github.com/outpost-edge/outpost/internal/testbroker"
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
