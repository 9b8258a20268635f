//go:build unix

package telemetry

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// The crash tests run the real queue and uplink in a child process: this test
// binary started again with OUTPOST_TELEMETRY_HELPER set, which TestMain sends
// to runHelper instead of the tests.
const helperEnv = "OUTPOST_TELEMETRY_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

// runHelper is the child. Modes:
//
//	append  Record as fast as it can while the uplink drains
//	drain   only drain
//	final   drain, print the final stats and exit 0 once the queue is empty
//	diskfull  append under a small file size limit, then print the stats
//
// It prints "R" once its queue file is open (made and initialized if it was
// not there), and "C <epoch> <last kept seq>" whenever the kept sequence grows:
// everything up to that number is committed, so the parent may hold the
// queue to it after a SIGKILL.
func runHelper(mode string) int {
	path := os.Getenv("HELPER_PATH")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var link Link
	var topic string
	var wg sync.WaitGroup
	defer wg.Wait()
	if url := os.Getenv("HELPER_BROKER"); url != "" {
		m, err := fleetlink.New(fleetlink.Options{
			Broker: url, Fleet: "test", Device: os.Getenv("HELPER_DEVICE"),
			BackoffMin: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond, ConnectTimeout: time.Second,
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = m.Run(ctx) }()
		link, topic = m, m.Topics().Events
	}
	var fsize syscall.Rlimit
	if mode == "diskfull" {
		// Writes past the limit fail with EFBIG, as on a full disk; the
		// signal that would kill us is what a full disk does not send.
		signal.Ignore(syscall.SIGXFSZ)
		if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &fsize); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		lim := syscall.Rlimit{Cur: 1 << 20, Max: fsize.Max}
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	// HELPER_MAX_BYTES bounds the queue (default 64 MiB): a small bound makes
	// the crash loop evict.
	maxBytes, _ := strconv.ParseInt(os.Getenv("HELPER_MAX_BYTES"), 10, 64)
	q, err := New(Options{Path: path, Link: link, Topic: topic, BatchDelay: 5 * time.Millisecond, MaxBytes: maxBytes,
		RetryMin: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("R")
	wg.Add(1)
	go func() { defer wg.Done(); _ = q.Run(ctx) }()

	appendCtx, stopAppends := context.WithCancel(ctx)
	defer stopAppends()
	var records atomic.Int64
	if mode == "diskfull" {
		// Some records fit before the disk fills.
		for i := range 50 {
			if _, err := q.Emit(ctx, audit(i)); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
	}
	if mode == "append" || mode == "diskfull" {
		for g := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; appendCtx.Err() == nil; i++ {
					records.Add(1)
					switch {
					case i%100 == 0:
						q.Record(aggregate(i))
					case i%500 == 7:
						q.Record(audit(i + g))
					default:
						q.Record(sample(i))
					}
					if i%256 == 0 {
						time.Sleep(100 * time.Microsecond) // leave the writer a core
					}
				}
			}()
		}
	}
	out := bufio.NewWriter(os.Stdout)
	var last uint64
	start := time.Now()
	for {
		time.Sleep(time.Millisecond)
		s := q.Stats()
		if s.LastSeq != last {
			last = s.LastSeq
			fmt.Fprintf(out, "C %d %d\n", s.Epoch, s.LastSeq)
			out.Flush()
		}
		// The disk is full once commits have failed for a while (or, on a
		// machine too slow to fill 1 MiB, after 30 s: the test then fails).
		if mode == "diskfull" && (s.WriteErrors > 0 && time.Since(start) > time.Second || time.Since(start) > 30*time.Second) {
			// The disk frees up: appends stop, the limit goes, and a critical
			// record must be kept again.
			stopAppends()
			_ = syscall.Setrlimit(syscall.RLIMIT_FSIZE, &fsize)
			ectx, cancelEmit := context.WithTimeout(ctx, 20*time.Second)
			_, err := q.Emit(ectx, audit(-1))
			cancelEmit()
			ok := 1
			if err != nil {
				fmt.Fprintln(os.Stderr, "emit after the disk freed up:", err)
				ok = 0
			}
			s := q.Stats()
			fmt.Fprintf(out, "S %d %d %d %d %d %d %d %d\n", s.Epoch, s.LastSeq, s.Depth, s.WriteErrors,
				s.Dropped[protocol.DropWriteFailed], ok, records.Load(), len(s.Warnings))
			out.Flush()
			cancel()
			wg.Wait()
			return 0
		}
		if mode == "final" && s.Epoch != 0 && s.Depth == 0 {
			fmt.Fprintf(out, "S %d %d %d %d %d\n", s.Epoch, s.LastSeq, s.Depth, s.WriteErrors, s.Dropped[protocol.DropWriteFailed])
			out.Flush()
			cancel()
			wg.Wait()
			return 0
		}
	}
}

// child is a running helper process.
type child struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	epoch uint64
	last  uint64        // highest kept sequence number it reported
	stats []uint64      // its "S" line, if any
	ready chan struct{} // closed at its "R" line
	moved chan struct{} // a token after each "C" line
	done  chan struct{}
}

func startChild(t *testing.T, mode, path string, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, "HELPER_PATH="+path)
	cmd.Env = append(cmd.Env, env...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	c := &child{cmd: cmd, ready: make(chan struct{}), moved: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			var nums []uint64
			for _, s := range f[1:] {
				n, _ := strconv.ParseUint(s, 10, 64)
				nums = append(nums, n)
			}
			c.mu.Lock()
			switch {
			case f[0] == "C" && len(nums) == 2:
				c.epoch, c.last = nums[0], max(c.last, nums[1])
				select {
				case c.moved <- struct{}{}:
				default:
				}
			case f[0] == "S":
				c.stats = nums
			case f[0] == "R":
				close(c.ready)
			}
			c.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	return c
}

// waitReady waits until the child has its queue file open, up to d. On a
// loaded machine starting the race-built binary alone can take longer than
// the crash loop's kill delays, so those count from here (or from the first
// commit, waitCommit): killing children that never reached their queue
// would prove nothing.
func (c *child) waitReady(t *testing.T, d time.Duration) {
	t.Helper()
	start := time.Now()
	select {
	case <-c.ready:
	case <-c.done:
		c.kill()
		t.Fatalf("helper exited before it opened its queue: %v", c.cmd.ProcessState)
	case <-time.After(d):
		c.kill()
		t.Fatalf("helper did not open its queue within %v", d)
	}
	if took := time.Since(start); took > time.Second {
		t.Logf("helper took %v to open its queue", took.Round(time.Millisecond))
	}
}

// waitCommit waits until the child reports a kept sequence number above
// seq, up to d, so a kill that follows lands amid its appends however slowly
// it started.
func (c *child) waitCommit(t *testing.T, seq uint64, d time.Duration) {
	t.Helper()
	timeout := time.After(d)
	for {
		if _, last, _ := c.report(); last > seq {
			return
		}
		select {
		case <-c.moved:
		case <-c.done:
			c.kill()
			t.Fatalf("helper exited before it committed a record: %v", c.cmd.ProcessState)
		case <-timeout:
			c.kill()
			t.Fatalf("helper committed no record within %v", d)
		}
	}
}

// kill SIGKILLs the child and waits for it.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	<-c.done
	_ = c.cmd.Wait()
}

// wait waits for the child to exit by itself, up to d.
func (c *child) wait(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(d):
		c.kill()
		t.Fatalf("helper did not finish within %v", d)
	}
	require.NoError(t, c.cmd.Wait())
}

