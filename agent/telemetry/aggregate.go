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
	// Shadow, when set, makes the observation a candidate's answer to a
	// copy of a live request (docs/PROTOCOL.md, Trials): it goes to the
	// candidate's shadow aggregate, apart from any traffic it served,
	// with Latency the candidate's and Shadow the comparison.
	Shadow *ShadowObservation
}

// ShadowObservation is what a copy of a live request sent to a candidate in
// shadow adds to the candidate's shadow aggregate.
type ShadowObservation struct {
	// Baseline is the serving version the copy came from.
	Baseline string
	// Dropped: no copy was made (the shadow's queue was full); only
	// counted, never a request.
	Dropped bool
	// BaselineLatency is the serving version's latency on the request,
	// paired with the observation's Latency; counted only when the
	// candidate answered (ErrCode empty).
	BaselineLatency time.Duration
	// Outputs compares each output of the candidate's answer with the
	// serving version's.
	Outputs []OutputComparison
}

// OutputComparison is one output of one shadow copy.
type OutputComparison struct {
	Name string
	// Compared: both answers had the output with as many elements.
	Compared                bool
	MaxAbsDiff, MeanAbsDiff float64
	// Top1Rows and Top1Agree: score rows compared and those whose
	// highest-scoring index agreed.
	Top1Rows, Top1Agree uint64
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
	byModel map[aggKey]*modelAgg
}

// aggKey tells a model version's served traffic from its answers to shadow
// copies: two aggregates.
type aggKey struct {
	ref    protocol.ModelRef
	shadow bool
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
	// shadow is the Shadow section of a candidate's shadow aggregate.
	shadow *protocol.Shadow
}

func newAggregator(bounds []uint64, now time.Time) *aggregator {
	return &aggregator{bounds: bounds, start: now, byModel: map[aggKey]*modelAgg{}}
}

func (a *aggregator) observe(o *Observation) {
	us := uint64(max(0, o.Latency.Microseconds()))
	bucket := sort.Search(len(a.bounds), func(i int) bool { return us <= a.bounds[i] })
	a.mu.Lock()
	defer a.mu.Unlock()
	key := aggKey{ref: o.Model, shadow: o.Shadow != nil}
	m := a.byModel[key]
	if m == nil {
		m = &modelAgg{counts: make([]uint64, len(a.bounds)+1)}
		a.byModel[key] = m
	}
	if o.StreamDropped > 0 {
		m.streamDropped += o.StreamDropped
		return
	}
	if sh := o.Shadow; sh != nil {
		if m.addShadow(a.bounds, sh, o.ErrCode == "") {
			return // a dropped copy is no request
		}
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

// addShadow accounts one shadow copy in m's Shadow section; it reports
// whether the copy was dropped (nothing else to count).
func (m *modelAgg) addShadow(bounds []uint64, o *ShadowObservation, answered bool) (dropped bool) {
	sh := m.shadow
	if sh == nil {
		sh = &protocol.Shadow{Baseline: o.Baseline,
			BaselineLatency: protocol.Histogram{BoundsMicros: bounds, Counts: make([]uint64, len(bounds)+1)}}
		m.shadow = sh
	}
	if o.Dropped {
		sh.Dropped++
		return true
	}
	if !answered {
		return false
	}
	us := uint64(max(0, o.BaselineLatency.Microseconds()))
	sh.BaselineLatency.Counts[sort.Search(len(bounds), func(i int) bool { return us <= bounds[i] })]++
	sh.BaselineLatency.SumMicros += us
	for _, c := range o.Outputs {
		j := 0
		for j < len(sh.Outputs) && sh.Outputs[j].Name != c.Name {
			j++
		}
		if j == len(sh.Outputs) {
			if len(sh.Outputs) >= 64 {
				continue
			}
			sh.Outputs = append(sh.Outputs, protocol.OutputAgreement{Name: c.Name})
		}
		oa := &sh.Outputs[j]
		if c.Compared {
			oa.Compared++
			oa.MaxAbsDiff = max(oa.MaxAbsDiff, c.MaxAbsDiff)
			oa.SumMeanAbsDiff += c.MeanAbsDiff
		}
		oa.Top1Compared += c.Top1Rows
		oa.Top1Agree += c.Top1Agree
	}
	return false
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
	a.start, a.byModel = now, map[aggKey]*modelAgg{}
	a.mu.Unlock()
	recs := make([]protocol.Record, 0, len(byModel))
	for key, m := range byModel {
		ref := key.ref
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
		agg.Shadow = m.shadow
		recs = append(recs, protocol.Record{Kind: protocol.KindAggregate, Time: now, Model: ref, Aggregate: agg})
	}
	sort.Slice(recs, func(i, j int) bool {
		a, b := recs[i].Model.Name+recs[i].Model.Version, recs[j].Model.Name+recs[j].Model.Version
		if a != b {
			return a < b
		}
		return recs[i].Aggregate.Shadow == nil && recs[j].Aggregate.Shadow != nil // served traffic first
	})
	return recs
}
