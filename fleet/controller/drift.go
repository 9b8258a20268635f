package controller

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/drift"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/models/profile"
)

// DriftOptions configure drift detection (docs/MONITORING.md): the leader
// replica judges every model version with a reference profile once a
// window, fleet-wide and per device.
type DriftOptions struct {
	// Off turns drift detection off.
	Off bool
	// Window is the length of the windows judged: a whole number of
	// minutes, or of seconds under a minute (then the store keeps feature
	// buckets that fine: tests). Default 1 minute.
	Window time.Duration
	// Thresholds are the defaults for every model (drift.Defaults).
	Thresholds drift.Thresholds
}

// driftWindow is the window drift detection uses.
func (o DriftOptions) window() time.Duration {
	if o.Window <= 0 {
		return time.Minute
	}
	return o.Window
}

// driftBucket is the bucket step a window of w reads: minute buckets for
// whole minutes, else buckets of w itself.
func driftBucket(w time.Duration) int64 {
	if w%time.Minute == 0 {
		return registry.MinuteBucket
	}
	return int64(w / time.Second)
}

// fineStep is the bucket step the store keeps for windows under a minute,
// or 0.
func (o DriftOptions) fineStep() int64 {
	if o.Off {
		return 0
	}
	if b := driftBucket(o.window()); b < registry.MinuteBucket {
		return b
	}
	return 0
}

// Validate checks the window and thresholds (fleet.yaml's monitoring.drift).
func (o DriftOptions) Validate() error {
	w := o.window()
	if w < time.Second || (w < time.Minute && int64(time.Minute/time.Second)%int64(w/time.Second) != 0) || (w >= time.Minute && w%time.Minute != 0) || w%time.Second != 0 {
		return fmt.Errorf("drift: window %s: want whole minutes, or a divisor of a minute in seconds (1s, 2s, 5s, ...)", w)
	}
	return o.Thresholds.Validate()
}

// newDriftMonitor returns the drift monitor the leader runs on store (its
// fenced view), or nil when drift detection is off.
func (c *Controller) newDriftMonitor(store *registry.Registry) (*drift.Monitor, error) {
	if c.opts.Drift.Off {
		return nil, nil
	}
	w := c.opts.Drift.window()
	return drift.New(drift.Options{Store: store, References: c.references, Window: w, Bucket: driftBucket(w),
		Thresholds: c.opts.Drift.Thresholds, OnTransition: c.onDrift, Logger: c.log})
}

// refCache keeps the reference profiles of the pushed versions: a release
// never changes once pushed.
type refCache struct {
	mu   sync.Mutex
	byID map[string]*profile.Profile // name/version -> profile, nil for none
}

// references lists the pushed model versions that carry a reference
// profile, read from their signed releases (verified as of their push).
func (c *Controller) references() ([]drift.Reference, error) {
	mvs, err := c.reg.Models()
	if err != nil {
		return nil, err
	}
	c.refs.mu.Lock()
	defer c.refs.mu.Unlock()
	if c.refs.byID == nil {
		c.refs.byID = map[string]*profile.Profile{}
	}
	var out []drift.Reference
	for _, mv := range mvs {
		id := fmt.Sprintf("%s/%d", mv.Name, mv.Version)
		p, ok := c.refs.byID[id]
		if !ok {
			rel, err := c.keys.Root().VerifyRelease(mv.Release, mv.Created)
			if err != nil {
				c.log.Warn("drift: release of a pushed version", "model", mv.Name, "version", mv.Version, "err", err)
				continue
			}
			p = rel.Model.Reference
			c.refs.byID[id] = p
		}
		if p != nil {
			out = append(out, drift.Reference{Model: mv.Name, Version: mv.Version, Profile: p})
		}
	}
	return out, nil
}

// reference is the reference profile of a model version's signed manifest,
// nil without one (analysis.Options.Reference).
func (c *Controller) reference(_ context.Context, model string, version int64) (*profile.Profile, error) {
	refs, err := c.references()
	if err != nil {
		return nil, err
	}
	for _, r := range refs {
		if r.Model == model && r.Version == version {
			return r.Profile, nil
		}
	}
	return nil, nil
}

// onDrift sends a scope's change of state to the webhooks.
func (c *Controller) onDrift(ctx context.Context, t drift.Transition) error {
	fs := make([]alerts.DriftFeature, 0, len(t.Score.Features))
	for _, f := range t.Score.Features {
		fs = append(fs, alerts.DriftFeature{Name: f.Name, PSI: f.PSI, JS: f.JS, Count: f.Count,
			ReferenceCount: f.ReferenceCount, Drifting: f.Drifting})
	}
	return c.alerts.Emit(ctx, alerts.DriftEvent(alerts.DriftData{Model: t.Model, Version: t.Version, Device: t.Device,
		State: string(t.To), Previous: string(t.From), Since: t.Since, Window: t.Window.String(), Features: fs}))
}

// driftScores exports the fleet-wide PSI of every feature of every judged
// model version (outpost_fleet_drift_psi).
func (c *Controller) driftScores() ([]DriftScore, error) {
	mvs, err := c.reg.Models()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []DriftScore
	for _, mv := range mvs {
		if seen[mv.Name] {
			continue
		}
		seen[mv.Name] = true
		rows, err := c.reg.DriftRows(mv.Name, "")
		if err != nil {
			return nil, err
		}
		reps, err := drift.Reports(rows)
		if err != nil {
			return nil, err
		}
		for _, r := range reps {
			for _, f := range r.Features {
				out = append(out, DriftScore{Model: r.Model, Version: r.Version, Feature: f.Name, PSI: f.PSI})
			}
		}
	}
	return out, nil
}
