package daemon

import (
	"context"
	"log/slog"
	"sync"

	"github.com/outpost-edge/outpost/agent/config"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/stream"
	"github.com/outpost-edge/outpost/agent/telemetry"
	"github.com/outpost-edge/outpost/agent/updater"
)

// newStreams builds the configured streams over the serving registry; their
// inferences feed the updater's probation counts and, with a queue,
// telemetry.
func newStreams(cfg config.Config, reg *serving.Registry, traffic *updater.TrafficCounter, q *telemetry.Queue, refs *references, log *slog.Logger) ([]*stream.Stream, error) {
	var out []*stream.Stream
	obs := streamTelemetry{traffic: traffic, q: q, refs: refs}
	for _, c := range cfg.Streams {
		password, err := readSecret("stream "+c.Name+": password", c.PasswordFile)
		if err != nil {
			return nil, err
		}
		opts := stream.Options{
			Name: c.Name, Broker: c.Broker, Topic: c.Topic, ClientID: c.ClientID,
			Username: c.Username, Password: password, Decoder: c.Decoder,
			Model: c.Model, ResultTopic: c.ResultTopic,
			Queue: c.Queue, QueueBytes: c.QueueBytes, MaxMessage: c.MaxMessageBytes,
			DropNewest: c.Overflow == config.DropNewest,
			Backend:    reg, Observer: obs, Logger: log.With("component", "stream"),
		}
		if c.QoS != nil {
			opts.QoS = byte(*c.QoS)
		}
		if c.Window != nil {
			opts.WindowSize, opts.WindowHop = c.Window.Size, c.Window.Hop
		}
		if len(c.PixelRange) == 2 {
			opts.PixelRange = [2]float32{c.PixelRange[0], c.PixelRange[1]}
		}
		s, err := stream.New(opts)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// runStreams starts the streams and returns the function that stops them
// and waits until they are done.
func (a *Agent) runStreams(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, s := range a.streams {
		wg.Go(func() {
			if err := s.Run(ctx); err != nil {
				a.log.Error("stream stopped", "stream", s.Name(), "err", err)
			}
		})
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// streamTelemetry accounts a stream's inferences as the API's requests are:
// in the updater's probation counts and the model's telemetry aggregates.
// Dropped messages count in the aggregates' own StreamDropped field only:
// the model never saw them, so they are neither its requests nor its errors
// (a fleet gate judging the error ratio must not see them).
type streamTelemetry struct {
	traffic *updater.TrafficCounter
	q       *telemetry.Queue // nil without telemetry
	refs    *references
}

func (t streamTelemetry) ObserveStream(o stream.Observation) {
	if o.Model.Name == "" {
		return // no model served: nothing to account it to
	}
	if o.Dropped > 0 {
		if t.q != nil {
			t.q.Observe(telemetry.Observation{Model: modelRef(o.Model), StreamDropped: uint64(o.Dropped)})
		}
		return
	}
	t.traffic.Observe(o.Model.Name, o.Model.Version, o.Code == "internal", o.Latency)
	if t.q == nil {
		return
	}
	ob := telemetry.Observation{Model: modelRef(o.Model), Latency: o.Latency, ErrCode: o.Code}
	if o.Inputs != nil && t.q.ShouldSample() {
		ob.Inputs = summarize(o.Inputs)
	}
	observeFeatures(t.q, t.refs, o.Model, ob, o.Inputs, o.Outputs)
}
