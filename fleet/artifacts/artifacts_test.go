package artifacts

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/broker"
	"github.com/outpost-edge/outpost/protocol"
)

// pahoPublisher publishes through a real MQTT client, as the controller does.
type pahoPublisher struct{ c mqtt.Client }

func (p pahoPublisher) Publish(ctx context.Context, topic string, b []byte) error {
	t := p.c.Publish(topic, protocol.ChunkQoS, false, b)
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

type files map[string]Artifact

func (f files) Artifact(sha string) (Artifact, error) {
	a, ok := f[sha]
	if !ok {
		return Artifact{}, errors.New("unknown")
	}
	return a, nil
}

func connect(t *testing.T, url, id string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

type fixture struct {
	srv    *Server
	art    []byte
	sha    string
	mu     sync.Mutex
	chunks []protocol.Chunk
}

func (f *fixture) got() []protocol.Chunk {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]protocol.Chunk(nil), f.chunks...)
}

func start(t *testing.T, rate int64) *fixture {
	t.Helper()
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go b.Run(ctx)
	f := &fixture{art: make([]byte, 10*1000+123)}
	rand.Read(f.art)
	sum := sha256.Sum256(f.art)
	f.sha = hex.EncodeToString(sum[:])
	path := filepath.Join(t.TempDir(), f.sha)
	if err := os.WriteFile(path, f.art, 0o600); err != nil {
		t.Fatal(err)
	}
	f.srv, err = New(Options{Fleet: "acme", Publisher: pahoPublisher{connect(t, b.URL(), "ctl")}, BytesPerSecond: rate,
		Catalog: files{f.sha: {Path: path, Length: int64(len(f.art)), ChunkSize: 1000}}})
	if err != nil {
		t.Fatal(err)
	}
	go f.srv.Run(ctx)
	dev := connect(t, b.URL(), "gw-1")
	topics, _ := protocol.DeviceTopics("acme", "gw-1")
	tok := dev.Subscribe(topics.Chunk, protocol.ChunkQoS, func(_ mqtt.Client, m mqtt.Message) {
		c, err := protocol.ParseChunk(m.Payload())
		if err != nil {
			t.Errorf("bad chunk: %v", err)
			return
		}
		c.Data = bytes.Clone(c.Data)
		f.mu.Lock()
		f.chunks = append(f.chunks, c)
		f.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	return f
}

func (f *fixture) ask(t *testing.T, sha string, first int64, count int) {
	t.Helper()
	b, _ := json.Marshal(protocol.ChunkRequest{Device: "gw-1", SHA256: sha, First: first, Count: count})
	if err := f.srv.Handle(b); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestServeWindowAndErrors(t *testing.T) {
	f := start(t, 0)
	f.ask(t, f.sha, 8, 5) // chunks 8, 9, 10: the window stops at the end
	waitFor(t, "3 chunks", func() bool { return len(f.got()) == 3 })
	for i, c := range f.got() {
		idx := int64(8 + i)
		end := min(int64(len(f.art)), (idx+1)*1000)
		if c.Kind != protocol.ChunkData || c.Index != idx || c.Total != 11 || c.ArtifactHex() != f.sha || !bytes.Equal(c.Data, f.art[idx*1000:end]) {
			t.Fatalf("chunk %d: kind %d index %d total %d, %d bytes", i, c.Kind, c.Index, c.Total, len(c.Data))
		}
	}
	f.ask(t, f.sha, 11, 1)
	// One request per device waits at a time (a newer one replaces it), so
	// ask again only once the first is answered.
	waitFor(t, "an error chunk", func() bool { return len(f.got()) == 4 })
	unknown := fmt.Sprintf("%064x", 1)
	f.ask(t, unknown, 0, 1)
	waitFor(t, "2 error chunks", func() bool { return len(f.got()) == 5 })
	for _, c := range f.got()[3:] {
		if c.Kind != protocol.ChunkError || len(c.Data) == 0 {
			t.Fatalf("got kind %d %q, want an error chunk", c.Kind, c.Data)
		}
	}
	if err := f.srv.Handle([]byte(`{"device":"gw-1"}`)); !errors.Is(err, protocol.ErrMalformed) {
		t.Fatalf("malformed request: %v", err)
	}
	if s := f.srv.Stats(); s.Chunks != 3 || s.Requests != 3 || s.Errors != 1 {
		t.Fatalf("stats %+v", s)
	}
}

// TestPacing: chunks go no faster than the byte rate (a lower bound only;
// a slow machine is slower still).
func TestPacing(t *testing.T) {
	f := start(t, 4000) // 4 chunks of 1000 bytes a second
	start := time.Now()
	f.ask(t, f.sha, 0, 11)
	waitFor(t, "11 chunks", func() bool { return len(f.got()) == 11 })
	// The first chunk goes at once; the other ten wait their turn.
	if el := time.Since(start); el < 2*time.Second {
		t.Fatalf("11 chunks of ~1000 bytes at 4000 B/s took %s, want at least 2 s", el)
	}
}
