package simdevice

import (
	"math/rand/v2"
	"strconv"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/protocol"
)

// Traffic makes a device send aggregates (telemetry kind 1) of simulated
// traffic, so the controller's metrics and a rollout's analysis have
// evidence: every Every, Requests requests per model it serves, split
// between the serving version and a canary, or copied in part to a
// candidate held in shadow (with the shadow section: paired latencies and
// output agreement), as docs/PROTOCOL.md, Trials, says an agent reports
// them. No model runs; latencies are drawn around BaseLatency.
type Traffic struct {
	// Every is the aggregate interval; 0 means 1 s.
	Every time.Duration
	// Requests per interval and model; 0 means 100.
	Requests uint64
	// BaseLatency is the serving version's typical latency; 0 means 2 ms.
	BaseLatency time.Duration
	// Candidate says how a version held on trial behaves; nil, or a zero
	// Behaviour, is as the serving version (no errors, same latency, same
	// answers).
	Candidate func(model string, version int64) Behaviour
	// Serving says how a serving version behaves against its own baseline
	// (errors and latency, for the analysis between waves); nil, or a zero
	// Behaviour, is the plain serving version.
	Serving func(model string, version int64) Behaviour
}

// Behaviour is how a candidate answers compared with the serving version.
type Behaviour struct {
	// LatencyFactor multiplies its latency (0 means 1).
	LatencyFactor float64
	// ErrorRatio is the share of its requests that fail.
	ErrorRatio float64
	// Disagree is the share of its answers (in shadow) whose top-1 class
	// differs from the serving version's; MeanAbsDiff its answers' mean
	// absolute difference.
	Disagree, MeanAbsDiff float64
}

// latencyBounds are the simulated histograms' bucket bounds, microseconds.
var latencyBounds = []uint64{500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000, 15000, 20000, 50000}

// latencies draws n latencies around base (a log-normal-ish spread) into
// a histogram.
func latencies(rng *rand.Rand, n uint64, base time.Duration) protocol.Histogram {
	h := protocol.Histogram{BoundsMicros: latencyBounds, Counts: make([]uint64, len(latencyBounds)+1)}
	for range n {
		us := uint64(float64(base.Microseconds()) * (0.7 + 0.6*rng.Float64()))
		i := 0
		for i < len(latencyBounds) && us > latencyBounds[i] {
			i++
		}
		h.Counts[i]++
		h.SumMicros += us
	}
	return h
}

// behave is the aggregate of n requests served by version of model as its
// Serving behaviour says.
func behave(rng *rand.Rand, n uint64, base time.Duration, serving func(string, int64) Behaviour, model string, version int64) *protocol.Aggregate {
	var b Behaviour
	if serving != nil {
		b = serving(model, version)
	}
	if b.LatencyFactor <= 0 {
		b.LatencyFactor = 1
	}
	var errs uint64
	if b.ErrorRatio > 0 { // rounded at random, as a candidate's
		errs = min(uint64(float64(n)*b.ErrorRatio+rng.Float64()), n)
	}
	ag := &protocol.Aggregate{Requests: n, Errors: errs, Latency: latencies(rng, n-errs, time.Duration(float64(base)*b.LatencyFactor))}
	if errs > 0 {
		ag.ErrorsByCode = []protocol.CodeCount{{Code: "internal", Count: errs}}
	}
	return ag
}

// aggregates builds the records of one interval [start, end).
func (a *Agent) aggregates(rng *rand.Rand, start, end time.Time) []protocol.Record {
	tr := a.opts.Traffic
	a.mu.Lock()
	models := make([]protocol.ModelStatus, 0, len(a.models))
	for _, m := range a.models {
		models = append(models, m)
	}
	var trial *held
	if a.trial != nil {
		h := *a.trial
		trial = &h
	}
	a.mu.Unlock()
	var out []protocol.Record
	rec := func(name string, version int64, digest string, ag *protocol.Aggregate) {
		ag.Start, ag.End = start, end
		out = append(out, protocol.Record{Kind: protocol.KindAggregate, Time: end,
			Model: protocol.ModelRef{Name: name, Version: strconv.FormatInt(version, 10), Digest: digest}, Aggregate: ag})
	}
	for _, m := range models {
		served := tr.Requests
		var cand *held
		var b Behaviour
		if trial != nil && trial.in.Model == m.Name {
			cand = trial
			if tr.Candidate != nil {
				b = tr.Candidate(m.Name, trial.in.Version)
			}
			if b.LatencyFactor <= 0 {
				b.LatencyFactor = 1
			}
		}
		share := uint64(0)
		if cand != nil {
			share = uint64(float64(tr.Requests) * cand.trial.Percent / 100)
		}
		if cand != nil && cand.trial.Mode == protocol.TrialCanary {
			served -= share
		}
		rec(m.Name, m.Version, m.Digest, behave(rng, served, tr.BaseLatency, tr.Serving, m.Name, m.Version))
		if cand == nil || share == 0 {
			continue
		}
		errs := uint64(float64(share)*b.ErrorRatio + rng.Float64())
		errs = min(errs, share)
		ag := &protocol.Aggregate{Requests: share, Errors: errs,
			Latency: latencies(rng, share-errs, time.Duration(float64(tr.BaseLatency)*b.LatencyFactor))}
		if errs > 0 {
			ag.ErrorsByCode = []protocol.CodeCount{{Code: "internal", Count: errs}}
		}
		if cand.trial.Mode == protocol.TrialShadow {
			both := share - errs
			agree := both - min(both, uint64(float64(both)*b.Disagree+rng.Float64()))
			ag.Shadow = &protocol.Shadow{Baseline: strconv.FormatInt(m.Version, 10), BaselineLatency: latencies(rng, both, tr.BaseLatency),
				Outputs: []protocol.OutputAgreement{{Name: "out", Compared: both, MaxAbsDiff: 2 * b.MeanAbsDiff,
					SumMeanAbsDiff: b.MeanAbsDiff * float64(both), Top1Compared: both, Top1Agree: agree}}}
		}
		rec(m.Name, cand.in.Version, cand.digest, ag)
	}
	return out
}

// sendAggregates publishes one batch of the interval's aggregates.
func (a *Agent) sendAggregates(cl mqtt.Client, rng *rand.Rand, start, end time.Time) {
	recs := a.aggregates(rng, start, end)
	if len(recs) == 0 {
		return
	}
	b := protocol.AppendBatchHeader(nil, protocol.BatchHeader{Epoch: a.epoch, Count: len(recs)})
	for i := range recs {
		body, err := protocol.AppendRecord(nil, &recs[i])
		if err != nil {
			a.log.Warn("aggregate", "err", err)
			return
		}
		b = protocol.AppendBatchEntry(b, a.seq.Add(1), body)
	}
	a.aggs.Add(uint64(len(recs)))
	cl.Publish(a.topics.Events, 1, false, b)
}
