package protocol

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ErrBadTopicSegment is returned (wrapped) when a fleet or device name cannot be
// used as one MQTT topic level.
var ErrBadTopicSegment = errors.New("protocol: bad topic segment")

// topicRoot is the first two levels of every Outpost topic.
const topicRoot = "outpost/v1"

// Topics names the MQTT topics of one device. Build it with DeviceTopics so the
// names are checked once.
type Topics struct {
	// State is retained and holds "online" or "offline"; the broker publishes
	// "offline" through the device's last will when the link dies.
	State string
	// Cmd carries signed commands from the controller to the device.
	Cmd string
	// Ack carries the device's progress and results for commands.
	Ack string
	// Events carries telemetry batches (QoS 1), see AppendBatch.
	Events string
	// Chunk carries artifact chunks for this device (AppendChunk), at
	// ChunkQoS.
	Chunk string
	// Status is retained and holds the device's Status (JSON).
	Status string
	// ArtifactsReq is where the device asks for artifact chunks; shared by the
	// whole fleet.
	ArtifactsReq string
}

// ChunkQoS is the QoS of artifact chunks, published and subscribed: 0
// (every other Outpost message is QoS 1). A
// device asks again for a chunk it misses (after a silence, and at once
// after every connection), so a broker need not store, resend or queue
// chunks for a session: that would hold chunks for a device that is away
// (which asks again anyway) in its session's queue beside its commands, and
// on NATS each QoS 1 subscription of a persistent session is a JetStream
// consumer, and each QoS 1 publish a write to a replicated stream.
const ChunkQoS byte = 0

// A device reconnects with jittered exponential backoff between these
// bounds, so a fleet that lost its broker does not come back in step; the
// backoff starts again from its minimum only after a connection that held
// StableConnection (docs/PROTOCOL.md, "What a device must do").
const (
	ReconnectBackoffMin = 500 * time.Millisecond
	ReconnectBackoffMax = 2 * time.Minute
	StableConnection    = 30 * time.Second
)

// State payloads published (retained) on Topics.State.
const (
	StateOnline  = "online"
	StateOffline = "offline"
)

// DeviceTopics returns the topics of device in fleet:
// outpost/v1/<fleet>/<device>/{state,cmd,ack,events,chunk,status} and
// outpost/v1/<fleet>/artifacts/req.
func DeviceTopics(fleet, device string) (Topics, error) {
	if err := checkSegment(fleet); err != nil {
		return Topics{}, fmt.Errorf("protocol: fleet: %w", err)
	}
	if err := checkSegment(device); err != nil {
		return Topics{}, fmt.Errorf("protocol: device: %w", err)
	}
	if device == "artifacts" {
		// Would collide with outpost/v1/<fleet>/artifacts/req.
		return Topics{}, fmt.Errorf("protocol: device: %q is reserved: %w", device, ErrBadTopicSegment)
	}
	base := topicRoot + "/" + fleet + "/" + device + "/"
	return Topics{
		State:        base + "state",
		Cmd:          base + "cmd",
		Ack:          base + "ack",
		Events:       base + "events",
		Chunk:        base + "chunk",
		Status:       base + "status",
		ArtifactsReq: topicRoot + "/" + fleet + "/artifacts/req",
	}, nil
}

// FleetEventsFilter is the subscription filter a controller uses to receive the
// events of every device in fleet: outpost/v1/<fleet>/+/events.
func FleetEventsFilter(fleet string) (string, error) {
	if err := checkSegment(fleet); err != nil {
		return "", fmt.Errorf("protocol: fleet: %w", err)
	}
	return topicRoot + "/" + fleet + "/+/events", nil
}

// Leaf names of the per-device topics.
const (
	LeafState  = "state"
	LeafCmd    = "cmd"
	LeafAck    = "ack"
	LeafEvents = "events"
	LeafChunk  = "chunk"
	LeafStatus = "status"
)

