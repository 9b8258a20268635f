// Package telemetry keeps the agent's telemetry on the device and delivers it
// to the fleet: a durable queue in bbolt fed without blocking from the predict
// path, and an uplink that publishes it in order, at least once, in batches
// over the device's fleet link.
//
// Records handed to Record go through a bounded channel to one writer
// goroutine that commits them in groups (one fsync for many records) under
// sequence numbers that keep rising across restarts (writer.go). A record is
// kept once its group's transaction has committed. The queue is bounded by
// bytes and age; when full, the oldest low-priority records go first, and
// update and audit records are never dropped (evict.go). Every drop is
// counted, and the counters travel in every batch. The uplink deletes records
// only after the broker acknowledged the batch that carried them (uplink.go).
// The on-disk layout is in store.go, the format in docs/PROTOCOL.md.
//
// The daemon runs the Queue; the connection is not telemetry's own but the
// device's fleet link (agent/fleetlink), which the queue uses through the Link
// interface; see the package example. The predict path calls Observe for
// every request and Record (after ShouldSample) for samples; the updater
// calls Emit, which returns once its record is durable. Health records name
// the model being served (Options.CurrentModel).
//
// Tests run against real things: bbolt files, a Mosquitto started on a free
// loopback port (they fail without it when CI=true, and skip otherwise), the
// embedded broker, and a child process SIGKILLed during appends and drains.
// The crash loop runs 5 times by default; for a long local run:
//
//	OUTPOST_CRASH_LOOPS=200 go test -race -run TestCrashLoop ./agent/telemetry
package telemetry
