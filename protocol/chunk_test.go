package protocol

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestChunkRoundTrip(t *testing.T) {
	art := sha256.Sum256([]byte("model"))
	for _, c := range []Chunk{
		{Kind: ChunkData, Artifact: art, Index: 0, Total: 1, Data: []byte("model")},
		{Kind: ChunkData, Artifact: art, Index: 299, Total: 300, Data: bytes.Repeat([]byte{7}, 65536)},
		{Kind: ChunkError, Artifact: art, Index: 5, Total: 0, Data: []byte("unknown artifact")},
		{Kind: ChunkData, Artifact: art, Index: 0, Total: 1, Data: nil},
	} {
		b, err := AppendChunk(nil, &c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseChunk(b)
		if err != nil {
			t.Fatalf("ParseChunk: %v", err)
		}
		if got.Kind != c.Kind || got.Artifact != c.Artifact || got.Index != c.Index || got.Total != c.Total ||
			!bytes.Equal(got.Data, c.Data) || got.Digest != sha256.Sum256(c.Data) {
			t.Fatalf("got %+v, want %+v", got, c)
		}
		if got.ArtifactHex() != strings.ToLower(got.ArtifactHex()) || len(got.ArtifactHex()) != 64 {
			t.Fatalf("ArtifactHex %q", got.ArtifactHex())
		}
	}
}

func TestParseChunkRejects(t *testing.T) {
	art := sha256.Sum256([]byte("model"))
	good, _ := AppendChunk(nil, &Chunk{Kind: ChunkData, Artifact: art, Index: 1, Total: 2, Data: []byte("abcdef")})
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 1
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"bad magic", flip(0), ErrMalformed},
		{"other version", flip(2), ErrUnsupportedVersion},
		{"unknown kind", append([]byte{'O', 'C', 1, 9}, good[4:]...), ErrMalformed},
		{"data byte flipped", flip(len(good) - 1), ErrChunkDigest},
		{"digest flipped", flip(4 + 32 + 2), ErrChunkDigest},
		{"cut short", good[:len(good)-1], ErrMalformed},
		{"trailing", append(bytes.Clone(good), 0), ErrMalformed},
		{"index beyond total", func() []byte {
			b := bytes.Clone(good)
			b[4+32] = 2 // index 2 of 2
			return b
		}(), ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseChunk(tt.b); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := AppendChunk(nil, &Chunk{Kind: ChunkData, Index: 2, Total: 2}); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("AppendChunk index beyond total: got %v, want ErrInvalidRecord", err)
	}
	if _, err := AppendChunk(nil, &Chunk{Kind: ChunkData, Total: 1, Data: make([]byte, MaxChunkSize+1)}); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("AppendChunk oversized: got %v, want ErrInvalidRecord", err)
	}
}

func TestParseChunkRequest(t *testing.T) {
	sha := strings.Repeat("0f", 32)
	good := ChunkRequest{Device: "gw-1", SHA256: sha, First: 3, Count: 16}
	b, _ := json.Marshal(good)
	r, err := ParseChunkRequest(b)
	if err != nil || *r != good {
		t.Fatalf("got %+v, %v; want %+v", r, err, good)
	}
	// An unknown field from a newer agent is ignored.
	if _, err := ParseChunkRequest([]byte(`{"device":"gw-1","sha256":"` + sha + `","first":0,"count":1,"new":true}`)); err != nil {
		t.Fatalf("unknown field: %v", err)
	}
	for _, bad := range []string{
		`{"device":"gw-1","sha256":"` + sha + `","first":-1,"count":1}`,
		`{"device":"gw-1","sha256":"` + sha + `","first":0,"count":0}`,
		`{"device":"gw-1","sha256":"` + sha + `","first":0,"count":257}`,
		`{"device":"a/b","sha256":"` + sha + `","first":0,"count":1}`,
		`{"device":"gw-1","sha256":"xyz","first":0,"count":1}`,
		`{"device":"gw-1","sha256":"` + sha + `","first":0,"count":1} {}`,
		`[]`,
	} {
		if _, err := ParseChunkRequest([]byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseChunkRequest(%s): got %v, want ErrMalformed", bad, err)
		}
	}
}

