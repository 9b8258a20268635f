package broker_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/broker"
	"github.com/outpost-edge/outpost/protocol"
)

// TestConnectionMemory: what an idle device connection (persistent
// session, its cmd and chunk subscriptions) costs the broker's heap and
// stacks, with the default options. The all-in-one controller holds one per
// device, so this bounds the fleet it can hold: at the bound, 10,000 devices
// take about 1.1 GiB. The clients are raw TCP connections speaking MQTT, so
// that only the broker's side is counted.
func TestConnectionMemory(t *testing.T) {
	const n = 200
	const bound = 112 << 10
	b, err := broker.New(broker.Options{Addr: "127.0.0.1:0", Open: true, Fleet: "f"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	before := heap()
	var cls []net.Conn
	// MQTT 3.1.1 CONNECT (clean session off, no keepalive) and SUBSCRIBE.
	str := func(s string) []byte { return append([]byte{byte(len(s) >> 8), byte(len(s))}, s...) }
	pkt := func(h byte, body []byte) []byte {
		return append([]byte{h, byte(len(body) | 0x80), byte(len(body) >> 7)}, body...)
	}
	for i := range n {
		id := fmt.Sprintf("d%d", i)
		tp, _ := protocol.DeviceTopics("f", id)
		c, err := net.DialTimeout("tcp", b.Addr(), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		body := append(str("MQTT"), 4, 0, 0, 0)
		body = append(body, str(id)...)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(pkt(0x10, body))
		buf := make([]byte, 4) // CONNACK
		if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 0x20 || buf[3] != 0 {
			t.Fatalf("CONNACK %x: %v", buf, err)
		}
		sub := []byte{0, 1}
		sub = append(append(sub, str(tp.Cmd)...), 1)
		sub = append(append(sub, str(tp.Chunk)...), 1)
		c.Write(pkt(0x82, sub))
		buf = make([]byte, 6) // SUBACK
		if _, err := io.ReadFull(c, buf); err != nil || buf[0] != 0x90 || buf[4] != 1 || buf[5] != 1 {
			t.Fatalf("SUBACK %x: %v", buf, err)
		}
		cls = append(cls, c)
	}
	after := heap()
	for _, c := range cls {
		c.Close()
	}
	per := float64(after-before) / n
	t.Logf("%d idle device connections: %.1f KiB each", n, per/1024)
	if per > bound {
		t.Errorf("%.1f KiB per idle device connection, bound %d KiB", per/1024, bound>>10)
	}
}
