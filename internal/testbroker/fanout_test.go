package testbroker

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// BenchmarkEventsFanout measures what controller replicas cost a broker
// that has no shared subscriptions (NATS's MQTT): every replica subscribes
// to every device's events topic, so each batch is delivered once per
// replica and the store drops the copies. Devices publishers send QoS 1
// messages of 1 KiB (a telemetry batch's order of size) on their own events
// topics, each waiting for its PUBACKs in a window of 64; subs persistent
// sessions (on different nodes of the cluster, as replicas would be)
// subscribe to outpost/v1/bench/+/events. It reports messages published per
// second and deliveries per second, from the first publish until every
// subscriber had every message. Mosquitto, the reference single broker, runs
// the same for comparison. Bounded: 8 publishers x 2,500 messages.
func BenchmarkEventsFanout(b *testing.B) {
	const devices, msgs, size, window = 8, 2500, 1024, 64
	// lossy: the broker is known to lose a few QoS 1 deliveries under load
	// (NATS 2.9's MQTT, docs/SCALE.md): the round reports them ("lost")
	// instead of failing. Mosquitto losing one fails the round.
	brokers := []struct {
		name  string
		urls  func(b *testing.B) []string
		lossy bool
	}{
		{"mosquitto", func(b *testing.B) []string { return []string{StartMosquitto(b, "").URL()} }, false},
		{"nats-3-nodes", func(b *testing.B) []string { return StartNATSCluster(b, 3).URLs() }, true},
	}
	for _, br := range brokers {
		b.Run(br.name, func(b *testing.B) {
			urls := br.urls(b)
			for _, subs := range []int{1, 2} {
				b.Run(fmt.Sprintf("subscribers=%d", subs), func(b *testing.B) {
					var pubRate, delRate float64
					lost := 0
					for i := range b.N {
						p, d, l := fanout(b, urls, fmt.Sprintf("%d-%d-%d", subs, i, time.Now().UnixNano()), devices, msgs, size, window, subs, br.lossy)
						pubRate += p
						delRate += d
						lost += l
					}
					b.ReportMetric(pubRate/float64(b.N), "published/s")
					b.ReportMetric(delRate/float64(b.N), "delivered/s")
					b.ReportMetric(float64(lost)/float64(b.N), "lost")
					b.ReportMetric(0, "ns/op")
				})
			}
		})
	}
}

// fanout runs one round and returns messages published per second,
// deliveries per second and the deliveries lost (a lossy broker's round
// ends when none came for stallLimit; any other broker's fails then).
func fanout(b *testing.B, urls []string, id string, devices, msgs, size, window, subs int, lossy bool) (float64, float64, int) {
	b.Helper()
	total := devices * msgs
	var delivered atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	connect := func(o *mqtt.ClientOptions) mqtt.Client {
		c := mqtt.NewClient(o.SetAutoReconnect(false).SetKeepAlive(60 * time.Second).SetWriteTimeout(30 * time.Second))
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.Fatalf("connect: %v", tok.Error())
		}
		return c
	}
	topic := "outpost/v1/bench-" + id + "/+/events"
	seens := make([][]atomic.Bool, subs)
	for s := range subs {
		seen := make([]atomic.Bool, total)
		seens[s] = seen
		c := connect(mqtt.NewClientOptions().AddBroker(urls[s%len(urls)]).SetClientID(fmt.Sprintf("sub-%s-%d", id, s)).
			SetCleanSession(false).SetOrderMatters(false))
		defer c.Disconnect(50)
		tok := c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
			n := binary.BigEndian.Uint64(m.Payload())
			if n < uint64(total) && !seen[n].Swap(true) {
				if delivered.Add(1) == int64(total*subs) {
					once.Do(func() { close(done) })
				}
			}
		})
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			b.Fatalf("subscribe: %v", tok.Error())
		}
	}
	pubs := make([]mqtt.Client, devices)
	for d := range pubs {
		pubs[d] = connect(mqtt.NewClientOptions().AddBroker(urls[d%len(urls)]).SetClientID(fmt.Sprintf("pub-%s-%d", id, d)).SetCleanSession(true))
		defer pubs[d].Disconnect(50)
	}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for d, c := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := fmt.Sprintf("outpost/v1/bench-%s/dev-%d/events", id, d)
			toks := make(chan mqtt.Token, window)
			var drain sync.WaitGroup
			drain.Add(1)
			go func() {
				defer drain.Done()
				for tok := range toks {
					if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
						failed.Add(1)
					}
				}
			}()
			for i := range msgs {
				p := make([]byte, size)
				binary.BigEndian.PutUint64(p, uint64(d*msgs+i))
				toks <- c.Publish(t, 1, false, p)
			}
			close(toks)
			drain.Wait()
		}()
	}
	wg.Wait()
	published := time.Since(start)
	if failed.Load() > 0 {
		b.Fatalf("%d publishes not acknowledged", failed.Load())
	}
	lost := waitDeliveries(b, done, &delivered, total*subs, lossy, func() string { return missing(seens, msgs) })
	elapsed := time.Since(start)
	b.StopTimer()
	if lost > 0 {
		// The last stallLimit waited for nothing.
		elapsed -= stallLimit
	}
	return float64(total) / published.Seconds(), float64(total*subs-lost) / elapsed.Seconds(), lost
}

// Waiting for the last deliveries: a loaded machine (make test-stress runs
// make test beside the benchmarks) can take long, and NATS redelivers a
// QoS 1 message whose PUBACK it did not see only after its ack wait (30 s
// by default), so a fixed budget fails rounds that lose nothing. The wait
// fails when no delivery came for stallLimit (longer than the ack wait),
// or after totalLimit in all.
const (
	stallLimit = 45 * time.Second
	totalLimit = 5 * time.Minute
)

func waitDeliveries(b *testing.B, done <-chan struct{}, delivered *atomic.Int64, want int, lossy bool, lost func() string) int {
	b.Helper()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start, last, lastAt := time.Now(), delivered.Load(), time.Now()
	for {
		select {
		case <-done:
			return 0
		case now := <-tick.C:
			if n := delivered.Load(); n != last {
				last, lastAt = n, now
			}
			if lossy && now.Sub(lastAt) > stallLimit {
				b.Logf("%d of %d deliveries lost (none came for %s): %s", want-int(last), want, stallLimit, lost())
				return want - int(last)
			}
			if now.Sub(lastAt) > stallLimit || now.Sub(start) > totalLimit {
				b.Fatalf("%d of %d deliveries; none for %s (%s in all); missing: %s", last, want, now.Sub(lastAt).Round(time.Second), now.Sub(start).Round(time.Second), lost())
			}
		}
	}
}

// missing says which messages a subscriber never got: per subscriber, per
// publisher, the positions in its sequence (a position near 0 is a message
// published right after the subscription was acknowledged).
func missing(seens [][]atomic.Bool, msgs int) string {
	var out []string
	for s, seen := range seens {
		byDevice := map[int][]int{}
		for n := range seen {
			if !seen[n].Load() {
				byDevice[n/msgs] = append(byDevice[n/msgs], n%msgs)
			}
		}
		for d, pos := range byDevice {
			if len(pos) > 8 {
				pos = append(pos[:4], pos[len(pos)-4:]...)
			}
			out = append(out, fmt.Sprintf("subscriber %d, publisher %d: %d, at %v", s, d, len(byDevice[d]), pos))
		}
	}
	return strings.Join(out, "; ")
}
