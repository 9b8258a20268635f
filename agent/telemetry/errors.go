package telemetry

import "errors"

// Errors of this package. Callers test with errors.Is. A Link that has no
// connection reports fleetlink.ErrNotConnected, which the uplink waits on
// without counting an attempt.
var (
	// ErrNoPath is returned by New when Options.Path is empty.
	ErrNoPath = errors.New("telemetry: no queue path")
	// ErrNoTopic is returned by New when Options.Link is set without
	// Options.Topic.
	ErrNoTopic = errors.New("telemetry: a link needs a topic")
	// ErrClosed is returned by Emit when the queue stopped before the record
	// was kept, and by Quarantine when the queue is not running.
	ErrClosed = errors.New("telemetry: queue closed")
)
