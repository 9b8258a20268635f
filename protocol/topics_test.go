package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestDeviceTopics(t *testing.T) {
	tp, err := DeviceTopics("acme", "gw-01")
	if err != nil {
		t.Fatal(err)
	}
	want := Topics{
		State: "outpost/v1/acme/gw-01/state", Cmd: "outpost/v1/acme/gw-01/cmd", Ack: "outpost/v1/acme/gw-01/ack",
		Events: "outpost/v1/acme/gw-01/events", Chunk: "outpost/v1/acme/gw-01/chunk", Status: "outpost/v1/acme/gw-01/status", ArtifactsReq: "outpost/v1/acme/artifacts/req",
	}
	if tp != want {
		t.Fatalf("got %+v, want %+v", tp, want)
	}
	f, d, err := ParseEventsTopic(tp.Events)
	if err != nil || f != "acme" || d != "gw-01" {
		t.Fatalf("ParseEventsTopic(%q) = %q, %q, %v; want acme, gw-01, nil", tp.Events, f, d, err)
	}
	filter, err := FleetEventsFilter("acme")
	if err != nil || filter != "outpost/v1/acme/+/events" {
		t.Fatalf("FleetEventsFilter = %q, %v", filter, err)
	}
}

func TestTopicSegmentsRejected(t *testing.T) {
	for _, tt := range []struct{ fleet, device string }{
		{"", "d"}, {"f", ""}, {"a/b", "d"}, {"f", "+"}, {"f", "#"}, {"f", "d e"},
		{"f", ".."}, {"f", "artifacts"}, {"f", "gw\x00"}, {string(make([]byte, 129)), "d"},
	} {
		if _, err := DeviceTopics(tt.fleet, tt.device); !errors.Is(err, ErrBadTopicSegment) {
			t.Errorf("DeviceTopics(%q, %q): got error %v, want ErrBadTopicSegment", tt.fleet, tt.device, err)
		}
	}
	for _, topic := range []string{"outpost/v1/f/d/state", "outpost/v2/f/d/events", "outpost/v1/f/+/events", "x", "outpost/v1/f/d/e/events"} {
		if _, _, err := ParseEventsTopic(topic); !errors.Is(err, ErrBadTopicSegment) {
			t.Errorf("ParseEventsTopic(%q): got error %v, want ErrBadTopicSegment", topic, err)
		}
	}
}

func TestGranted(t *testing.T) {
	if err := Granted(map[string]byte{"a/cmd": 1, "a/chunk": 0}); err != nil {
		t.Errorf("granted QoS 1 and 0: %v", err)
	}
	err := Granted(map[string]byte{"a/cmd": 0x80, "a/chunk": 1, "a/b": 0x80})
	if !errors.Is(err, ErrSubscribeRefused) || !strings.HasSuffix(err.Error(), ": a/b, a/cmd") {
		t.Errorf("two refused: got %v", err)
	}
}