func (c *child) report() (epoch, last uint64, stats []uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.epoch, c.last, c.stats
}

// crashLoops is the number of kill iterations: short by default, as many as
// OUTPOST_CRASH_LOOPS says for a long local run (OUTPOST_CRASH_LOOPS=200).
func crashLoops(t *testing.T) int {
	if s := os.Getenv("OUTPOST_CRASH_LOOPS"); s != "" {
		n, err := strconv.Atoi(s)
		require.NoError(t, err, "OUTPOST_CRASH_LOOPS")
		return n
	}
	return 5
}

// TestCrashLoop SIGKILLs the agent's queue and uplink again and again, during
// heavy appends (link up and link down) and during a drain, then lets a last
// run drain everything. Every record the child reported kept must reach the
// subscriber, new sequence numbers in rising order, with no gap at all, the
// broker must drop nothing, and the file must hold nothing afterwards.
//
// The appends outrun the uplink: left alone, the backlog grows by every loop
// until the queue reaches its byte bound (64 MiB, some 400,000 of these
// records, reached in about 30 loops here) and evicts the oldest samples, as
// designed. So whenever the backlog passes a quarter of the bound, a
// catch-up run drains it, unkilled. OUTPOST_CRASH_MAX_BYTES=N instead bounds
// the queue to N bytes and runs no catch-up, to crash amid evictions: then a
// kept record may be missing if the device reported it evicted.
//
// The wait for the last arrivals lasts as long as they keep coming, and a
// failure says where records went missing: dropped by the device, by the
// broker, or in between.
func TestCrashLoop(t *testing.T) {
	b := startBroker(t, "sys_interval 1")
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("test", dev)
	require.NoError(t, err)
	tal := newTally(t, b.URL(), topics.Events)
	path := filepath.Join(t.TempDir(), "q.db")
	up := []string{"HELPER_BROKER=" + b.URL(), "HELPER_DEVICE=" + dev}
	down := []string{"HELPER_BROKER=tcp://127.0.0.1:1", "HELPER_DEVICE=" + dev}
	evicting := os.Getenv("OUTPOST_CRASH_MAX_BYTES") != ""
	if evicting {
		s := os.Getenv("OUTPOST_CRASH_MAX_BYTES")
		up, down = append(up, "HELPER_MAX_BYTES="+s), append(down, "HELPER_MAX_BYTES="+s)
	}
	// A quarter of the queue's default bound: a loop adds well under the
	// other three quarters, even on a fast machine (about 11 MiB a loop
	// here).
	const catchUpBytes = 16 << 20
	catchUps := 0

	var epoch, kept uint64
	note := func(c *child) {
		e, last, _ := c.report()
		if last == 0 {
			return
		}
		if epoch == 0 {
			epoch = e
		}
		require.Equal(t, epoch, e, "the queue file was replaced: a crash corrupted it")
		require.GreaterOrEqual(t, last, kept, "kept sequence went backwards")
		kept = last
	}
	start := time.Now()
	loops := crashLoops(t)
	for i := range loops {
		if i == 0 {
			// A crash while the agent starts, before or while it makes
			// the queue file: the next start must take whatever is left.
			c := startChild(t, "append", path, up...)
			time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
			c.kill()
			note(c)
		}
		// Heavy appends with the link up: kill amid commits, publishes and deletes.
		c := startChild(t, "append", path, up...)
		c.waitCommit(t, kept, time.Minute)
		time.Sleep(time.Duration(150+rand.IntN(250)) * time.Millisecond)
		c.kill()
		note(c)
		// Heavy appends with the link down build a backlog...
		c = startChild(t, "append", path, down...)
		c.waitCommit(t, kept, time.Minute)
		time.Sleep(time.Duration(150+rand.IntN(250)) * time.Millisecond)
		c.kill()
		note(c)
		// ...which a drain-only run starts sending, and is killed amid it.
		c = startChild(t, "drain", path, up...)
		c.waitReady(t, time.Minute)
		time.Sleep(time.Duration(100+rand.IntN(150)) * time.Millisecond)
		c.kill()
		note(c)
		n, bytes, made := queued(t, path)
		if !made {
			require.Zero(t, kept, "no queue file, though a child reported records kept")
			t.Logf("loop %d/%d: every child died before it made the queue file", i+1, loops)
		}
		if !evicting && bytes > catchUpBytes {
			c = startChild(t, "final", path, up...)
			c.wait(t, 90*time.Second)
			note(c)
			catchUps++
			t.Logf("loop %d/%d: caught up a backlog of %d records (%.1f MiB)", i+1, loops, n, float64(bytes)/(1<<20))
		}
		t.Logf("loop %d/%d: %d records kept so far", i+1, loops, kept)
	}
	backlog, backlogBytes, _ := queued(t, path)
	c := startChild(t, "final", path, up...)
	c.wait(t, 90*time.Second)
	note(c)
	_, _, stats := c.report()
	require.Len(t, stats, 5, "final stats line")
	assert.Equal(t, uint64(0), stats[2], "final depth")
	require.Greater(t, kept, uint64(0))
	drained := time.Now()

	// Everything is acknowledged by the broker now; wait for the subscriber
	// while it makes progress.
	var got, missing uint64
	var drops protocol.DropCounts
	err = tal.waitProgress(30*time.Second, 10*time.Minute, func() bool {
		got, drops = tal.delivered(epoch, kept)
		missing = kept - got
		if evicting {
			return missing <= drops[protocol.DropEvicted]
		}
		return missing == 0
	})
	// Mosquitto publishes its counters every sys_interval (1 s), so this
	// one may lag the last second.
	waitFor(t, "Mosquitto's $SYS/broker/publish/messages/dropped", 5*time.Second, func() bool { return tal.brokerDropped() != "" })
	brokerDropped := tal.brokerDropped()
	if err != nil {
		where := "between broker and subscriber, though the broker counted no drop"
		switch {
		case brokerDropped != "0":
			where = "dropped by the broker"
		case drops.Sequenced() > 0:
			where = "dropped by the device"
		}
		t.Fatalf("%v: %d of %d kept records never reached the subscriber (%s); the device reported %d evicted, %d expired, %d quarantined; Mosquitto reported %s publishes dropped",
			err, missing, kept, where, drops[protocol.DropEvicted], drops[protocol.DropExpired], drops[protocol.DropQuarantined], brokerDropped)
	}
	bad, disorder := tal.problems()
	require.Empty(t, bad, "undecodable batches")
	require.Empty(t, disorder, "new sequence numbers out of order")
	if !evicting {
		assert.Zero(t, drops[protocol.DropEvicted], "evicted records")
	}
	assert.Zero(t, drops[protocol.DropExpired], "expired records")
	assert.Zero(t, drops[protocol.DropQuarantined], "quarantined records")
	assert.Equal(t, "0", brokerDropped, "Mosquitto's $SYS/broker/publish/messages/dropped")
	for p := range 3 {
		assert.Empty(t, keysOf(t, path, protocol.Priority(p)), "records left in bucket %d", p)
	}
	arrivals, distinct := tal.counts(epoch)
	t.Logf("%d loops in %v: %d records kept, %d delivered (%d evicted by the device, %d missing), %d arrivals (%d duplicates); %d catch-up drains; backlog before the final drain %d records, %.1f MiB; the last arrived %v after the final drain; backpressure drops %d; broker dropped %s",
		loops, drained.Sub(start).Round(time.Second), kept, got, drops[protocol.DropEvicted], missing, arrivals, arrivals-distinct,
		catchUps, backlog, float64(backlogBytes)/(1<<20), tal.lastArrival().Sub(drained).Round(time.Millisecond), drops[protocol.DropBackpressure], brokerDropped)
}

