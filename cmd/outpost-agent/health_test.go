package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The real agent's health records, as a plain MQTT subscriber on a real
// Mosquitto sees them, name the model the device serves: its name, version
// and digest, the ones the API reports. The agent's client id is its device
// id: a client that takes that id over is dropped when the agent comes back.
func TestServeHealthNamesServingModel(t *testing.T) {
	b := build(t)
	mq := testbroker.StartMosquitto(t, "")
	topics, err := protocol.DeviceTopics("acme", "gw-health")
	require.NoError(t, err)

	var mu sync.Mutex // guards health, bad
	var health []protocol.Record
	var bad []error
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mq.URL()).SetClientID("watcher-health"))
	tok := sub.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second) && tok.Error() == nil, "connect: %v", tok.Error())
	defer sub.Disconnect(100)
	tok = sub.Subscribe(topics.Events, 1, func(_ mqtt.Client, m mqtt.Message) {
		batch, err := protocol.DecodeBatch(m.Payload())
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			bad = append(bad, err)
			return
		}
		for _, e := range batch.Entries {
			r, err := protocol.DecodeRecord(e.Body)
			if err != nil {
				bad = append(bad, err)
				continue
			}
			if r.Kind == protocol.KindHealth {
				health = append(health, r)
			}
		}
	})
	require.True(t, tok.WaitTimeout(10*time.Second) && tok.Error() == nil, "subscribe: %v", tok.Error())

	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, `
data_dir: %s
models:
  - {name: face, path: %s}
fleet: {broker: %q, name: acme, device: gw-health}
telemetry: {aggregate_interval: 1h, health_interval: 100ms}
`, filepath.Join(dir, "data"), testModel(t, "face_detection_short_range.tflite"), mq.URL()), 0o644))
	s := startServe(t, b.agent, "--config", cfg)
	version, digest := served(t, s, "face")
	require.NotEmpty(t, digest)
	require.NotEmpty(t, version)

	const want = 3
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(health) >= want
	}, 30*time.Second, 20*time.Millisecond, "fewer than %d health records at the subscriber", want)
	mu.Lock()
	require.Empty(t, bad)
	for _, r := range health {
		// The first may be taken before the model finished loading.
		if r.Model.Name == "" {
			continue
		}
		assert.Equal(t, protocol.ModelRef{Name: "face", Version: version, Digest: digest}, r.Model)
	}
	assert.Equal(t, protocol.ModelRef{Name: "face", Version: version, Digest: digest}, health[len(health)-1].Model)
	mu.Unlock()

	// Take the session over with the device id as client id: if it is the
	// agent's, the broker drops the agent, and the agent, reconnecting,
	// takes it back and drops us.
	lost := make(chan struct{})
	thief := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(mq.URL()).SetClientID("gw-health").
		SetCleanSession(false).SetAutoReconnect(false).
		SetConnectionLostHandler(func(mqtt.Client, error) { close(lost) }))
	tok = thief.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second) && tok.Error() == nil, "connect: %v", tok.Error())
	select {
	case <-lost:
	case <-time.After(20 * time.Second):
		thief.Disconnect(0)
		t.Fatal("the agent never took client id gw-health back: it is not its client id")
	}
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-s.exited:
		assert.NoError(t, s.err)
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}
