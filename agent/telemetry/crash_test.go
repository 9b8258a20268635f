//go:build unix

package telemetry

import (
	"bufio"
	"context"
	"fmt"
	"io"
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
// It prints "C <epoch> <last kept seq>" whenever the kept sequence grows:
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
	q, err := New(Options{Path: path, Link: link, Topic: topic, BatchDelay: 5 * time.Millisecond,
		RetryMin: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
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
	last  uint64   // highest kept sequence number it reported
	stats []uint64 // its "S" line, if any
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
	c := &child{cmd: cmd, done: make(chan struct{})}
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
			case f[0] == "S":
				c.stats = nums
			}
			c.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	return c
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
// subscriber, new sequence numbers in rising order, with no gap at all (no
// sequenced drops happen here), and the file must hold nothing afterwards.
func TestCrashLoop(t *testing.T) {
	b := startBroker(t, "")
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("test", dev)
	require.NoError(t, err)
	col := newCollector(t, b, topics.Events)
	path := filepath.Join(t.TempDir(), "q.db")
	up := []string{"HELPER_BROKER=" + b.URL(), "HELPER_DEVICE=" + dev, fmt.Sprintf("HELPER_CLIENT=%s-%d", dev, time.Now().UnixNano())}
	down := []string{"HELPER_BROKER=tcp://127.0.0.1:1", "HELPER_DEVICE=" + dev, "HELPER_CLIENT=down"}

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
	loops := crashLoops(t)
	for i := range loops {
		// Heavy appends with the link up: kill amid commits, publishes and deletes.
		c := startChild(t, "append", path, up...)
		time.Sleep(time.Duration(150+rand.IntN(250)) * time.Millisecond)
		c.kill()
		note(c)
		// Heavy appends with the link down build a backlog...
		c = startChild(t, "append", path, down...)
		time.Sleep(time.Duration(150+rand.IntN(250)) * time.Millisecond)
		c.kill()
		note(c)
		// ...which a drain-only run starts sending, and is killed amid it.
		c = startChild(t, "drain", path, up...)
		time.Sleep(time.Duration(100+rand.IntN(150)) * time.Millisecond)
		c.kill()
		note(c)
		t.Logf("loop %d/%d: %d records kept so far", i+1, loops, kept)
	}
	c := startChild(t, "final", path, up...)
	c.wait(t, 90*time.Second)
	note(c)
	_, _, stats := c.report()
	require.Len(t, stats, 5, "final stats line")
	assert.Equal(t, uint64(0), stats[2], "final depth")
	require.Greater(t, kept, uint64(0))

	waitFor(t, "every kept record at the subscriber", 30*time.Second, func() bool {
		a, _, _ := col.snapshot()
		n := 0
		seen := map[uint64]bool{}
		for _, x := range a {
			if x.epoch == epoch && x.seq <= kept && !seen[x.seq] {
				seen[x.seq] = true
				n++
			}
		}
		return uint64(n) == kept
	})
	arrivals, drops, bad := col.snapshot()
	require.Empty(t, bad, "undecodable batches")
	assert.Zero(t, drops[epoch].Sequenced(), "no sequenced drops expected: %v", drops[epoch])
	seen := checkDelivery(t, arrivals, drops[epoch], epoch)
	for s := uint64(1); s <= kept; s++ {
		if !seen[s] {
			t.Fatalf("kept record %d never arrived", s)
		}
	}
	for p := range 3 {
		assert.Empty(t, keysOf(t, path, protocol.Priority(p)), "records left in bucket %d", p)
	}
	t.Logf("%d loops, %d records kept and delivered, %d arrivals (%d duplicates), backpressure drops %d",
		loops, kept, len(arrivals), len(arrivals)-len(seen), drops[epoch][protocol.DropBackpressure])
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
	c := startChild(t, "drain", path, "HELPER_BROKER="+b.URL(), "HELPER_DEVICE="+dev, "HELPER_CLIENT="+dev)
	next(protocol.StateOnline)
	c.kill()
	next(protocol.StateOffline) // the broker's last will
}
