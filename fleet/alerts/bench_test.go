package alerts

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/testpg"
)

// BenchmarkEmit: one durable Emit (one row, one synced transaction) on
// each engine: what an event costs the flow that sees it.
func BenchmarkEmit(b *testing.B) {
	for _, eng := range []string{"sqlite", "postgres"} {
		b.Run(eng, func(b *testing.B) {
			store := ""
			if eng == "postgres" {
				store = testpg.Database(b)
			}
			reg, err := registry.Open(b.TempDir(), registry.Options{Store: store})
			if err != nil {
				b.Fatal(err)
			}
			defer reg.Close()
			o, err := New(Options{Registry: reg, Fleet: "acme", Config: Config{Webhooks: []Webhook{{Name: "ml", URL: "http://127.0.0.1:9/", Secret: secret}}}})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			b.ResetTimer()
			for i := range b.N {
				if err := o.Emit(ctx, Event{Type: Drift, ID: strconv.Itoa(i), Data: seqData{i}}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkDeliver: events emitted up front, then delivered one at a time
// to a receiver on loopback (post, answer, record): a webhook's drain rate
// on the embedded store.
func BenchmarkDeliver(b *testing.B) {
	var got atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got.Add(1) == n {
			close(done)
		}
	}))
	defer rc.Close()
	reg, err := registry.Open(b.TempDir(), registry.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	o, err := New(Options{Registry: reg, Fleet: "acme", Config: Config{Webhooks: []Webhook{{Name: "ml", URL: rc.URL, Secret: secret}}}})
	if err != nil {
		b.Fatal(err)
	}
	for i := range b.N {
		if err := o.Emit(context.Background(), Event{Type: Drift, ID: strconv.Itoa(i), Data: seqData{i}}); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	b.ResetTimer()
	go func() { defer close(stopped); _ = o.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d delivered", got.Load(), n)
	}
	b.StopTimer()
	cancel()
	<-stopped
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
