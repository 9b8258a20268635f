package telemetry

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

var testModel = protocol.ModelRef{Name: "face", Version: "1.0.0", Digest: "sha256:" + strings.Repeat("0f", 32)}

func sample(i int) protocol.Record {
	return protocol.Record{Kind: protocol.KindSample, Model: testModel, Sample: &protocol.Sample{
		RequestID: fmt.Sprintf("req-%d", i), Latency: time.Millisecond,
		Inputs: []protocol.TensorSample{{Name: "x", Datatype: "FP32", Shape: []int64{1, 4}, Data: make([]byte, 16)}},
	}}
}

func aggregate(i int) protocol.Record {
	return protocol.Record{Kind: protocol.KindAggregate, Model: testModel, Aggregate: &protocol.Aggregate{
		Requests: uint64(i), Latency: protocol.Histogram{BoundsMicros: []uint64{1000}, Counts: []uint64{uint64(i), 0}},
	}}
}

func audit(i int) protocol.Record {
	return protocol.Record{Kind: protocol.KindAudit, Model: testModel, Audit: &protocol.Audit{Actor: "test", Action: fmt.Sprintf("a-%d", i)}}
}

// running is a queue whose Run goroutine the test owns.
type running struct {
	*Queue
	cancel context.CancelFunc
	done   chan error
}

func startQueue(t testing.TB, opts Options) *running {
	t.Helper()
	q, err := New(opts)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Queue: q, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- q.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// stop cancels Run and waits for it; safe to call twice.
func (r *running) stop() {
	r.cancel()
	if err, ok := <-r.done; ok {
		if err != nil {
			panic(fmt.Sprintf("Run returned %v", err))
		}
		close(r.done)
	}
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// keys lists the sequence numbers in the priority bucket p of the file.
func keysOf(t testing.TB, path string, p protocol.Priority) []uint64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	require.NoError(t, err)
	defer db.Close()
	var seqs []uint64
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketByPrio[p]).ForEach(func(k, _ []byte) error {
			seqs = append(seqs, uint64(k[0])<<56|uint64(k[1])<<48|uint64(k[2])<<40|uint64(k[3])<<32|uint64(k[4])<<24|uint64(k[5])<<16|uint64(k[6])<<8|uint64(k[7]))
			return nil
		})
	}))
	return seqs
}

func TestNewNeedsPath(t *testing.T) {
	_, err := New(Options{})
	assert.ErrorIs(t, err, ErrNoPath)
}

func TestLinkNeedsTopic(t *testing.T) {
	l, err := fleetlink.New(fleetlink.Options{Broker: "tcp://127.0.0.1:1", Fleet: "f", Device: "d"})
	require.NoError(t, err)
	_, err = New(Options{Path: "q.db", Link: l})
	assert.ErrorIs(t, err, ErrNoTopic)
}

// TestSequenceRisesAcrossRestarts: numbers continue after a restart, and
// after everything was sent and deleted (the meta key, not the last key,
// carries them).
func TestSequenceRisesAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q := startQueue(t, Options{Path: path})
	ctx := context.Background()
	var last uint64
	for i := range 10 {
		seq, err := q.Emit(ctx, audit(i))
		require.NoError(t, err)
		assert.Equal(t, last+1, seq, "got seq %d after %d", seq, last)
		last = seq
	}
	epoch := q.Stats().Epoch
	q.stop()
	assert.Equal(t, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, keysOf(t, path, protocol.PriorityCritical))

	// Delete everything by hand, as an uplink would after PUBACKs.
	db, err := bolt.Open(path, 0o600, nil)
	require.NoError(t, err)
	require.NoError(t, db.Update(func(tx *bolt.Tx) error {
		require.NoError(t, tx.DeleteBucket(bucketByPrio[protocol.PriorityCritical]))
		_, err := tx.CreateBucket(bucketByPrio[protocol.PriorityCritical])
		return err
	}))
	require.NoError(t, db.Close())

	q = startQueue(t, Options{Path: path})
	seq, err := q.Emit(ctx, audit(11))
	require.NoError(t, err)
	assert.Equal(t, uint64(11), seq)
	s := q.Stats()
	assert.Equal(t, epoch, s.Epoch, "epoch changed on a clean restart")
	assert.Equal(t, 1, s.Depth)
}

