package controller

import (
	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/registry"
)

// breakAlerts is the registry's AuditBreakAlerts: the audit_chain_broken
// deliveries of a break, which the ingest stores in the transaction that
// stores the broken record, so that a controller killed the next instant
// still sends them.
func (c *Controller) breakAlerts(b registry.ChainBreak) []registry.AlertDelivery {
	rows, err := c.alerts.Rows(alerts.AuditChainBrokenEvent(alerts.AuditData{Device: b.Device, Seq: b.Seq, N: b.N,
		Time: b.Time, Model: b.Model, Action: b.Action, Reason: b.Reason}))
	if err != nil { // only a body that does not encode
		c.log.Warn("audit chain break alert", "device", b.Device, "err", err)
	}
	return rows
}

// onChainBreak is the registry's OnAuditChainBroken, once the break and its
// deliveries are stored: it wakes the outbox (and tells
// Options.OnAuditChainBroken).
func (c *Controller) onChainBreak(b registry.ChainBreak) {
	if c.opts.OnAuditChainBroken != nil {
		c.opts.OnAuditChainBroken(b)
	}
	c.alerts.Wake()
}
