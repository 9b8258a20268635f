// Package phasetrace times the phases of an inference request inside the
// real binaries, for BenchmarkOverheadPhases (agent/api): what the agent
// spends beyond a thin server that only reads the body, invokes and writes
// a fixed answer. It is compiled in only with the phasetrace build tag;
// without it a Trace is empty and its methods do nothing, so the serving
// path pays nothing.
//
// With the tag, a process writes the median of each phase over the
// requests it has finished (every 100 requests) to the file named by
// $OUTPOST_PHASETRACE, one "phase microseconds count" line each.
package phasetrace

// Phase is a span of a request between two marks.
type Phase uint8

// The phases, in request order. A thin server marks Read, Invoke and
// Write; the agent marks them all.
const (
	Read    Phase = iota // the body, from the handler's start
	Decode               // the inference header, into tensors
	Lookup               // the model: timeout context, serving slot
	Prepare              // the inputs bound to the model's signature
	Invoke               // a worker taken, inputs copied in, the run, outputs copied out
	Release              // the worker given back
	Encode               // the response built
	Write                // the response written
	Observe              // metrics and telemetry, after the answer
	nPhases
)

var names = [nPhases]string{"read", "decode", "lookup", "prepare", "invoke", "release", "encode", "write", "observe"}

func (p Phase) String() string {
	if p < nPhases {
		return names[p]
	}
	return "unknown"
}
