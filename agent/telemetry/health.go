package telemetry

import "github.com/outpost-edge/outpost/protocol"

// healthRecord takes a device health snapshot, naming the model being served
// (Options.CurrentModel) so the fleet can tell which model the device was
// running when it looked like this. Called by the writer goroutine only.
func (q *Queue) healthRecord() protocol.Record {
	h := q.health.read()
	r := protocol.Record{Kind: protocol.KindHealth, Time: q.opts.Clock.Now(), Health: &h}
	if q.opts.CurrentModel != nil {
		r.Model = q.opts.CurrentModel()
	}
	return r
}