// queued counts the records in the queue file and their bytes as the queue
// counts them against MaxBytes.
//
// A child killed before it created the file, or before bbolt wrote the
// file's first pages (an empty file), is a legitimate crash point: the
// agent's next start makes a new, empty queue there, so queued reports an
// empty queue, and made false. On a loaded machine the three children of a
// loop can all die that early; such children committed nothing, which the
// caller checks.
func queued(t testing.TB, path string) (n int, bytes int64, made bool) {
	t.Helper()
	if fi, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) || err == nil && fi.Size() == 0 {
		return 0, 0, false
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.View(func(tx *bolt.Tx) error {
		for _, name := range bucketByPrio {
			if b := tx.Bucket(name); b != nil {
				_ = b.ForEach(func(_, v []byte) error {
					n++
					bytes += int64(len(v) + recordOverhead)
					return nil
				})
			}
		}
		return nil
	}))
	return n, bytes, true
}

// tally subscribes to a device's events topic and counts what arrives in
// constant memory per record (a bit per sequence number), so a crash loop of
// millions of records is checked as cheaply as a short one. New sequence
// numbers must arrive in rising order within an epoch.
type tally struct {
	client mqtt.Client

	mu       sync.Mutex
	epochs   map[uint64]*epochTally
	bad      []error
	disorder []string
	last     time.Time // of the last arrival
	sysDrop  string    // Mosquitto's $SYS/broker/publish/messages/dropped
}

