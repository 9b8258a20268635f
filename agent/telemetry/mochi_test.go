package telemetry

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/require"
)

// startMochi runs the embedded broker the fleet controller uses on a free
// loopback port, with an inline subscriber on topic that records arrivals.
func startMochi(t *testing.T, topic string) (url string, arrivals func() []arrival) {
	t.Helper()
	addr := testbroker.FreeAddr(t)
	srv, _ := testbroker.Start(t, addr)

	var mu sync.Mutex
	var got []arrival
	require.NoError(t, srv.Subscribe(topic, 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
		b, err := protocol.DecodeBatch(pk.Payload)
		if err != nil {
			t.Errorf("bad batch: %v", err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, e := range b.Entries {
			got = append(got, arrival{epoch: b.Epoch, seq: e.Seq})
		}
	}))
	return "tcp://" + addr, func() []arrival {
		mu.Lock()
		defer mu.Unlock()
		return append([]arrival(nil), got...)
	}
}

// TestEmbeddedBrokerResumeAfterRestart: a backlog written while the agent had
// no uplink drains in order to the embedded broker after a restart, and live
// records follow it.
func TestEmbeddedBrokerResumeAfterRestart(t *testing.T) {
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("test", dev)
	require.NoError(t, err)
	url, arrivals := startMochi(t, topics.Events)
	path := filepath.Join(t.TempDir(), "q.db")

	q := startQueue(t, Options{Path: path})
	for i := range 1000 {
		_, err := q.Emit(context.Background(), audit(i))
		require.NoError(t, err)
	}
	q.stop()

	m, err := fleetlink.New(fleetlink.Options{Broker: url, Fleet: "test", Device: dev,
		BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	mdone := make(chan error, 1)
	go func() { mdone <- m.Run(ctx) }()
	defer func() { cancel(); require.NoError(t, <-mdone) }()

	q = startQueue(t, Options{Path: path, Link: m, Topic: topics.Events, BatchRecords: 64, BatchDelay: 10 * time.Millisecond,
		RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	for i := range 1000 {
		q.Record(aggregate(i))
	}
	waitFor(t, "2000 records at the broker", 20*time.Second, func() bool { return len(arrivals()) >= 2000 })
	waitFor(t, "an empty queue", 10*time.Second, func() bool { s := q.Stats(); return s.LastSeq == 2000 && s.Depth == 0 })
	s := q.Stats()
	seen := checkDelivery(t, arrivals(), protocol.DropCounts{}, s.Epoch)
	require.Len(t, seen, 2000)
}
