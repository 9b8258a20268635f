package testbroker

import (
	"encoding/binary"
	"fmt"
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
	brokers := []struct {
		name string
		urls func(b *testing.B) []string
	}{
		{"mosquitto", func(b *testing.B) []string { return []string{StartMosquitto(b, "").URL()} }},
		{"nats-3-nodes", func(b *testing.B) []string { return StartNATSCluster(b, 3).URLs() }},
	}
	for _, br := range brokers {
		b.Run(br.name, func(b *testing.B) {
			urls := br.urls(b)
			for _, subs := range []int{1, 2} {
				b.Run(fmt.Sprintf("subscribers=%d", subs), func(b *testing.B) {
					var pubRate, delRate float64
					for i := range b.N {
						p, d := fanout(b, urls, fmt.Sprintf("%d-%d-%d", subs, i, time.Now().UnixNano()), devices, msgs, size, window, subs)
						pubRate += p
						delRate += d
					}
					b.ReportMetric(pubRate/float64(b.N), "published/s")
					b.ReportMetric(delRate/float64(b.N), "delivered/s")
					b.ReportMetric(0, "ns/op")
				})
			}
		})
	}
}

// fanout runs one round and returns messages published per second and
// deliveries per second.
func fanout(b *testing.B, urls []string, id string, devices, msgs, size, window, subs int) (float64, float64) {
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
	for s := range subs {
		seen := make([]atomic.Bool, total)
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
	waitDeliveries(b, done, &delivered, total*subs)
	elapsed := time.Since(start)
	b.StopTimer()
	return float64(total) / published.Seconds(), float64(total*subs) / elapsed.Seconds()
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

func waitDeliveries(b *testing.B, done <-chan struct{}, delivered *atomic.Int64, want int) {
	b.Helper()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	start, last, lastAt := time.Now(), delivered.Load(), time.Now()
	for {
		select {
		case <-done:
			return
		case now := <-tick.C:
			if n := delivered.Load(); n != last {
				last, lastAt = n, now
			}
			if now.Sub(lastAt) > stallLimit || now.Sub(start) > totalLimit {
				b.Fatalf("%d of %d deliveries; none for %s (%s in all)", last, want, now.Sub(lastAt).Round(time.Second), now.Sub(start).Round(time.Second))
			}
		}
	}
}
