package daemon

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/agent/api"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/agent/updater"
	"github.com/outpost-edge/outpost/agent/version"
	"github.com/outpost-edge/outpost/protocol"
)

// requestCounter counts answered inference requests for the device status
// and, per model version, for the updater's probation, and passes each one
// on to the next observer (telemetry), if any.
type requestCounter struct {
	requests, errors atomic.Uint64
	// traffic counts per model version; server-side failures (5xx) are its
	// errors: bad input from clients is not the model's fault.
	traffic *updater.TrafficCounter
	next    api.Observer
}

func (c *requestCounter) ObserveInference(in *api.Inference) {
	c.requests.Add(1)
	if in.Code != http.StatusOK {
		c.errors.Add(1)
	}
	if in.Model.Name != "" {
		c.traffic.Observe(in.Model.Name, in.Model.Version, in.Code >= http.StatusInternalServerError, in.Latency)
	}
	if c.next != nil {
		c.next.ObserveInference(in)
	}
}

// status builds the device's status message.
func (a *Agent) status() *protocol.Status {
	s := &protocol.Status{
		Protocol:     protocol.Version,
		Device:       a.cfg.Fleet.Device,
		AgentVersion: version.Version,
		Labels:       a.cfg.Fleet.Labels,
		Features:     []string{protocol.FeatureTrial},
		Time:         time.Now().UTC(),
		Health: protocol.HealthSummary{
			Status:        protocol.HealthOK,
			UptimeSeconds: int64(time.Since(a.started).Seconds()),
			Requests:      a.counter.requests.Load(),
			Errors:        a.counter.errors.Load(),
		},
	}
	for _, e := range a.registry.List() {
		m := protocol.ModelStatus{Name: e.Name, Version: e.Version, Digest: e.Digest}
		if a.store != nil {
			if prev, err := a.store.Previous(e.Name); err == nil {
				m.Previous = prev.Manifest.Version
			}
		}
		s.Models = append(s.Models, m)
	}
	slices.SortFunc(s.Models, func(x, y protocol.ModelStatus) int { return strings.Compare(x.Name, y.Name) })
	if !a.api.Ready() {
		s.Health.Status = protocol.HealthDegraded
	}
	if a.updateStatus != nil {
		s.Update = a.updateStatus()
	}
	return s
}

// runStatus republishes the retained status through the updater's link
// when a.statusChanged is poked (models loaded or swapped) and every
// fleet.status_interval, so the controller sees uptime and counters move,
// until ctx ends. The link itself publishes it after every connection and
// every ack.
func (a *Agent) runStatus(ctx context.Context) {
	tick := time.NewTicker(a.cfg.Fleet.StatusInterval)
	defer tick.Stop()
	for {
		select {
		case <-a.statusChanged:
		case <-tick.C:
		case <-ctx.Done():
			return
		}
		if err := a.ulink.PublishStatus(ctx); err != nil && !errors.Is(err, fleetlink.ErrNotConnected) && ctx.Err() == nil {
			a.log.Warn("status: publish", "err", err)
		}
	}
}

// statusChange asks runStatus to publish soon; it never blocks.
func (a *Agent) statusChange() {
	select {
	case a.statusChanged <- struct{}{}:
	default:
	}
}