type epochTally struct {
	seen     []uint64 // bit per sequence number
	distinct uint64
	arrivals uint64
	top      uint64
	drops    protocol.DropCounts // highest counters seen
}

func newTally(t testing.TB, url, topic string) *tally {
	t.Helper()
	tl := &tally{epochs: map[uint64]*epochTally{}}
	subscribed := make(chan struct{})
	var once sync.Once
	o := mqtt.NewClientOptions().AddBroker(url).
		SetClientID(fmt.Sprintf("tally-%d", time.Now().UnixNano())).
		SetCleanSession(false).SetAutoReconnect(true).SetResumeSubs(true).
		SetMaxReconnectInterval(200 * time.Millisecond).SetConnectRetryInterval(100 * time.Millisecond).
		SetOnConnectHandler(func(cl mqtt.Client) {
			tok := cl.SubscribeMultiple(map[string]byte{topic: 1, "$SYS/broker/publish/messages/dropped": 0}, tl.handle)
			if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
				once.Do(func() { close(subscribed) })
			}
		})
	tl.client = mqtt.NewClient(o)
	if tok := tl.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("tally connect: %v", tok.Error())
	}
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("tally did not subscribe")
	}
	t.Cleanup(func() { tl.client.Disconnect(100) })
	return tl
}

func (tl *tally) handle(_ mqtt.Client, msg mqtt.Message) {
	if strings.HasPrefix(msg.Topic(), "$SYS/") {
		tl.mu.Lock()
		tl.sysDrop = string(msg.Payload())
		tl.mu.Unlock()
		return
	}
	b, err := protocol.DecodeBatch(msg.Payload())
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.last = time.Now()
	if err != nil {
		tl.bad = append(tl.bad, err)
		return
	}
	e := tl.epochs[b.Epoch]
	if e == nil {
		e = &epochTally{}
		tl.epochs[b.Epoch] = e
	}
	for i := range e.drops {
		e.drops[i] = max(e.drops[i], b.Drops[i])
	}
	for _, en := range b.Entries {
		if _, err := protocol.DecodeRecord(en.Body); err != nil {
			tl.bad = append(tl.bad, err)
		}
		e.arrivals++
		w := en.Seq / 64
		for uint64(len(e.seen)) <= w {
			e.seen = append(e.seen, 0)
		}
		if e.seen[w]&(1<<(en.Seq%64)) != 0 {
			continue // a duplicate
		}
		e.seen[w] |= 1 << (en.Seq % 64)
		e.distinct++
		if en.Seq < e.top && len(tl.disorder) < 10 {
			tl.disorder = append(tl.disorder, fmt.Sprintf("sequence %d arrived new after %d", en.Seq, e.top))
		}
		e.top = max(e.top, en.Seq)
	}
}

