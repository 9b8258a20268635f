package stream

import (
	"context"
	"encoding/json"
	"image/color"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	hand = "hand_landmark_lite.tflite"         // image in [1,224,224,3] FP32, small outputs
	face = "face_detection_short_range.tflite" // image in [1,128,128,3] FP32
)

func modelPath(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("OUTPOST_MODELS")
	if dir == "" {
		dir = filepath.Join("..", "..", ".deps", "models")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test model missing (run `make setup`): %v", err)
	}
	return p
}

// registry serves file as "m" version 1, with one interpreter (so a
// stream's capacity is one invoke at a time, as on a small board).
func registry(t testing.TB, file string) (*serving.Registry, []byte) {
	t.Helper()
	reg := serving.New(serving.Options{Runtime: runtime.Options{Workers: 1, Threads: 1}})
	t.Cleanup(func() { reg.Close() })
	data, err := os.ReadFile(modelPath(t, file))
	require.NoError(t, err)
	_, err = reg.Load(context.Background(), "m", 1, data, "test")
	require.NoError(t, err)
	return reg, data
}

// result is a stream result as a subscriber reads it.
type result struct {
	ModelName    string `json:"model_name"`
	ModelVersion string `json:"model_version"`
	ID           string `json:"id"`
	Error        string `json:"error"`
	Parameters   struct {
		Digest string `json:"model_digest"`
	} `json:"parameters"`
	Outputs []struct {
		Name  string    `json:"name"`
		Shape []int     `json:"shape"`
		Data  []float64 `json:"data"`
	} `json:"outputs"`
}

// seq is the message number a result answers.
func (r result) seq(t testing.TB) uint64 {
	s, _, _ := strings.Cut(r.ID, ":")
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		t.Errorf("result id %q: %v", r.ID, err)
	}
	return n
}

// collector subscribes to a result topic and keeps what arrives.
type sink struct {
	mu  sync.Mutex
	got []result
	bad []string
	ch  chan struct{} // poked on every result
}

func collect(t testing.TB, broker, topic string) *sink {
	t.Helper()
	c := &sink{ch: make(chan struct{}, 1)}
	cl := client(t, broker, "results-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	tok := cl.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		var r result
		c.mu.Lock()
		if err := json.Unmarshal(m.Payload(), &r); err != nil {
			c.bad = append(c.bad, string(m.Payload()))
		} else {
			c.got = append(c.got, r)
		}
		c.mu.Unlock()
		select {
		case c.ch <- struct{}{}:
		default:
		}
	})
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	return c
}

func (c *sink) results() []result {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]result(nil), c.got...)
}

// waitFor waits until cond holds on the results, or fails after d.
func (c *sink) waitFor(t testing.TB, d time.Duration, what string, cond func([]result) bool) []result {
	t.Helper()
	deadline := time.After(d)
	for {
		rs := c.results()
		if cond(rs) {
			return rs
		}
		select {
		case <-c.ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; have %d results", what, len(rs))
		}
	}
}

func client(t testing.TB, broker, id string) mqtt.Client {
	t.Helper()
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).
		SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(100 * time.Millisecond))
	tok := cl.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	t.Cleanup(func() { cl.Disconnect(100) })
	return cl
}

func publish(t testing.TB, cl mqtt.Client, topic string, qos byte, payload []byte) {
	t.Helper()
	tok := cl.Publish(topic, qos, false, payload)
	require.True(t, tok.WaitTimeout(10*time.Second), "publish timed out")
	require.NoError(t, tok.Error())
}

// run starts s and stops it (waiting for Run to return) at test end.
func run(t testing.TB, s *Stream) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			assert.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Error("stream did not stop within 10 s")
		}
	})
}

// waitConnected waits until the stream has subscribed (its connection is
// up and the subscription has had a round trip to the broker).
func waitConnected(t testing.TB, s *Stream) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !s.connected.Load() {
		if time.Now().After(deadline) {
			t.Fatal("stream did not connect within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func frame(t testing.TB, i int) []byte {
	return encodeJPEG(t, uniform(64, 48, color.RGBA{uint8(i * 7), uint8(255 - i), 128, 255}))
}

func TestStreamImageResults(t *testing.T) {
	mq := testbroker.StartMosquitto(t, "")
	reg, data := registry(t, hand)
	s, err := New(Options{Name: "cam", Broker: mq.URL(), Topic: "cam/frames", Decoder: "image",
		Model: "m", ResultTopic: "cam/results", Backend: reg, QoS: 1, Queue: 64})
	require.NoError(t, err)
	res := collect(t, mq.URL(), "cam/results")
	run(t, s)
	waitConnected(t, s)
	pub := client(t, mq.URL(), "camera")
	for i := range 5 {
		publish(t, pub, "cam/frames", 1, frame(t, i))
	}
	publish(t, pub, "cam/frames", 1, []byte("GIF89a not a frame"))
	publish(t, pub, "cam/frames", 1, frame(t, 9))
	rs := res.waitFor(t, 30*time.Second, "7 results", func(rs []result) bool { return len(rs) >= 7 })
	require.Len(t, rs, 7)
	for i, r := range rs {
		assert.Equal(t, strconv.Itoa(i+1), r.ID, "results come in message order")
		if i == 5 {
			assert.Contains(t, r.Error, "not a JPEG or PNG frame")
			continue
		}
		require.Empty(t, r.Error)
		assert.Equal(t, "m", r.ModelName)
		assert.Equal(t, "1", r.ModelVersion)
		assert.Equal(t, serving.Digest(data), r.Parameters.Digest)
		require.NotEmpty(t, r.Outputs)
		assert.NotEmpty(t, r.Outputs[0].Data)
	}
	st := s.Stats()
	assert.Equal(t, uint64(7), st.Received)
	assert.Equal(t, uint64(6), st.Results)
	assert.Equal(t, uint64(1), st.Errors["bad_input"])
}
