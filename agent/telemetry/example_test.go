package telemetry_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/agent/telemetry"
	"github.com/outpost-edge/outpost/protocol"
)

// The daemon builds the MQTT uplink and the queue once, runs both until its
// context ends, and hands the queue to the API and the updater.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.Default()

	link, err := telemetry.NewMQTT(telemetry.MQTTOptions{
		Broker: "tcp://127.0.0.1:1883", ClientID: "gw-01", Fleet: "acme", Device: "gw-01", Logger: log,
	})
	if err != nil {
		log.Error("telemetry", "err", err)
		return
	}
	q, err := telemetry.New(telemetry.Options{
		Path:      filepath.Join("/var/lib/outpost", "telemetry.db"),
		Publisher: link,
		Logger:    log,
	})
	if err != nil {
		log.Error("telemetry", "err", err)
		return
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = link.Run(ctx) }()
	go func() { defer wg.Done(); _ = q.Run(ctx) }()

	// The predict path: never blocks.
	model := protocol.ModelRef{Name: "face", Version: "1.2.0", Digest: "sha256:..."}
	in := telemetry.InputSummary{Name: "image"}
	in.Add(0.5)
	q.Observe(telemetry.Observation{Model: model, Latency: 3 * time.Millisecond, Inputs: []telemetry.InputSummary{in}})
	if q.ShouldSample() {
		q.Record(protocol.Record{Kind: protocol.KindSample, Model: model, Sample: &protocol.Sample{RequestID: "r1"}})
	}

	// The updater: waits until its record is durable.
	_, _ = q.Emit(ctx, protocol.Record{Kind: protocol.KindUpdate, Model: model,
		Update: &protocol.Update{RolloutID: "r-7", State: "committed"}})

	cancel()
	wg.Wait()
}