func TestAckAndStatus(t *testing.T) {
	a := Ack{CommandID: "c1", RolloutID: "r-1", Model: "face", Version: 2, State: UpdateDownloading,
		Progress: 10, Total: 100, Time: t0}
	b, _ := json.Marshal(a)
	got, err := ParseAck(b)
	if err != nil || *got != a {
		t.Fatalf("ParseAck: got %+v, %v; want %+v", got, err, a)
	}
	for _, bad := range []Ack{
		{CommandID: "c1", RolloutID: "r-1", State: "dancing"},
		{CommandID: "c1", RolloutID: "r-1", State: UpdateIdle},
		{CommandID: "", RolloutID: "r-1", State: UpdateFailed},
		{CommandID: "c1", RolloutID: "r-1", State: UpdateFailed, Progress: -1},
		{CommandID: "c1", RolloutID: "r-1", State: UpdateFailed, Model: "Bad Name"},
	} {
		b, _ := json.Marshal(bad)
		if _, err := ParseAck(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("ParseAck(%s): got %v, want ErrMalformed", b, err)
		}
	}
	s := Status{Protocol: Version, Device: "gw-1", AgentVersion: "1.2.0", Labels: map[string]string{"site": "north", "hw": "pi5"},
		RootVersion: 1, Models: []ModelStatus{{Name: "face", Version: 2, Digest: "sha256:" + strings.Repeat("ab", 32), Previous: 1}},
		Update: &UpdateStatus{CommandID: "c1", RolloutID: "r-1", Model: "face", Version: 2, State: UpdateCommitted, Time: t0},
		Health: HealthSummary{Status: HealthOK, UptimeSeconds: 60}, Time: t0.Add(time.Second)}
	b, _ = json.Marshal(s)
	gs, err := ParseStatus(b)
	if err != nil || gs.Labels["site"] != "north" || gs.Update.State != UpdateCommitted || gs.Models[0].Previous != 1 {
		t.Fatalf("ParseStatus: got %+v, %v", gs, err)
	}
	for name, fn := range map[string]func(s *Status){
		"protocol 2":   func(s *Status) { s.Protocol = 2 },
		"bad label":    func(s *Status) { s.Labels = map[string]string{"a": "b,c"} },
		"bad health":   func(s *Status) { s.Health.Status = "meh" },
		"bad device":   func(s *Status) { s.Device = "#" },
		"bad update":   func(s *Status) { s.Update = &UpdateStatus{CommandID: "c", RolloutID: "r", State: "x"} },
		"model v0":     func(s *Status) { s.Models = []ModelStatus{{Name: "face"}} },
		"many labels":  func(s *Status) { s.Labels = manyLabels(65) },
		"unknown kind": func(s *Status) { s.Update = &UpdateStatus{} },
	} {
		c := s
		fn(&c)
		b, _ := json.Marshal(c)
		if _, err := ParseStatus(b); !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupportedVersion) {
			t.Errorf("ParseStatus with %s: got %v, want an error", name, err)
		}
	}
	if !UpdateCommitted.Terminal() || UpdateProbation.Terminal() || !UpdateProbation.Activated() || UpdateStaged.Activated() {
		t.Fatal("Terminal/Activated disagree with the state table")
	}
}

func manyLabels(n int) map[string]string {
	m := map[string]string{}
	for i := 0; i < n; i++ {
		m["k"+strings.Repeat("x", i)] = "v"
	}
	return m
}

func TestFleetTopics(t *testing.T) {
	for _, leaf := range []string{LeafState, LeafAck, LeafEvents, LeafStatus} {
		f, err := FleetFilter("acme", leaf)
		if err != nil || f != "outpost/v1/acme/+/"+leaf {
			t.Fatalf("FleetFilter(%s) = %q, %v", leaf, f, err)
		}
		fl, dev, l, err := ParseDeviceTopic("outpost/v1/acme/gw-1/" + leaf)
		if err != nil || fl != "acme" || dev != "gw-1" || l != leaf {
			t.Fatalf("ParseDeviceTopic: %q %q %q %v", fl, dev, l, err)
		}
	}
	if _, err := FleetFilter("acme", "other"); !errors.Is(err, ErrBadTopicSegment) {
		t.Fatalf("FleetFilter(other): %v", err)
	}
	for _, bad := range []string{"outpost/v1/acme/artifacts/req", "outpost/v1/acme/gw-1/x", "outpost/v2/acme/gw-1/ack", "outpost/v1/acme/+/ack"} {
		if _, _, _, err := ParseDeviceTopic(bad); !errors.Is(err, ErrBadTopicSegment) {
			t.Errorf("ParseDeviceTopic(%q): got %v, want ErrBadTopicSegment", bad, err)
		}
	}
	if r, err := ArtifactsReqTopic("acme"); err != nil || r != "outpost/v1/acme/artifacts/req" {
		t.Fatalf("ArtifactsReqTopic = %q, %v", r, err)
	}
}

func FuzzParseChunk(f *testing.F) {
	art := sha256.Sum256([]byte("m"))
	good, _ := AppendChunk(nil, &Chunk{Kind: ChunkData, Artifact: art, Index: 1, Total: 2, Data: []byte("abcdef")})
	f.Add(good)
	bad, _ := AppendChunk(nil, &Chunk{Kind: ChunkError, Artifact: art, Data: []byte("no")})
	f.Add(bad)
	f.Add([]byte("OC\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseChunk(b)
		if err != nil {
			return
		}
		again, err := AppendChunk(nil, &c)
		if err != nil {
			t.Fatalf("re-encode of a parsed chunk: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, b)
		}
	})
}

func FuzzParseChunkRequest(f *testing.F) {
	f.Add([]byte(`{"device":"gw-1","sha256":"` + strings.Repeat("0f", 32) + `","first":3,"count":16}`))
	f.Add([]byte(`{"device":"gw-1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseChunkRequest(b)
		if err == nil && (r.Validate() != nil || r.Count < 1 || r.Count > MaxChunkWindow) {
			t.Fatalf("accepted %+v", r)
		}
	})
}

func FuzzParseAck(f *testing.F) {
	f.Add([]byte(`{"command_id":"c1","rollout_id":"r-1","model":"face","version":2,"state":"downloading","progress_bytes":10,"total_bytes":100,"time":"2026-11-01T00:00:00Z"}`))
	f.Add([]byte(`{"command_id":"c1","rollout_id":"r-1","state":"failed","error":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAck(b)
		if err == nil && (!a.State.Valid() || a.Validate() != nil) {
			t.Fatalf("accepted %+v", a)
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte(`{"protocol":1,"device":"gw-1","agent_version":"1.0.0","labels":{"site":"n"},"models":[{"name":"face","version":2,"digest":"sha256:00"}],"update":{"command_id":"c","rollout_id":"r","model":"face","version":2,"state":"committed","time":"2026-11-01T00:00:00Z"},"health":{"status":"ok"},"time":"2026-11-01T00:00:00Z"}`))
	f.Add([]byte(`{"protocol":1,"device":"gw-1","health":{"status":"ok"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseStatus(b)
		if err == nil && s.Validate() != nil {
			t.Fatalf("accepted %+v", s)
		}
	})
}
