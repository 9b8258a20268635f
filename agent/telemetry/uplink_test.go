package telemetry

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startMQTT runs a fleet link to b for a device named after the test.
func startMQTT(t testing.TB, b *testbroker.Mosquitto, device string) *fleetlink.Link {
	t.Helper()
	m, err := fleetlink.New(fleetlink.Options{
		Broker: b.URL(), Fleet: "test", Device: device,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		ConnectTimeout: 2 * time.Second, AckTimeout: 5 * time.Second,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("fleetlink Run: %v", err)
		}
	})
	return m
}

func deviceName(t testing.TB) string {
	return strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
}

// TestDrainInOrderAcrossBrokerRestart: records queued while the broker is
// up, down and up again all arrive, new sequence numbers in rising order, and
// the queue ends empty.
func TestDrainInOrderAcrossBrokerRestart(t *testing.T) {
	b := startBroker(t, "")
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("test", dev)
	require.NoError(t, err)
	col := newCollector(t, b, topics.Events)
	m := startMQTT(t, b, dev)
	q := startQueue(t, Options{
		Path: filepath.Join(t.TempDir(), "q.db"), Link: m, Topic: m.Topics().Events,
		BatchRecords: 100, BatchDelay: 20 * time.Millisecond,
		RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond,
	})
	const n = 3000
	emit := func(from, to int) {
		for i := from; i < to; i++ {
			switch i % 10 {
			case 0:
				q.Record(aggregate(i))
			case 5:
				q.Record(audit(i))
			default:
				q.Record(sample(i))
			}
			if i%200 == 0 {
				time.Sleep(time.Millisecond) // stay below the channel's capacity
			}
		}
	}
	emit(0, n/3)
	waitFor(t, "some records published", 10*time.Second, func() bool { return q.Stats().Published > 0 })
	b.Stop()
	emit(n/3, 2*n/3)
	waitFor(t, "the uplink to notice", 10*time.Second, func() bool { return !m.Connected() })
	backlog := q.Stats().Depth
	b.Start()
	emit(2*n/3, n)
	waitFor(t, "the queue to drain", 30*time.Second, func() bool {
		s := q.Stats()
		return s.Depth == 0 && s.LastSeq == n
	})
	s := q.Stats()
	require.Zero(t, s.Dropped.Total(), "nothing should be dropped here: %v", s.Dropped)
	waitFor(t, "all records at the subscriber", 10*time.Second, func() bool {
		a, _, _ := col.snapshot()
		seen := map[uint64]bool{}
		for _, x := range a {
			seen[x.seq] = true
		}
		if len(seen) != n {
			t.Logf("seen %d of %d", len(seen), n)
		}
		return len(seen) == n
	})
	arrivals, drops, bad := col.snapshot()
	require.Empty(t, bad)
	seen := checkDelivery(t, arrivals, drops[s.Epoch], s.Epoch)
	assert.Len(t, seen, n)
	assert.Greater(t, backlog, 0, "the broker outage should have left a backlog")
	t.Logf("%d records, %d arrivals (%d duplicates), backlog during outage %d", n, len(arrivals), len(arrivals)-n, backlog)
}

// TestPoisonRecordQuarantined: a record the broker refuses (over its packet
// size limit, so it drops the connection every time) is quarantined after
// MaxAttempts and the records behind it get through.
func TestPoisonRecordQuarantined(t *testing.T) {
	b := startBroker(t, "max_packet_size 20000")
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("test", dev)
	require.NoError(t, err)
	col := newCollector(t, b, topics.Events)
	m := startMQTT(t, b, dev)
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := New(Options{
		Path: path, Link: m, Topic: topics.Events, BatchRecords: 50, BatchDelay: 10 * time.Millisecond,
		MaxAttempts: 2, RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond,
	})
	require.NoError(t, err)
	// Queue everything before Run so the poison record sits in a batch.
	for i := range 40 {
		if i == 17 {
			big := sample(i)
			big.Sample.Inputs[0].Data = make([]byte, 30000)
			q.Record(big)
			continue
		}
		q.Record(audit(i))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Run(ctx) }()
	defer func() { cancel(); require.NoError(t, <-done) }()

	waitFor(t, "the queue to drain past the poison record", 60*time.Second, func() bool {
		s := q.Stats()
		return s.LastSeq == 40 && s.Depth == 0
	})
	s := q.Stats()
	assert.Equal(t, uint64(1), s.Dropped[protocol.DropQuarantined])
	assert.Equal(t, 1, s.Quarantined)
	entries, err := q.Quarantine()
	require.NoError(t, err)
	require.Len(t, entries, 1)
	assert.Equal(t, uint64(18), entries[0].Seq)
	r, err := protocol.DecodeRecord(entries[0].Body)
	require.NoError(t, err)
	assert.Equal(t, "req-17", r.Sample.RequestID, "the poison record is kept whole")
	waitFor(t, "39 records at the subscriber", 10*time.Second, func() bool {
		a, _, _ := col.snapshot()
		seen := map[uint64]bool{}
		for _, x := range a {
			seen[x.seq] = true
		}
		return len(seen) == 39
	})
	arrivals, drops, _ := col.snapshot()
	seen := checkDelivery(t, arrivals, drops[s.Epoch], s.Epoch)
	assert.False(t, seen[18], "the poison record (seq 18) was delivered")
	assert.Equal(t, uint64(1), drops[s.Epoch][protocol.DropQuarantined], "the drop is reported in a later batch")
}