// delivered returns how many of the sequence numbers 1..kept of epoch
// arrived, and the epoch's drop counters.
func (tl *tally) delivered(epoch, kept uint64) (uint64, protocol.DropCounts) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	e := tl.epochs[epoch]
	if e == nil {
		return 0, protocol.DropCounts{}
	}
	if e.top <= kept {
		return e.distinct, e.drops
	}
	var n uint64
	for s := uint64(1); s <= kept; s++ {
		if s/64 < uint64(len(e.seen)) && e.seen[s/64]&(1<<(s%64)) != 0 {
			n++
		}
	}
	return n, e.drops
}

// waitProgress waits until done, for as long as records keep arriving: it
// fails after idle without an arrival, or after most in all.
func (tl *tally) waitProgress(idle, most time.Duration, done func() bool) error {
	start := time.Now()
	for !done() {
		tl.mu.Lock()
		last := tl.last
		tl.mu.Unlock()
		if last.Before(start) {
			last = start
		}
		switch {
		case time.Since(last) > idle:
			return fmt.Errorf("nothing arrived for %v", idle)
		case time.Since(start) > most:
			return fmt.Errorf("still arriving after %v", most)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func (tl *tally) problems() (bad []error, disorder []string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return append([]error(nil), tl.bad...), append([]string(nil), tl.disorder...)
}

func (tl *tally) counts(epoch uint64) (arrivals, distinct uint64) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if e := tl.epochs[epoch]; e != nil {
		return e.arrivals, e.distinct
	}
	return 0, 0
}

func (tl *tally) lastArrival() time.Time {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.last
}

func (tl *tally) brokerDropped() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.sysDrop
}

// TestDiskFull runs appends under a file size limit, as on a full disk:
// commits fail and are counted, Record keeps returning, the process lives on,
// and once the limit goes a critical record is kept again and the warning
// clears.
func TestDiskFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "q.db")
	c := startChild(t, "diskfull", path)
	c.wait(t, 60*time.Second)
	_, _, stats := c.report()
	require.Len(t, stats, 8, "stats line")
	last, writeErrors, dropped, emitOK, records, warnings := stats[1], stats[3], stats[4], stats[5], stats[6], stats[7]
	assert.GreaterOrEqual(t, last, uint64(51), "records written before the disk filled, and the one after")
	assert.Greater(t, writeErrors, uint64(0), "no write failed: is the limit too high?")
	assert.Greater(t, dropped, uint64(0), "write failures not counted as drops")
	assert.Equal(t, uint64(1), emitOK, "a critical record was not kept after the disk freed up")
	assert.Greater(t, records, dropped, "Record stopped being called")
	assert.Equal(t, uint64(0), warnings, "the write warning did not clear")
	t.Logf("kept %d records, %d failed commits, %d records dropped for it, %d Record calls", last, writeErrors, dropped, records)
}

