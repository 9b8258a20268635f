package config

import (
	"fmt"
	"strings"
)

// Stream defaults.
const (
	DefaultStreamQueue           = 8
	DefaultStreamQueueBytes      = 16 << 20
	DefaultStreamMaxMessageBytes = 4 << 20
)

// Stream decoders (docs/MODES.md).
const (
	DecoderRaw   = "raw"   // little-endian tensor bytes
	DecoderJSON  = "json"  // an Open Inference Protocol v2 request body ("inputs")
	DecoderImage = "image" // a JPEG or PNG frame resized to the model's input
)

// Overflow policies of a stream's queue.
const (
	DropOldest = "drop_oldest"
	DropNewest = "drop_newest"
)

// Stream feeds a model from an MQTT topic on a local broker and publishes
// its results on another (docs/MODES.md, "Streaming").
type Stream struct {
	// Name names the stream in metrics, logs and result ids.
	Name string `yaml:"name"`
	// Broker is tcp://host:port (or ssl://); Topic is subscribed to with
	// QoS (0 or 1, default 1) under a persistent session whose client id
	// is ClientID (default "outpost-stream-<name>").
	Broker       string `yaml:"broker"`
	Topic        string `yaml:"topic"`
	QoS          *int   `yaml:"qos"`
	ClientID     string `yaml:"client_id"`
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// Decoder turns a message into the model's inputs: raw, json or image.
	Decoder string `yaml:"decoder"`
	// Window, for raw and json streams of a one-input model, joins the
	// elements of successive messages into windows of Size elements, one
	// inference every Hop elements.
	Window *Window `yaml:"window"`
	// PixelRange maps pixel values 0..255 onto [min, max] for FP32 image
	// inputs; default [0, 1].
	PixelRange []float32 `yaml:"pixel_range"`
	// Model is served by name by the agent, so updates apply to the stream.
	Model string `yaml:"model"`
	// ResultTopic receives one JSON result per inference.
	ResultTopic string `yaml:"result_topic"`
	// Queue bounds the messages waiting for inference (default 8) and
	// QueueBytes their total size (default 16 MiB); Overflow says which
	// message goes when it is full: drop_oldest (default) or drop_newest.
	Queue      int    `yaml:"queue"`
	QueueBytes int64  `yaml:"queue_bytes"`
	Overflow   string `yaml:"overflow"`
	// MaxMessageBytes drops larger messages unread (default 4 MiB).
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
}

// Window is a sliding window over a time series, in elements.
type Window struct {
	Size int `yaml:"size"`
	Hop  int `yaml:"hop"`
}

// streamDefaults fills a stream's unset fields.
func streamDefaults(s Stream) Stream {
	if s.QoS == nil {
		one := 1
		s.QoS = &one
	}
	if s.ClientID == "" {
		s.ClientID = "outpost-stream-" + s.Name
	}
	if s.Queue == 0 {
		s.Queue = DefaultStreamQueue
	}
	if s.QueueBytes == 0 {
		s.QueueBytes = DefaultStreamQueueBytes
	}
	if s.MaxMessageBytes == 0 {
		s.MaxMessageBytes = DefaultStreamMaxMessageBytes
	}
	if s.Overflow == "" {
		s.Overflow = DropOldest
	}
	if s.Decoder == DecoderImage && len(s.PixelRange) == 0 {
		s.PixelRange = []float32{0, 1}
	}
	return s
}

// validateStreams returns one message per problem.
func validateStreams(ss []Stream) []string {
	var errs []string
	seen := map[string]bool{}
	for i, s := range ss {
		at := fmt.Sprintf("streams[%d]", i)
		if s.Name != "" {
			at = fmt.Sprintf("streams[%d] (%s)", i, s.Name)
		}
		bad := func(format string, a ...any) { errs = append(errs, at+": "+fmt.Sprintf(format, a...)) }
		switch {
		case s.Name == "":
			bad("name is required")
		case !ValidName(s.Name):
			bad("name %q may use only letters, digits, '-', '_' and '.'", s.Name)
		case seen[s.Name]:
			bad("name %q is used twice", s.Name)
		}
		seen[s.Name] = true
		if !strings.HasPrefix(s.Broker, "tcp://") && !strings.HasPrefix(s.Broker, "ssl://") {
			bad("broker %q: want tcp://host:port or ssl://host:port", s.Broker)
		}
		if s.Topic == "" {
			bad("topic is required")
		}
		if s.ResultTopic == "" {
			bad("result_topic is required")
		} else if strings.ContainsAny(s.ResultTopic, "+#") {
			bad("result_topic %q must not hold the wildcards + or #", s.ResultTopic)
		} else if s.Topic != "" && topicMatches(s.Topic, s.ResultTopic) {
			bad("result_topic %q matches topic %q: the stream would read its own results", s.ResultTopic, s.Topic)
		}
		if s.Model == "" {
			bad("model is required")
		}
		if s.QoS != nil && (*s.QoS < 0 || *s.QoS > 1) {
			bad("qos %d: want 0 or 1", *s.QoS)
		}
		switch s.Decoder {
		case DecoderRaw, DecoderJSON:
		case DecoderImage:
			if s.Window != nil {
				bad("a window needs the raw or json decoder, not image")
			}
		case "":
			bad("decoder is required (raw, json or image)")
		case "jpeg", "png":
			bad("decoder %q: use image, which reads JPEG and PNG", s.Decoder)
		default:
			bad("unknown decoder %q (want raw, json or image)", s.Decoder)
		}
		if len(s.PixelRange) > 0 && (s.Decoder != DecoderImage || len(s.PixelRange) != 2 || s.PixelRange[0] == s.PixelRange[1]) {
			bad("pixel_range is [min, max] with min != max, for the image decoder only")
		}
		if w := s.Window; w != nil {
			switch {
			case w.Size <= 0:
				bad("window.size must be positive")
			case w.Hop <= 0:
				bad("window.hop must be positive")
			case w.Hop > w.Size:
				bad("window.hop %d is larger than window.size %d: samples would be skipped", w.Hop, w.Size)
			}
		}
		if s.Queue < 0 || s.QueueBytes < 0 || s.MaxMessageBytes < 0 {
			bad("queue, queue_bytes and max_message_bytes must not be negative")
		}
		if s.QueueBytes > 0 && s.MaxMessageBytes > s.QueueBytes {
			bad("max_message_bytes %d is larger than queue_bytes %d", s.MaxMessageBytes, s.QueueBytes)
		}
		switch s.Overflow {
		case "", DropOldest, DropNewest:
		default:
			bad("unknown overflow %q (want drop_oldest or drop_newest)", s.Overflow)
		}
	}
	return errs
}

// topicMatches reports whether filter (with + and # wildcards) matches the
// topic name.
func topicMatches(filter, name string) bool {
	f, n := strings.Split(filter, "/"), strings.Split(name, "/")
	for i, p := range f {
		if p == "#" {
			return true
		}
		if i >= len(n) || (p != "+" && p != n[i]) {
			return false
		}
	}
	return len(f) == len(n)
}
