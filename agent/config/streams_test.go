package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestStreamDefaults(t *testing.T) {
	c, err := Parse([]byte(`
streams:
  - name: cam
    broker: tcp://127.0.0.1:1883
    topic: cams/door/frames
    decoder: image
    model: face
    result_topic: cams/door/faces
  - name: vib
    broker: tcp://127.0.0.1:1883
    topic: sensors/+/vibration
    qos: 0
    decoder: raw
    window: {size: 1024, hop: 256}
    model: anomaly
    result_topic: results/vibration
    overflow: drop_newest
    queue: 32
`))
	require.NoError(t, err)
	c = c.WithDefaults()
	require.NoError(t, c.Validate())
	cam, vib := c.Streams[0], c.Streams[1]
	assert.Equal(t, 1, *cam.QoS)
	assert.Equal(t, "outpost-stream-cam", cam.ClientID)
	assert.Equal(t, DefaultStreamQueue, cam.Queue)
	assert.Equal(t, int64(DefaultStreamQueueBytes), cam.QueueBytes)
	assert.Equal(t, DropOldest, cam.Overflow)
	assert.Equal(t, []float32{0, 1}, cam.PixelRange)
	assert.Equal(t, 0, *vib.QoS)
	assert.Equal(t, DropNewest, vib.Overflow)
	assert.Equal(t, 32, vib.Queue)
	assert.Equal(t, &Window{Size: 1024, Hop: 256}, vib.Window)
}

func TestStreamValidation(t *testing.T) {
	base := `name: s
    broker: tcp://127.0.0.1:1883
    topic: in
    decoder: raw
    model: m
    result_topic: out`
	tests := []struct {
		name, stream, want string
	}{
		{"unknown decoder", strings.Replace(base, "decoder: raw", "decoder: protobuf", 1), `unknown decoder "protobuf" (want raw, json or image)`},
		{"jpeg names the image decoder", strings.Replace(base, "decoder: raw", "decoder: jpeg", 1), `decoder "jpeg": use image`},
		{"no decoder", strings.Replace(base, "decoder: raw", "", 1), "decoder is required"},
		{"hop above size", base + "\n    window: {size: 10, hop: 20}", "window.hop 20 is larger than window.size 10"},
		{"zero hop", base + "\n    window: {size: 10}", "window.hop must be positive"},
		{"window on images", strings.Replace(base, "decoder: raw", "decoder: image", 1) + "\n    window: {size: 10, hop: 5}", "a window needs the raw or json decoder"},
		{"missing topic", strings.Replace(base, "topic: in", "", 1), "topic is required"},
		{"missing result topic", strings.Replace(base, "result_topic: out", "", 1), "result_topic is required"},
		{"result feeds back", strings.Replace(base, "topic: in", "topic: '#'", 1), `result_topic "out" matches topic "#"`},
		{"missing model", strings.Replace(base, "model: m", "", 1), "model is required"},
		{"bad broker", strings.Replace(base, "tcp://", "http://", 1), `broker "http://127.0.0.1:1883": want tcp://host:port`},
		{"qos 2", base + "\n    qos: 2", "qos 2: want 0 or 1"},
		{"bad overflow", base + "\n    overflow: block", `unknown overflow "block"`},
		{"pixel range off images", base + "\n    pixel_range: [0, 1]", "pixel_range is [min, max]"},
		{"message above queue", base + "\n    queue_bytes: 100\n    max_message_bytes: 200", "max_message_bytes 200 is larger than queue_bytes 100"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte("streams:\n  - " + tt.stream + "\n"))
			require.NoError(t, err)
			err = c.WithDefaults().Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), "streams[0] (s): "+tt.want)
		})
	}
	t.Run("twice the same name", func(t *testing.T) {
		c, err := Parse([]byte("streams:\n  - " + base + "\n  - " + base + "\n"))
		require.NoError(t, err)
		err = c.WithDefaults().Validate()
		require.ErrorContains(t, err, `streams[1] (s): name "s" is used twice`)
	})
	t.Run("valid", func(t *testing.T) {
		c, err := Parse([]byte("streams:\n  - " + base + "\n"))
		require.NoError(t, err)
		require.NoError(t, c.WithDefaults().Validate())
	})
}

func TestTopicMatches(t *testing.T) {
	for _, tt := range []struct {
		filter, name string
		want         bool
	}{
		{"a/b", "a/b", true}, {"a/+", "a/b", true}, {"a/#", "a/b/c", true}, {"#", "x", true},
		{"a/+", "a/b/c", false}, {"a/b", "a/c", false}, {"a/b/c", "a/b", false},
	} {
		if got := topicMatches(tt.filter, tt.name); got != tt.want {
			t.Errorf("topicMatches(%q, %q) = %v, want %v", tt.filter, tt.name, got, tt.want)
		}
	}
}
