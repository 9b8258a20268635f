package protocol

import (
	"fmt"
	"time"
)

// Kind says what a telemetry record holds. The numbers are part of the wire
// format and never change meaning; new kinds get new numbers.
type Kind uint8

// The record kinds of protocol version 1.
const (
	KindAggregate Kind = 1 // per-interval aggregate of one model's traffic
	KindSample    Kind = 2 // one sampled prediction
	KindHealth    Kind = 3 // device health snapshot
	KindUpdate    Kind = 4 // model update progress
	KindAudit     Kind = 5 // audit trail entry (including agent notices)
)

var kindNames = map[Kind]string{
	KindAggregate: "aggregate",
	KindSample:    "sample",
	KindHealth:    "health",
	KindUpdate:    "update",
	KindAudit:     "audit",
}

func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Priority orders what the device's queue gives up first when it is full.
type Priority uint8

// Priorities, lowest first. Critical records are never dropped by the queue.
const (
	PriorityLow      Priority = 0 // samples and health: dropped first
	PriorityNormal   Priority = 1 // aggregates: dropped only when no low records are left
	PriorityCritical Priority = 2 // update and audit records: never dropped
)

func (p Priority) String() string {
	switch p {
	case PriorityLow:
		return "low"
	case PriorityNormal:
		return "normal"
	case PriorityCritical:
		return "critical"
	}
	return fmt.Sprintf("priority(%d)", uint8(p))
}

// Priority returns the drop priority of records of kind k. Unknown kinds are
// low priority.
func (k Kind) Priority() Priority {
	switch k {
	case KindAggregate:
		return PriorityNormal
	case KindUpdate, KindAudit:
		return PriorityCritical
	}
	return PriorityLow
}

// ModelRef names the model a record concerns. All three fields are empty for
// records about the device itself (health, agent notices).
type ModelRef struct {
	Name    string
	Version string
	Digest  string // "sha256:<hex>" of the model artifact
}

// Record is one telemetry record. Exactly one of the payload pointers is set,
// the one matching Kind.
type Record struct {
	Kind  Kind
	Time  time.Time // when it happened; the agent stamps it if zero
	Model ModelRef

	Aggregate *Aggregate
	Sample    *Sample
	Health    *Health
	Update    *Update
	Audit     *Audit
}

// Aggregate summarises a model's traffic over [Start, End). Aggregates are
// always produced (not sampled) so counts add up across a fleet.
type Aggregate struct {
	Start, End time.Time
	Requests   uint64
	Errors     uint64
	// ErrorsByCode splits Errors by a short code ("bad_input", "overload",
	// "internal", ...). Optional.
	ErrorsByCode []CodeCount
	Latency      Histogram
	// Inputs holds per-input statistics for drift monitoring.
	Inputs []InputStats
	// StreamDropped counts messages of the agent's streams (docs/MODES.md)
	// meant for this model that were dropped before it saw them (overflow
	// policy, size limit, shutdown). They are not requests and not errors:
	// the model's error ratio is about what it ran. Added after Inputs;
	// an older agent's record decodes with 0.
	StreamDropped uint64
	// Features are the histograms of the per-request features named by the
	// model's reference profile (models/manifest), over the interval. Only
	// a model whose manifest carries a reference has them. Added after
	// StreamDropped; an older agent's record decodes with none.
	Features []FeatureCounts
	// Shadow is set on the aggregate of a candidate held in shadow
	// (docs/PROTOCOL.md, Trials). Such a record's Model is the candidate;
	// its Requests, Errors, Latency, Inputs and Features count the
	// candidate's answers to the copies of live requests, which no client
	// saw: they are not the model's served traffic. Added after Features;
	// an older agent's record decodes with none.
	Shadow *Shadow
}

// Shadow compares a candidate held in shadow with the serving version on
// the same requests, over an aggregate's interval.
type Shadow struct {
	// Baseline is the serving version the copies came from.
	Baseline string
	// Dropped counts copies not made because the shadow's queue was full
	// (the client's request is never held up for a copy).
	Dropped uint64
	// BaselineLatency is the serving version's latency on the requests that
	// were copied and answered by both, so the two histograms are paired.
	BaselineLatency Histogram
	// Outputs holds one entry per output of the candidate's signature.
	Outputs []OutputAgreement
}

// OutputAgreement measures how close the candidate's answers for one output
// are to the serving version's, over the requests both answered.
type OutputAgreement struct {
	Name string
	// Compared counts the requests whose output both versions gave with the
	// same number of elements.
	Compared uint64
	// MaxAbsDiff is the largest absolute difference of one element, and
	// SumMeanAbsDiff adds up each request's mean absolute difference (its
	// mean over the interval is SumMeanAbsDiff / Compared).
	MaxAbsDiff, SumMeanAbsDiff float64
	// Top1Compared and Top1Agree count, for an output that is a score vector
	// (its last dimension more than 1), the rows compared and those whose
	// highest-scoring index is the same in both answers.
	Top1Compared, Top1Agree uint64
}