// slowAck delays what Publish returns, as a PUBACK crossing a slow link
// would: loopback is too fast to ever catch a batch in flight.
type slowAck struct {
	Link
	d time.Duration
}

func (s slowAck) Publish(ctx context.Context, topic string, retained bool, payload []byte) error {
	if err := s.Link.Publish(ctx, topic, retained, payload); err != nil {
		return err
	}
	select {
	case <-time.After(s.d):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestCleanRestartsSendNoDuplicates: stopping the agent by its context
// (not a crash) lets the batch in flight finish, so restarts while records
// flow leave the receiver nothing to de-duplicate.
func TestCleanRestartsSendNoDuplicates(t *testing.T) {
	b := startBroker(t, "")
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("test", dev)
	require.NoError(t, err)
	col := newCollector(t, b, topics.Events)
	path := filepath.Join(t.TempDir(), "q.db")
	var last uint64
	for round := range 3 {
		m, err := fleetlink.New(fleetlink.Options{Broker: b.URL(), Fleet: "test", Device: dev,
			BackoffMin: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		mdone := make(chan error, 1)
		go func() { mdone <- m.Run(ctx) }()
		q, err := New(Options{Path: path, Link: slowAck{m, 20 * time.Millisecond}, Topic: topics.Events, BatchRecords: 50, BatchDelay: time.Millisecond})
		require.NoError(t, err)
		qdone := make(chan error, 1)
		go func() { qdone <- q.Run(ctx) }()
		for i := range 2000 {
			q.Record(audit(round*2000 + i))
			if i%100 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
		waitFor(t, "some records published", 10*time.Second, func() bool { return q.Stats().Published > 0 })
		cancel() // while batches are in flight
		require.NoError(t, <-qdone)
		require.NoError(t, <-mdone)
		last = q.Stats().LastSeq
	}
	// A last run drains what is left.
	m := startMQTT(t, b, dev)
	q := startQueue(t, Options{Path: path, Link: m, Topic: topics.Events, BatchDelay: time.Millisecond})
	waitFor(t, "the rest drained", 10*time.Second, func() bool { s := q.Stats(); return s.Epoch != 0 && s.Depth == 0 })
	require.Equal(t, uint64(6000), last)
	waitFor(t, "6000 records at the subscriber", 10*time.Second, func() bool {
		a, _, _ := col.snapshot()
		return len(a) >= 6000
	})
	arrivals, _, _ := col.snapshot()
	seen := checkDelivery(t, arrivals, protocol.DropCounts{}, q.Stats().Epoch)
	assert.Len(t, seen, 6000)
	assert.Equal(t, len(seen), len(arrivals), "duplicates after clean restarts")
}

// TestGapsMatchDrops: records evicted while the broker is away leave gaps in
// the sequence, and the gaps the receiver sees add up exactly to the
// sequenced drops the batches report; the critical records all arrive.
func TestGapsMatchDrops(t *testing.T) {
	b := startBroker(t, "")
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("test", dev)
	require.NoError(t, err)
	col := newCollector(t, b, topics.Events)
	b.Stop()
	m := startMQTT(t, b, dev)
	q := startQueue(t, Options{Path: filepath.Join(t.TempDir(), "q.db"), Link: m, Topic: m.Topics().Events, MaxBytes: 64 << 10,
		BatchRecords: 100, BatchDelay: 5 * time.Millisecond, RetryMin: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	var audits []uint64
	for i := range 3000 {
		r := sample(i)
		if i%100 == 0 {
			r = audit(i)
			audits = append(audits, uint64(i+1)) // the channel holds all, in order
		}
		q.Record(r)
	}
	waitFor(t, "all written", 10*time.Second, func() bool { return q.Stats().LastSeq == 3000 })
	s := q.Stats()
	require.Zero(t, s.Dropped[protocol.DropBackpressure])
	require.Greater(t, s.Dropped[protocol.DropEvicted], uint64(0), "the bound should have evicted")
	b.Start()
	waitFor(t, "the queue to drain", 30*time.Second, func() bool { return q.Stats().Depth == 0 })
	s = q.Stats()
	want := 3000 - int(s.Dropped.Sequenced())
	waitFor(t, "the survivors at the subscriber", 10*time.Second, func() bool {
		a, _, _ := col.snapshot()
		return len(a) >= want
	})
	arrivals, drops, _ := col.snapshot()
	seen := checkDelivery(t, arrivals, drops[s.Epoch], s.Epoch)
	assert.Equal(t, s.Dropped, drops[s.Epoch], "the last batch carries the final counters")
	var top uint64
	for seq := range seen {
		top = max(top, seq)
	}
	assert.Equal(t, uint64(3000), top)
	assert.Equal(t, drops[s.Epoch].Sequenced(), top-uint64(len(seen)), "gaps must equal sequenced drops")
	for _, a := range audits {
		assert.True(t, seen[a], "audit record %d lost", a)
	}
}
