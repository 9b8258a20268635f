package telemetry

import (
	"math"
	"sort"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/protocol"
)

// DefaultLatencyBounds are the upper bounds, in microseconds, of the latency
// histogram buckets of aggregates: 250 µs to 10 s.
var DefaultLatencyBounds = []uint64{250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000}

// Observation is one prediction as the API saw it, for the per-interval
// aggregates.
type Observation struct {
	Model   protocol.ModelRef
	Latency time.Duration
	// ErrCode is empty on success, else a short code ("bad_input",
	// "overload", "internal", ...).
	ErrCode string
	// Inputs summarise the values of each input tensor of the request; nil
	// if the caller does not track drift.
	Inputs []InputSummary
	// StreamDropped, when not 0, makes the observation a count of stream
	// messages dropped before the model saw them: it goes to the
	// aggregate's StreamDropped only, never to requests, errors or latency.
	StreamDropped uint64
	// Reference and Features account the request's per-request features
	// (profile.Extractor) in the aggregate's feature histograms, binned
	// with the reference's edges: Features[i] is the value of
	// Reference.Features[i]. Both nil for a model without a reference and
	// for a request that was not answered; the aggregator keeps neither
	// past the call.
	Reference *profile.Profile
	Features  []float64
}

// InputSummary accumulates the values of one input tensor. The zero value with
// a Name is ready; call Add for every element.
type InputSummary struct {
	Name     string
	count    uint64
	nans     uint64
	min, max float64
	mean, m2 float64 // Welford's running mean and sum of squared deviations
}

// Add accounts for one value. NaN and infinite values are only counted.
func (s *InputSummary) Add(v float64) {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		s.nans++
		return
	}
	s.count++
	if s.count == 1 {
		s.min, s.max = v, v
	} else {
		s.min = min(s.min, v)
		s.max = max(s.max, v)
	}
	d := v - s.mean
	s.mean += d / float64(s.count)
	s.m2 += d * (v - s.mean)
}

// merge adds o's values to s (Chan et al.'s parallel update).
func (s *InputSummary) merge(o *InputSummary) {
	s.nans += o.nans
	if o.count == 0 {
		return
	}
	if s.count == 0 {
		nans := s.nans
		*s = *o
		s.nans = nans
		return
	}
	n := s.count + o.count
	d := o.mean - s.mean
	s.mean += d * float64(o.count) / float64(n)
	s.m2 += o.m2 + d*d*float64(s.count)*float64(o.count)/float64(n)
	s.count = n
	s.min = min(s.min, o.min)
	s.max = max(s.max, o.max)
}

func (s *InputSummary) stats() protocol.InputStats {
	st := protocol.InputStats{Name: s.Name, Count: s.count, NaNs: s.nans, Min: s.min, Max: s.max, Mean: s.mean}
	if s.count > 0 {
		st.Variance = s.m2 / float64(s.count)
	}
	return st
}

// aggregator sums observations per model until the interval ends.
type aggregator struct {
	bounds []uint64

	// mu guards start and byModel.
	mu      sync.Mutex
	start   time.Time
	byModel map[protocol.ModelRef]*modelAgg
}

type modelAgg struct {
	requests, errors uint64
	streamDropped    uint64
	byCode           map[string]uint64
	counts           []uint64
	sumMicros        uint64
	inputs           []InputSummary
	// ref is the reference whose edges features are binned with (the
	// first one observed in the interval; a model version has one).
	ref      *profile.Profile
	features []protocol.FeatureCounts
}

func newAggregator(bounds []uint64, now time.Time) *aggregator {
	return &aggregator{bounds: bounds, start: now, byModel: map[protocol.ModelRef]*modelAgg{}}
}

func (a *aggregator) observe(o *Observation) {
	us := uint64(max(0, o.Latency.Microseconds()))
	bucket := sort.Search(len(a.bounds), func(i int) bool { return us <= a.bounds[i] })
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.byModel[o.Model]
	if m == nil {
		m = &modelAgg{counts: make([]uint64, len(a.bounds)+1)}
		a.byModel[o.Model] = m
	}
	if o.StreamDropped > 0 {
		m.streamDropped += o.StreamDropped
		return
	}
	m.requests++
	m.counts[bucket]++
	m.sumMicros += us
	if o.ErrCode != "" {
		m.errors++
		if m.byCode == nil {
			m.byCode = map[string]uint64{}
		}
		if len(m.byCode) < 32 || m.byCode[o.ErrCode] > 0 {
			m.byCode[o.ErrCode]++
		} else {
			m.byCode["other"]++
		}
	}
	if o.Reference != nil && len(o.Features) == len(o.Reference.Features) {
		m.addFeatures(o.Reference, o.Features)
	}
	for i := range o.Inputs {
		in := &o.Inputs[i]
		j := 0
		for j < len(m.inputs) && m.inputs[j].Name != in.Name {
			j++
		}
		if j == len(m.inputs) {
			if len(m.inputs) >= 64 {
				continue // a model with this many inputs is not tracked past 64
			}
			m.inputs = append(m.inputs, InputSummary{Name: in.Name})
		}
		m.inputs[j].merge(in)
	}
}

// addFeatures bins one request's features. The histograms are made on the
// interval's first request with features; a request with another
// reference (not expected: a digest has one manifest) is not counted.
func (m *modelAgg) addFeatures(ref *profile.Profile, vs []float64) {
	if m.ref == nil {
		m.ref = ref
		m.features = make([]protocol.FeatureCounts, len(ref.Features))
		for i := range ref.Features {
			m.features[i] = protocol.FeatureCounts{Name: ref.Features[i].Name, Counts: make([]uint64, len(ref.Features[i].Edges)+1)}
		}
	}
	if m.ref != ref {
		return
	}
	for i, v := range vs {
		fc := &m.features[i]
		if math.IsNaN(v) || math.IsInf(v, 0) {
			fc.NaNs++
			continue
		}
		fc.Counts[profile.Bin(ref.Features[i].Edges, v)]++
		fc.Sum += v
		fc.SumSq += v * v
	}
}

// flush returns one aggregate record per model seen since the last flush and
// starts a new interval at now.
func (a *aggregator) flush(now time.Time) []protocol.Record {
	a.mu.Lock()
	start, byModel := a.start, a.byModel
	a.start, a.byModel = now, map[protocol.ModelRef]*modelAgg{}
	a.mu.Unlock()
	recs := make([]protocol.Record, 0, len(byModel))
	for ref, m := range byModel {
		agg := &protocol.Aggregate{
			Start: start, End: now, Requests: m.requests, Errors: m.errors, StreamDropped: m.streamDropped,
			Latency: protocol.Histogram{BoundsMicros: a.bounds, Counts: m.counts, SumMicros: m.sumMicros},
		}
		for code, n := range m.byCode {
			agg.ErrorsByCode = append(agg.ErrorsByCode, protocol.CodeCount{Code: code, Count: n})
		}
		sort.Slice(agg.ErrorsByCode, func(i, j int) bool { return agg.ErrorsByCode[i].Code < agg.ErrorsByCode[j].Code })
		for i := range m.inputs {
			agg.Inputs = append(agg.Inputs, m.inputs[i].stats())
		}
		agg.Features = m.features
		recs = append(recs, protocol.Record{Kind: protocol.KindAggregate, Time: now, Model: ref, Aggregate: agg})
	}
	sort.Slice(recs, func(i, j int) bool {
		return recs[i].Model.Name+recs[i].Model.Version < recs[j].Model.Name+recs[j].Model.Version
	})
	return recs
}