// TestRecordNeverBlocks: with no writer running, Record returns at once;
// low-priority records that do not fit are counted, the others are kept and
// written once the queue runs.
func TestRecordNeverBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	q, err := New(Options{Path: path, Buffer: 8})
	require.NoError(t, err)
	start := time.Now()
	for i := range 100 {
		q.Record(sample(i))
	}
	for i := range 20 {
		q.Record(audit(i))
	}
	q.Record(aggregate(1))
	if d := time.Since(start); d > time.Second {
		t.Fatalf("Record took %v with a full channel", d)
	}
	assert.Equal(t, uint64(92), q.Stats().Dropped[protocol.DropBackpressure])

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- q.Run(ctx) }()
	waitFor(t, "all kept records written", 5*time.Second, func() bool { return q.Stats().Depth == 8+20+1 })
	s := q.Stats()
	assert.Equal(t, [3]int{8, 1, 20}, s.DepthByPriority)
	cancel()
	require.NoError(t, <-done)

	// The backpressure count was made durable with the first commit.
	q2 := startQueue(t, Options{Path: path})
	waitFor(t, "open", 5*time.Second, func() bool { return q2.Stats().Epoch != 0 })
	assert.Equal(t, uint64(92), q2.Stats().Dropped[protocol.DropBackpressure])
}

// TestBounds checks the eviction policy: oldest low-priority records go first,
// then normal ones; critical records stay even over the bound; every eviction
// is counted, and what is kept of each priority is its newest records.
func TestBounds(t *testing.T) {
	one := func() int64 {
		r := sample(0)
		r.Time = time.Unix(1, 0)
		b, err := protocol.AppendRecord(nil, &r)
		require.NoError(t, err)
		return int64(len(b) + recordOverhead)
	}()
	tests := []struct {
		name     string
		maxBytes int64
		records  []protocol.Record
		// check looks at the depth by priority: low, normal, critical.
		check func(t *testing.T, depth [3]int)
	}{
		{"under the bound", 100 * one, repeat(sample, 10), func(t *testing.T, d [3]int) {
			assert.Equal(t, [3]int{10, 0, 0}, d)
		}},
		{"low evicted first", 10 * one, append(repeat(aggregate, 3), repeat(sample, 20)...), func(t *testing.T, d [3]int) {
			assert.Equal(t, 3, d[1], "all aggregates kept")
			assert.Greater(t, d[0], 0, "some samples kept")
			assert.Less(t, d[0], 20, "some samples evicted")
		}},
		{"normal after low", 3 * one, append(repeat(sample, 5), repeat(aggregate, 30)...), func(t *testing.T, d [3]int) {
			assert.Equal(t, 0, d[0], "all samples evicted")
			assert.Greater(t, d[1], 0, "some aggregates kept")
			assert.Less(t, d[1], 30, "some aggregates evicted")
		}},
		{"critical never", 2 * one, append(repeat(audit, 10), repeat(sample, 5)...), func(t *testing.T, d [3]int) {
			assert.Equal(t, [3]int{0, 0, 10}, d)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "q.db")
			q := startQueue(t, Options{Path: path, MaxBytes: tt.maxBytes, MaxAge: -1})
			for _, r := range tt.records {
				_, err := q.Emit(context.Background(), r)
				require.NoError(t, err)
			}
			s := q.Stats()
			tt.check(t, s.DepthByPriority)
			assert.Equal(t, uint64(len(tt.records)-s.Depth), s.Dropped[protocol.DropEvicted], "evictions counted")
			assert.Equal(t, uint64(len(tt.records)), s.LastSeq)
			if s.DepthByPriority[0]+s.DepthByPriority[1] > 0 {
				assert.LessOrEqual(t, s.Bytes, tt.maxBytes, "over the bound with droppable records left")
			}
			q.stop()
			for p := range 3 {
				var all []uint64
				for i, r := range tt.records {
					if int(r.Kind.Priority()) == p {
						all = append(all, uint64(i+1))
					}
				}
				keys := keysOf(t, path, protocol.Priority(p))
				require.LessOrEqual(t, len(keys), len(all))
				assert.Equal(t, fmt.Sprint(all[len(all)-len(keys):]), fmt.Sprint(keys), "priority %d keeps its newest records", p)
			}
		})
	}
}

func repeat(f func(int) protocol.Record, n int) []protocol.Record {
	var rs []protocol.Record
	for i := range n {
		rs = append(rs, f(i))
	}
	return rs
}

// fakeClock is a Clock the test moves by hand; timers fire when Advance
// passes their deadline.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeTimer
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.c <- c.now
			continue
		}
		kept = append(kept, w)
	}
	c.waiters = kept
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, fakeTimer{at: c.now.Add(d), c: ch})
	return ch
}

func TestMaxAge(t *testing.T) {
	clk := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	q := startQueue(t, Options{Path: filepath.Join(t.TempDir(), "q.db"), MaxAge: time.Hour, Clock: clk, HealthInterval: -1})
	ctx := context.Background()
	for i := range 5 {
		_, err := q.Emit(ctx, sample(i))
		require.NoError(t, err)
		_, err = q.Emit(ctx, audit(i))
		require.NoError(t, err)
	}
	assert.Equal(t, 10, q.Stats().Depth)
	assert.Equal(t, time.Duration(0), q.Stats().OldestAge)
	clk.Advance(2 * time.Hour)
	assert.Equal(t, 2*time.Hour, q.Stats().OldestAge)
	require.Len(t, q.Stats().Warnings, 1, "records waiting for two hours should raise a warning")
	assert.Contains(t, q.Stats().Warnings[0], "10 records waiting")
	_, err := q.Emit(ctx, aggregate(1)) // a commit applies the bounds
	require.NoError(t, err)
	s := q.Stats()
	assert.Equal(t, [3]int{0, 1, 5}, s.DepthByPriority, "old samples expired, audits kept")
	assert.Equal(t, uint64(5), s.Dropped[protocol.DropExpired])
}

