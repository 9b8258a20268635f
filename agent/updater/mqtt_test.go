//go:build cgo

package updater

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/require"
)

// chunkServer is a tiny controller on the embedded broker: it serves
// artifacts in chunks, paced, on the real protocol, and records acks.
type chunkServer struct {
	t     *testing.T
	addr  string
	arts  map[string][]byte
	pace  time.Duration
	topic protocol.Topics
	limit atomic.Int64 // chunks from this index on are not served

	mu       sync.Mutex // guards srv, requests, sent, acks
	srv      *mochi.Server
	stopSrv  func()
	requests []protocol.ChunkRequest
	sent     int64
	acks     []protocol.Ack
	status   []byte
	wg       sync.WaitGroup
}

func newChunkServer(t *testing.T, arts ...[]byte) *chunkServer {
	addr := testbroker.FreeAddr(t)
	topics, err := protocol.DeviceTopics(testFleetName, testDevice)
	require.NoError(t, err)
	s := &chunkServer{t: t, addr: addr, arts: map[string][]byte{}, topic: topics, pace: 5 * time.Millisecond}
	s.limit.Store(1 << 62)
	for _, a := range arts {
		sum := sha256.Sum256(a)
		s.arts[hex.EncodeToString(sum[:])] = a
	}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *chunkServer) start() {
	t := s.t
	srv, stop := testbroker.Start(t, s.addr)
	require.NoError(t, srv.Subscribe(s.topic.ArtifactsReq, 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		r, err := protocol.ParseChunkRequest(pk.Payload)
		if err != nil {
			t.Errorf("bad chunk request: %v", err)
			return
		}
		s.mu.Lock()
		s.requests = append(s.requests, *r)
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(srv, *r)
	}))
	require.NoError(t, srv.Subscribe(s.topic.Ack, 2, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		a, err := protocol.ParseAck(pk.Payload)
		if err != nil {
			t.Errorf("bad ack: %v", err)
			return
		}
		s.mu.Lock()
		s.acks = append(s.acks, *a)
		s.mu.Unlock()
	}))
	require.NoError(t, srv.Subscribe(s.topic.Status, 3, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		_, err := protocol.ParseStatus(pk.Payload)
		if err != nil {
			t.Errorf("bad status: %v", err)
		}
		s.mu.Lock()
		s.status = append([]byte(nil), pk.Payload...)
		s.mu.Unlock()
	}))
	s.mu.Lock()
	s.srv, s.stopSrv = srv, stop
	s.mu.Unlock()
}

func (s *chunkServer) serve(srv *mochi.Server, r protocol.ChunkRequest) {
	defer s.wg.Done()
	a := s.arts[r.SHA256]
	var art [32]byte
	hex.Decode(art[:], []byte(r.SHA256))
	total := protocol.ChunkCount(int64(len(a)), testChunk)
	for i := r.First; i < r.First+int64(r.Count) && i < total && i < s.limit.Load(); i++ {
		c := &protocol.Chunk{Kind: protocol.ChunkData, Artifact: art, Index: i, Total: total,
			Data: a[i*testChunk : min((i+1)*testChunk, int64(len(a)))]}
		b, err := protocol.AppendChunk(nil, c)
		if err != nil {
			s.t.Errorf("chunk: %v", err)
			return
		}
		if srv.Publish(s.topic.Chunk, b, false, 1) != nil {
			return // the broker stopped
		}
		s.mu.Lock()
		s.sent += int64(len(c.Data))
		s.mu.Unlock()
		time.Sleep(s.pace)
	}
}

func (s *chunkServer) stop() {
	s.mu.Lock()
	stop := s.stopSrv
	s.srv, s.stopSrv = nil, nil
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	s.wg.Wait()
}

func (s *chunkServer) publish(topic string, b []byte) {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	require.NoError(s.t, srv.Publish(topic, b, false, 1))
}