// TestStateTopic: the retained state says online while the agent is
// connected, offline after a clean stop, and offline through the last will
// after a SIGKILL.
func TestStateTopic(t *testing.T) {
	b := startBroker(t, "")
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("test", dev)
	require.NoError(t, err)
	states := make(chan string, 16)
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID(dev + "-watch"))
	tok := sub.Connect()
	require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "connect: %v", tok.Error())
	defer sub.Disconnect(100)
	tok = sub.Subscribe(topics.State, 1, func(_ mqtt.Client, m mqtt.Message) { states <- string(m.Payload()) })
	require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "subscribe: %v", tok.Error())
	next := func(want string) {
		t.Helper()
		select {
		case got := <-states:
			require.Equal(t, want, got)
		case <-time.After(10 * time.Second):
			t.Fatalf("no state message, want %q", want)
		}
	}

	m, err := fleetlink.New(fleetlink.Options{Broker: b.URL(), Fleet: "test", Device: dev})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	next(protocol.StateOnline)
	cancel()
	require.NoError(t, <-done)
	next(protocol.StateOffline)

	path := filepath.Join(t.TempDir(), "q.db")
	c := startChild(t, "drain", path, "HELPER_BROKER="+b.URL(), "HELPER_DEVICE="+dev)
	next(protocol.StateOnline)
	c.kill()
	next(protocol.StateOffline) // the broker's last will
}