// TestCorruptFileMovedAside: a damaged queue file is moved aside, a new queue
// starts with a new epoch, and it says so in a warning and an audit record; a
// second start finds a healthy file and stays quiet.
func TestCorruptFileMovedAside(t *testing.T) {
	tests := []struct {
		name   string
		damage func(t *testing.T, f *os.File)
	}{
		{"meta pages zeroed", func(t *testing.T, f *os.File) {
			_, err := f.WriteAt(make([]byte, 8192), 0)
			require.NoError(t, err)
		}},
		{"truncated", func(t *testing.T, f *os.File) {
			require.NoError(t, f.Truncate(100))
		}},
		{"garbage", func(t *testing.T, f *os.File) {
			junk := make([]byte, 64<<10)
			for i := range junk {
				junk[i] = byte(i*7 + 3)
			}
			require.NoError(t, f.Truncate(0))
			_, err := f.WriteAt(junk, 0)
			require.NoError(t, err)
		}},
		{"branch page scribbled", func(t *testing.T, f *os.File) {
			// Past the two meta pages and the freelist: bucket and leaf pages.
			fi, err := f.Stat()
			require.NoError(t, err)
			junk := make([]byte, fi.Size()-4*4096)
			for i := range junk {
				junk[i] = 0xA5
			}
			_, err = f.WriteAt(junk, 4*4096)
			require.NoError(t, err)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "q.db")
			q := startQueue(t, Options{Path: path})
			for i := range 200 {
				_, err := q.Emit(context.Background(), audit(i))
				require.NoError(t, err)
			}
			oldEpoch := q.Stats().Epoch
			q.stop()

			f, err := os.OpenFile(path, os.O_RDWR, 0)
			require.NoError(t, err)
			tt.damage(t, f)
			require.NoError(t, f.Close())

			q = startQueue(t, Options{Path: path})
			waitFor(t, "the reset notice to be queued", 5*time.Second, func() bool { return q.Stats().Depth == 1 })
			s := q.Stats()
			assert.NotEqual(t, oldEpoch, s.Epoch)
			require.Len(t, s.Warnings, 1)
			assert.Contains(t, s.Warnings[0], "corrupt")
			assert.Equal(t, 1, s.DepthByPriority[protocol.PriorityCritical])
			assert.Equal(t, uint64(1), s.LastSeq, "a new epoch starts at 1")
			aside, _ := filepath.Glob(path + ".corrupt-*")
			assert.Len(t, aside, 1, "corrupt file kept for inspection")
			q.stop()
			recs := readRecords(t, path, protocol.PriorityCritical)
			require.Len(t, recs, 1)
			assert.Equal(t, "telemetry.queue_reset", recs[0].Audit.Action)

			q = startQueue(t, Options{Path: path})
			waitFor(t, "open", 5*time.Second, func() bool { return q.Stats().Epoch != 0 })
			assert.Empty(t, q.Stats().Warnings)
			assert.Equal(t, s.Epoch, q.Stats().Epoch)
		})
	}
}

// TestUnopenableQueueDegrades: when the file cannot be created at all, Run
// keeps retrying with a warning instead of failing the agent, Record still
// returns at once, and cancelling ends Run cleanly.
func TestUnopenableQueueDegrades(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "missing", "q.db")
	q := startQueue(t, Options{Path: path, Buffer: 4})
	waitFor(t, "a warning", 5*time.Second, func() bool { return len(q.Stats().Warnings) == 1 })
	assert.Contains(t, q.Stats().Warnings[0], "cannot open queue")
	for i := range 10 {
		q.Record(sample(i))
	}
	assert.Equal(t, uint64(6), q.Stats().Dropped[protocol.DropBackpressure])
	aside, _ := filepath.Glob(filepath.Join(dir, "missing", "*"))
	assert.Empty(t, aside, "nothing may be moved aside or created")

	// The directory appears (the data partition got mounted): the queue opens
	// at the next retry and takes what was handed over.
	require.NoError(t, os.Mkdir(filepath.Join(dir, "missing"), 0o700))
	waitFor(t, "the queue to open", 10*time.Second, func() bool { return q.Stats().Depth == 4 })
	assert.Empty(t, q.Stats().Warnings)
	q.stop()
}
