package telemetry_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/agent/telemetry"
	"github.com/outpost-edge/outpost/protocol"
)

// The daemon builds the device's fleet link and the queue once, runs both
// until its context ends, and hands the queue to the API and the updater.
// The link is not telemetry's: the updater registers its handlers on the same
// link before it runs (see the fleetlink example).
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.Default()

	link, err := fleetlink.New(fleetlink.Options{
		Broker: "tcp://127.0.0.1:1883", Fleet: "acme", Device: "gw-01", Logger: log,
	})
	if err != nil {
		log.Error("fleet link", "err", err)
		return
	}
	model := protocol.ModelRef{Name: "face", Version: "1.2.0", Digest: "sha256:..."}
	q, err := telemetry.New(telemetry.Options{
		Path:  filepath.Join("/var/lib/outpost", "telemetry.db"),
		Link:  link,
		Topic: link.Topics().Events,
		// Health records name the model being served.
		CurrentModel: func() protocol.ModelRef { return model },
		Logger:       log,
	})
	if err != nil {
		log.Error("telemetry", "err", err)
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = link.Run(ctx) })
	wg.Go(func() { _ = q.Run(ctx) })

	// The predict path: never blocks.
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