// FeatureCounts is one per-request feature's histogram over an aggregate's
// interval, binned with the edges the model's reference profile gives for
// the feature of that Name: with n edges, Counts has n+1 elements,
// Counts[0] counts values below the first edge, Counts[i] values in
// [edge i-1, edge i), and Counts[n] values at or above the last edge.
// Values that are NaN or infinite are counted in NaNs only; Sum and SumSq
// are over the finite ones, so histograms of the same feature merge by
// adding every field.
type FeatureCounts struct {
	Name       string
	Counts     []uint64
	NaNs       uint64
	Sum, SumSq float64
}

// CodeCount is a count for one error code.
type CodeCount struct {
	Code  string
	Count uint64
}

// Histogram is a fixed-bucket histogram in microseconds: Counts[i] counts
// values <= BoundsMicros[i] (and above the previous bound); the last element
// of Counts, one more than BoundsMicros, counts everything above the last
// bound.
type Histogram struct {
	BoundsMicros []uint64
	Counts       []uint64
	SumMicros    uint64
}

// InputStats are running statistics of one model input's values over the
// interval. Mean and Variance are over the finite values only.
type InputStats struct {
	Name     string
	Count    uint64 // finite values seen
	NaNs     uint64 // NaN and infinite values seen
	Min, Max float64
	Mean     float64
	Variance float64
}

// Sample is one prediction kept at the agent's sampling rate.
type Sample struct {
	RequestID string
	Latency   time.Duration
	Error     string // empty on success
	Inputs    []TensorSample
	Outputs   []TensorSample
}

// TensorSample is a tensor as it crossed the API: Datatype spelled as in the
// Open Inference Protocol ("FP32", ...), little-endian raw Data, possibly cut
// short by the agent (Truncated).
type TensorSample struct {
	Name      string
	Datatype  string
	Shape     []int64
	Data      []byte
	Truncated bool
}

// Health is a snapshot of the device. Fields the board does not expose are
// zero; TemperatureC is NaN when unknown.
type Health struct {
	CPUPercent     float64
	Load1          float64
	MemUsedBytes   uint64
	MemTotalBytes  uint64
	DiskUsedBytes  uint64
	DiskTotalBytes uint64
	TemperatureC   float64
	Uptime         time.Duration
}

// Update reports progress of a model update.
type Update struct {
	RolloutID  string
	State      string // updater state ("downloading", "committed", ...)
	BytesDone  uint64
	BytesTotal uint64
	Error      string
	Detail     string
}

// Audit is an audit trail entry: who did what, and how it ended. The agent
// also uses it for notices about itself (Actor "agent"), such as a telemetry
// queue that was found corrupt and replaced.
type Audit struct {
	Actor   string
	Action  string
	Outcome string
	Detail  string
	// Seq, Prev and Hash place the record in the device's hash-chained
	// audit trail (agent/audit): its number, the hex sha256 of the record
	// before it ("" for the first) and its own. The controller checks on
	// arrival that each record names its predecessor's hash. Zero for
	// records outside the chain (agent notices). Added after Detail; an
	// older agent's record decodes with none.
	Seq        uint64
	Prev, Hash string
}

// DropReason says why the device's queue dropped records. The numbers are
// part of the wire format.
type DropReason uint8

// Drop reasons. Sequenced reasons (see DropReason.Sequenced) dropped records
// that already had a sequence number, so they leave gaps in the sequence.
const (
	DropBackpressure DropReason = 1 // hand-off channel full; never sequenced
	DropEvicted      DropReason = 2 // queue over its byte bound; sequenced
	DropExpired      DropReason = 3 // older than the queue's maximum age; sequenced
	DropWriteFailed  DropReason = 4 // the disk write failed (disk full); never sequenced
	DropQuarantined  DropReason = 5 // could not be published after N tries; sequenced
	DropUnencodable  DropReason = 6 // could not be encoded; never sequenced

	maxDropReason = DropUnencodable
)

// DropReasons lists every drop reason, for metrics and loops.
var DropReasons = []DropReason{DropBackpressure, DropEvicted, DropExpired, DropWriteFailed, DropQuarantined, DropUnencodable}

var dropNames = map[DropReason]string{
	DropBackpressure: "backpressure",
	DropEvicted:      "evicted",
	DropExpired:      "expired",
	DropWriteFailed:  "write_failed",
	DropQuarantined:  "quarantined",
	DropUnencodable:  "unencodable",
}

func (r DropReason) String() string {
	if s, ok := dropNames[r]; ok {
		return s
	}
	return fmt.Sprintf("drop(%d)", uint8(r))
}

// Sequenced reports whether records dropped for this reason had already been
// given a sequence number, and so leave a gap the receiver can account for.
func (r DropReason) Sequenced() bool {
	return r == DropEvicted || r == DropExpired || r == DropQuarantined
}

// DropCounts holds cumulative drop counters, indexed by DropReason.
type DropCounts [maxDropReason + 1]uint64

// Sequenced sums the counters of sequenced reasons: the number of sequence
// numbers that will never be delivered.
func (d DropCounts) Sequenced() uint64 {
	var n uint64
	for _, r := range DropReasons {
		if r.Sequenced() {
			n += d[r]
		}
	}
	return n
}

// Total sums all counters.
func (d DropCounts) Total() uint64 {
	var n uint64
	for _, c := range d {
		n += c
	}
	return n
}
