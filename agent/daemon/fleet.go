package daemon

import (
	"context"
	"log/slog"

	"github.com/outpost-edge/outpost/agent/config"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/updater"
	"github.com/outpost-edge/outpost/agent/version"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

// newUpdaterLink is the updater's side of the fleet link (commands,
// chunks, acks); nil without a fleet or a data dir. It registers its topics
// on the link, so it is built before the link runs.
func (a *Agent) newUpdaterLink(cfg config.Config, log *slog.Logger) error {
	if a.link == nil || a.store == nil {
		return nil
	}
	var err error
	a.ulink, err = updater.NewLink(updater.LinkOptions{
		Conn:   a.link,
		Fleet:  cfg.Fleet.Name,
		Device: cfg.Fleet.Device,
		Status: func() protocol.Status { return *a.status() },
		Logger: log,
	})
	return err
}

// newUpdater builds the update state machine over the store, the serving
// registry (activation is a hot swap), the runtime (validation), the
// traffic counters (probation), telemetry and the fleet link.
func (a *Agent) newUpdater(cfg config.Config, rt runtime.Options, reg *prometheus.Registry, log *slog.Logger) error {
	if a.ulink == nil {
		return nil
	}
	opts := updater.Options{
		DataDir:  cfg.DataDir,
		Store:    a.store,
		RootPath: cfg.Fleet.Root,
		Source:   a.ulink,
		Activator: updater.ActivatorFunc(func(ctx context.Context, name string, version int64, data []byte) error {
			_, err := a.registry.Load(ctx, name, version, data, "store")
			a.updateReady()
			return err
		}),
		Runtime: updater.RuntimeFunc(func(data []byte) (updater.Model, error) {
			m, err := runtime.Load(data, rt)
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			return m, nil
		}),
		Trials:       serving.Trials{Registry: a.registry},
		Traffic:      a.counter.traffic,
		Reporter:     a.ulink,
		AgentVersion: version.Version,
		Probation:    cfg.Fleet.Probation,
		Fleet:        cfg.Fleet.Name,
		Device:       cfg.Fleet.Device,
		Logger:       log,
	}
	// WithDefaults made both positive.
	opts.ProbationMinRequests, opts.ProbationMax = uint64(cfg.Fleet.ProbationMinRequests), cfg.Fleet.ProbationMax
	if a.queue != nil { // a nil *Queue in the interface would look like an emitter
		opts.Telemetry = a.queue
	}
	u, err := updater.New(opts)
	if err != nil {
		return err
	}
	a.updater = u
	a.ulink.SetCommandHandler(u.HandleCommand)
	reg.MustRegister(u.Collector())
	a.updateStatus = u.UpdateStatus
	return nil
}