// TestMQTTUpdateSurvivesBrokerRestart runs an update over the embedded
// broker through the device's fleet link, as the daemon wires it:
// the command comes on the cmd topic, chunks on the chunk topic, acks and
// the status go back. The broker is killed in the middle of the transfer;
// the download resumes from the first missing chunk, never from zero.
func TestMQTTUpdateSurvivesBrokerRestart(t *testing.T) {
	f := newTestFleet(t)
	m1, b1 := describe(t, "face", 1, testmodel.FaceFull, false)
	cs := newChunkServer(t, b1)
	cs.limit.Store(25) // the link dies after 25 of 67 chunks

	mq, err := fleetlink.New(fleetlink.Options{Broker: "tcp://" + cs.addr, Fleet: testFleetName, Device: testDevice,
		BackoffMin: 100 * time.Millisecond, BackoffMax: 500 * time.Millisecond, KeepAlive: 2 * time.Second})
	require.NoError(t, err)
	link, err := NewLink(LinkOptions{Conn: mq, Fleet: testFleetName, Device: testDevice, Timeout: 2 * time.Second})
	require.NoError(t, err)
	// A chunk timeout longer than the test: after the broker comes back,
	// only the link's Connected signal makes the device ask again.
	d := newDevice(t, t.TempDir(), f, link, func(o *Options) { o.Reporter = link; o.ChunkTimeout = time.Hour })
	link.opts.Status = func() protocol.Status {
		return protocol.Status{Protocol: protocol.Version, Device: testDevice, AgentVersion: "1.0.0", Update: d.u.UpdateStatus(),
			Health: protocol.HealthSummary{Status: protocol.HealthOK}, Time: time.Now()}
	}
	link.SetCommandHandler(d.u.HandleCommand)
	ctx, cancel := context.WithCancel(context.Background())
	mqDone, linkDone := make(chan error, 1), make(chan error, 1)
	go func() { mqDone <- mq.Run(ctx) }()
	go func() { linkDone <- link.Run(ctx) }()
	defer func() { cancel(); <-mqDone; <-linkDone }()
	require.Eventually(t, mq.Connected, 10*time.Second, 10*time.Millisecond)
	d.start(t)

	cs.publish(cs.topic.Cmd, f.install(t, "c1", "r1", m1))
	// Kill the broker once the first 16 chunks are durable.
	require.Eventually(t, func() bool {
		j, _ := d.u.Job()
		return j != nil && j.State == Downloading && j.Done >= 16
	}, 30*time.Second, 5*time.Millisecond)
	cs.stop()
	cs.limit.Store(1 << 62)
	j, err := d.u.Job()
	require.NoError(t, err)
	held := j.Done
	time.Sleep(300 * time.Millisecond)
	cs.mu.Lock()
	cs.requests = nil
	cs.mu.Unlock()
	cs.start()

	j = d.waitJob(t, "c1")
	require.Equal(t, Committed, j.State, j.Error)
	require.Equal(t, int64(1), d.serving(t, "face"))
	cs.mu.Lock()
	defer cs.mu.Unlock()
	require.NotEmpty(t, cs.requests, "no request after the restart")
	for _, r := range cs.requests {
		require.GreaterOrEqual(t, r.First, int64(held), "asked again from chunk %d though %d were held", r.First, held)
	}
	require.Less(t, cs.sent, 2*m1.Length, "sent %d bytes for %d", cs.sent, m1.Length)
	t.Logf("broker restarted with %d of %d chunks durable; %d requests after it, from chunk %d; %d bytes sent for %d",
		held, protocol.ChunkCount(m1.Length, testChunk), len(cs.requests), cs.requests[0].First, cs.sent, m1.Length)
	cs.mu.Unlock()
	lastAck := func() State {
		cs.mu.Lock()
		defer cs.mu.Unlock()
		if n := len(cs.acks); n > 0 && cs.acks[n-1].CommandID == "c1" {
			return cs.acks[n-1].State
		}
		return ""
	}
	require.Eventually(t, func() bool { return lastAck() == Committed }, 10*time.Second, 10*time.Millisecond)
	cs.mu.Lock()
	// Progress acks came during the download, rising, before verifying.
	var progress []int64
	for _, a := range cs.acks {
		if a.CommandID == "c1" && a.State == Downloading && a.Progress > 0 {
			progress = append(progress, a.Progress)
		}
	}
	require.GreaterOrEqual(t, len(progress), 3, "progress acks: %v", progress)
	require.IsIncreasing(t, progress)
	st, err := protocol.ParseStatus(cs.status)
	require.NoError(t, err)
	require.NotNil(t, st.Update)
	require.Equal(t, "c1", st.Update.CommandID)
}
