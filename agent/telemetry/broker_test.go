package telemetry

import (
	"fmt"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
)

// startBroker starts a real Mosquitto with extra config lines appended.
func startBroker(t testing.TB, extra string) *testbroker.Mosquitto {
	t.Helper()
	return testbroker.StartMosquitto(t, extra)
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

func newCollector(t testing.TB, b *testbroker.Mosquitto, topic string) *collector {
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
