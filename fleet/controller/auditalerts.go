package controller

import (
	"context"

	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/registry"
)

// maxPendingBreaks bounds the chain breaks waiting for the webhook outbox.
const maxPendingBreaks = 1024

// onChainBreak is the registry's OnAuditChainBroken: it hands the break to
// alertChainBreaks without blocking the ingest that found it (and tells
// Options.OnAuditChainBroken). A break found while maxPendingBreaks wait
// is logged and kept in the store (GET /v1/devices/{id}/audit), not sent.
func (c *Controller) onChainBreak(b registry.ChainBreak) {
	if c.opts.OnAuditChainBroken != nil {
		c.opts.OnAuditChainBroken(b)
	}
	select {
	case c.breaks <- b:
	default:
		c.log.Warn("audit chain break not sent to the webhooks: too many pending", "device", b.Device, "seq", b.Seq)
	}
}

// alertChainBreaks emits an audit_chain_broken event for each break, until
// ctx ends.
func (c *Controller) alertChainBreaks(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case b := <-c.breaks:
			ev := alerts.AuditChainBrokenEvent(alerts.AuditData{Device: b.Device, Seq: b.Seq, N: b.N, Time: b.Time,
				Model: b.Model, Action: b.Action, Reason: b.Reason})
			if err := c.alerts.Emit(ctx, ev); err != nil && ctx.Err() == nil {
				c.log.Warn("audit chain break alert", "device", b.Device, "err", err)
			}
		}
	}
}
