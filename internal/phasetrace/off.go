//go:build !phasetrace

package phasetrace

// Trace is one request's marks; without the phasetrace tag it is empty.
type Trace struct{}

// Start begins a trace at the handler's start.
func Start() Trace { return Trace{} }

// Mark ends phase p now; the next phase starts here.
func (*Trace) Mark(Phase) {}

// Done ends the trace and adds its phases to the process's record.
func (*Trace) Done() {}