// FleetFilter is the subscription filter for one per-device topic of every
// device in fleet: outpost/v1/<fleet>/+/<leaf>. A controller uses it for
// state, ack, events and status.
func FleetFilter(fleet, leaf string) (string, error) {
	if err := checkSegment(fleet); err != nil {
		return "", fmt.Errorf("protocol: fleet: %w", err)
	}
	switch leaf {
	case LeafState, LeafCmd, LeafAck, LeafEvents, LeafChunk, LeafStatus:
	default:
		return "", fmt.Errorf("protocol: leaf %q: %w", leaf, ErrBadTopicSegment)
	}
	return topicRoot + "/" + fleet + "/+/" + leaf, nil
}

// ArtifactsReqTopic is outpost/v1/<fleet>/artifacts/req, where every device
// of fleet asks for chunks.
func ArtifactsReqTopic(fleet string) (string, error) {
	if err := checkSegment(fleet); err != nil {
		return "", fmt.Errorf("protocol: fleet: %w", err)
	}
	return topicRoot + "/" + fleet + "/artifacts/req", nil
}

// ParseDeviceTopic returns the fleet, device and leaf of a per-device topic
// (outpost/v1/<fleet>/<device>/<leaf>, leaf one of the Leaf constants), so a
// controller subscribed with FleetFilter knows which device sent a message.
func ParseDeviceTopic(topic string) (fleet, device, leaf string, err error) {
	rest, ok := strings.CutPrefix(topic, topicRoot+"/")
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 3 || parts[1] == "artifacts" {
		return "", "", "", fmt.Errorf("protocol: %q is not a device topic: %w", topic, ErrBadTopicSegment)
	}
	for _, p := range parts[:2] {
		if err := checkSegment(p); err != nil {
			return "", "", "", fmt.Errorf("protocol: topic %q: %w", topic, err)
		}
	}
	switch parts[2] {
	case LeafState, LeafCmd, LeafAck, LeafEvents, LeafChunk, LeafStatus:
	default:
		return "", "", "", fmt.Errorf("protocol: topic %q: leaf: %w", topic, ErrBadTopicSegment)
	}
	return parts[0], parts[1], parts[2], nil
}

// ParseEventsTopic returns the fleet and device of an events topic, so a
// controller subscribed with FleetEventsFilter knows which device sent a batch.
func ParseEventsTopic(topic string) (fleet, device string, err error) {
	rest, ok := strings.CutPrefix(topic, topicRoot+"/")
	parts := strings.Split(rest, "/")
	if !ok || len(parts) != 3 || parts[2] != "events" {
		return "", "", fmt.Errorf("protocol: %q is not an events topic: %w", topic, ErrBadTopicSegment)
	}
	for _, p := range parts[:2] {
		if err := checkSegment(p); err != nil {
			return "", "", fmt.Errorf("protocol: topic %q: %w", topic, err)
		}
	}
	return parts[0], parts[1], nil
}

// checkSegment accepts a non-empty name of at most 128 bytes made of ASCII
// letters, digits, '-', '_' and '.', which is safe as one topic level on every
// broker we know and in file names.
func checkSegment(s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("%q: length must be 1 to 128: %w", s, ErrBadTopicSegment)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return fmt.Errorf("%q: byte %q not allowed: %w", s, c, ErrBadTopicSegment)
		}
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%q: %w", s, ErrBadTopicSegment)
	}
	return nil
}

// ErrSubscribeRefused is returned (wrapped) by Granted for a subscription
// the broker refused.
var ErrSubscribeRefused = errors.New("protocol: subscription refused by the broker")

// Granted checks an MQTT SUBACK's return codes (filter to granted QoS, as
// paho's SubscribeToken.Result gives them): 0x80 means the broker refused
// that filter (an ACL, a resource limit), which a client must treat as a
// failed subscription, not as a quiet one. It names the refused filters.
func Granted(codes map[string]byte) error {
	var refused []string
	for f, c := range codes {
		if c == 0x80 {
			refused = append(refused, f)
		}
	}
	if len(refused) == 0 {
		return nil
	}
	slices.Sort(refused)
	return fmt.Errorf("%w: %s", ErrSubscribeRefused, strings.Join(refused, ", "))
}
