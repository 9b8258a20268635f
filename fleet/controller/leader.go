package controller

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
)

// Replicas. Several controllers on one PostgreSQL store all serve the
// admin API and artifact chunks and all record status, state, acks and
// telemetry (the store makes a repeated record harmless: telemetry by its
// primary key, acks by their time and state). Exactly one runs the rollout
// engine: the holder of the lease leaderLease. Its engine writes through
// registry.Fenced, so once another replica has taken the lease no write of
// the old engine commits, and no command is sent that its assignment did
// not record first (the engine records, then sends). A new leader starts
// from what the store says: the same gates, the same command ids.

// leaderLease is the name of the rollout engine's lease.
const leaderLease = "rollout-engine"

// minLeaseTTL bounds Options.LeaseTTL from below: renewals every third of
// it must commit well within it.
const minLeaseTTL = 300 * time.Millisecond

// newEngine makes a rollout engine over reg with the controller's options.
func (c *Controller) newEngine(reg *registry.Registry) (*rollout.Engine, error) {
	return rollout.New(rollout.Options{Registry: reg, Sender: c, Fleet: c.opts.Fleet, CommandTTL: c.opts.CommandTTL,
		ResendAfter: c.opts.ResendAfter, Tick: c.opts.Tick, Alerts: c.alerts, Logger: c.opts.Logger.With("component", "rollout"),
		Analyzer: c.opts.Analyzer, DefaultAnalysis: c.opts.DefaultAnalysis, AnalyzeEvery: c.opts.AnalyzeEvery})
}

// deviceEngine is the engine that records device answers here: the
// leader's while this replica leads (so that it sees them as they come),
// else the admin engine (every replica records acks, so none is lost
// while the lease changes hands).
func (c *Controller) deviceEngine() *rollout.Engine {
	if e := c.leader.Load(); e != nil {
		return e
	}
	return c.eng
}

// kick makes the engine that runs rollouts here, if any, step soon.
func (c *Controller) kick() {
	if e := c.leader.Load(); e != nil {
		e.Kick()
	}
}

// deviceChanged tells the engine that runs rollouts here, if any, that a
// device's state or status changed, so its next pass looks at it.
func (c *Controller) deviceChanged(device string) {
	if e := c.leader.Load(); e != nil {
		e.DeviceChanged(device)
	}
}

// lead tries to acquire the lease every third of its time to live
// (jittered) and runs the rollout engine while it holds it, until ctx ends.
func (c *Controller) lead(ctx context.Context) error {
	every := c.opts.LeaseTTL / 3
	for {
		l, err := c.reg.AcquireLease(leaderLease, c.opts.ReplicaID, c.opts.LeaseTTL, time.Now())
		switch {
		case err == nil:
			c.holdLease(ctx, l)
		case !errors.Is(err, registry.ErrLeaseHeld):
			c.log.Warn("rollout engine lease", "err", err)
		}
		wait := every/2 + rand.N(every/2+1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// holdLease runs a rollout engine on a view fenced by l and renews l until
// it is lost or ctx ends; then it stops the engine and, on ctx's end,
// releases the lease so that a standby need not wait for it to expire.
func (c *Controller) holdLease(ctx context.Context, l registry.Lease) {
	log := c.log.With("replica", c.opts.ReplicaID, "token", l.Token)
	eng, err := c.newEngine(c.reg.Fenced(l))
	if err != nil {
		log.Error("rollout engine", "err", err) // only missing options, set in New
		return
	}
	log.Info("rollout engine lease acquired: leading")
	ectx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { _ = eng.Run(ectx) })
	if mon, err := c.newDriftMonitor(c.reg.Fenced(l)); err != nil {
		log.Error("drift monitor", "err", err) // options checked in New
	} else if mon != nil {
		wg.Go(func() { _ = mon.Run(ectx) })
	}
	c.leader.Store(eng)
	defer func() {
		c.leader.Store(nil)
		stop()
		wg.Wait()
		if ctx.Err() != nil {
			if err := c.reg.ReleaseLease(l); err != nil {
				log.Warn("rollout engine lease release", "err", err)
			}
		}
	}()
	t := time.NewTicker(c.opts.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("rollout engine stopping: releasing the lease")
			return
		case <-t.C:
		}
		nl, err := c.reg.RenewLease(l, c.opts.LeaseTTL, time.Now())
		if err == nil {
			l = nl
			continue
		}
		if errors.Is(err, registry.ErrLeaseLost) {
			log.Warn("rollout engine lease lost: standing by", "err", err)
			return
		}
		// The store is out of reach: keep trying while the lease may still
		// run; its fenced writes fail by themselves once it has expired.
		log.Warn("rollout engine lease renewal", "err", err)
		if !time.Now().Before(l.Expires) {
			log.Warn("rollout engine lease expired: standing by")
			return
		}
	}
}
