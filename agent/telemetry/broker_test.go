package telemetry

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/protocol"
)

// mosquittoPath finds the broker binary; Debian installs it in /usr/sbin.
func mosquittoPath(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("mosquitto not installed; make setup installs it")
	}
	t.Skip("mosquitto not installed; run make setup (or apt-get install mosquitto) to run this test")
	return ""
}

// broker is a real Mosquitto on a free loopback port, stopped at test end.
// Stop and Start restart it on the same port with its persistence kept, as a
// broker that goes away and comes back.
type broker struct {
	t    testing.TB
	bin  string
	conf string
	addr string
	mu   sync.Mutex
	cmd  *exec.Cmd
}

// startBroker starts Mosquitto with extra config lines appended.
func startBroker(t testing.TB, extra string) *broker {
	t.Helper()
	bin := mosquittoPath(t)
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if os.Geteuid() == 0 {
		// As root, Mosquitto switches to its own user, who cannot write our
		// temporary directory.
		extra = "user root\n" + extra
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	text := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nmax_queued_messages 0\nmax_inflight_messages 0\nlog_dest none\n%s\n", port, dir, extra)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &broker{t: t, bin: bin, conf: conf, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	b.Start()
	t.Cleanup(func() { b.stop(syscall.SIGKILL) })
	return b
}

func (b *broker) URL() string { return "tcp://" + b.addr }

// Start runs the broker and waits until it accepts connections.
func (b *broker) Start() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	cmd := exec.Command(b.bin, "-c", b.conf)
	if err := cmd.Start(); err != nil {
		b.t.Fatalf("start mosquitto: %v", err)
	}
	b.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("mosquitto did not come up on %s: %v", b.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the broker cleanly (it saves its sessions).
func (b *broker) Stop() { b.stop(syscall.SIGTERM) }

func (b *broker) stop(sig syscall.Signal) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Signal(sig)
	_ = b.cmd.Wait()
	b.cmd = nil
}

// arrival is one record as a subscriber saw it.
type arrival struct {
	epoch uint64
	seq   uint64
	kind  protocol.Kind
}

// collector subscribes to a device's events topic and records every record it
// receives, in arrival order.
type collector struct {
	t      testing.TB
	client mqtt.Client

	mu       sync.Mutex
	arrivals []arrival
	drops    map[uint64]protocol.DropCounts // epoch -> highest counters seen
	bad      []error
}

func newCollector(t testing.TB, b *broker, topic string) *collector {
	t.Helper()
	c := &collector{t: t, drops: map[uint64]protocol.DropCounts{}}
	subscribed := make(chan struct{})
	var once sync.Once
	o := mqtt.NewClientOptions().AddBroker(b.URL()).
		SetClientID(fmt.Sprintf("collector-%d", time.Now().UnixNano())).
		SetCleanSession(false).SetAutoReconnect(true).SetResumeSubs(true).
		SetMaxReconnectInterval(200 * time.Millisecond).SetConnectRetryInterval(100 * time.Millisecond).
		SetOnConnectHandler(func(cl mqtt.Client) {
			tok := cl.Subscribe(topic, 1, c.handle)
			if tok.WaitTimeout(10*time.Second) && tok.Error() == nil {
				once.Do(func() { close(subscribed) })
			}
		})
	c.client = mqtt.NewClient(o)
	if tok := c.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("collector connect: %v", tok.Error())
	}
	select {
	case <-subscribed:
	case <-time.After(10 * time.Second):
		t.Fatal("collector did not subscribe")
	}
	t.Cleanup(func() { c.client.Disconnect(100) })
	return c
}

func (c *collector) handle(_ mqtt.Client, msg mqtt.Message) {
	b, err := protocol.DecodeBatch(msg.Payload())
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.bad = append(c.bad, err)
		return
	}
	d := c.drops[b.Epoch]
	for i := range d {
		d[i] = max(d[i], b.Drops[i])
	}
	c.drops[b.Epoch] = d
	for _, e := range b.Entries {
		r, err := protocol.DecodeRecord(e.Body)
		if err != nil {
			c.bad = append(c.bad, err)
		}
		c.arrivals = append(c.arrivals, arrival{epoch: b.Epoch, seq: e.Seq, kind: r.Kind})
	}
}

// snapshot returns what arrived so far.
func (c *collector) snapshot() ([]arrival, map[uint64]protocol.DropCounts, []error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	drops := map[uint64]protocol.DropCounts{}
	for k, v := range c.drops {
		drops[k] = v
	}
	return append([]arrival(nil), c.arrivals...), drops, append([]error(nil), c.bad...)
}

// check verifies the delivery rules for one epoch and returns the distinct
// sequence numbers seen: new sequence numbers arrive in rising order (a
// repeat is a duplicate of one already seen), and the gaps between them add
// up to no more than the sequenced drops the device reported.
func checkDelivery(t testing.TB, arrivals []arrival, drops protocol.DropCounts, epoch uint64) map[uint64]bool {
	t.Helper()
	seen := map[uint64]bool{}
	var top uint64
	for _, a := range arrivals {
		if a.epoch != epoch {
			continue
		}
		if seen[a.seq] {
			continue
		}
		if a.seq < top {
			t.Fatalf("sequence %d arrived new after %d: out of order", a.seq, top)
		}
		seen[a.seq] = true
		top = a.seq
	}
	gaps := top - uint64(len(seen))
	if gaps > drops.Sequenced() {
		t.Fatalf("%d sequence numbers missing below %d, but only %d sequenced drops reported (%v)", gaps, top, drops.Sequenced(), drops)
	}
	return seen
}
