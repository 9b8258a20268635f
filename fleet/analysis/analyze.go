package analysis

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/outpost-edge/outpost/fleet/drift"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/protocol"
)

// Store is where an Analyzer reads the evidence: fleet/registry's
// *Registry. Both methods are safe for concurrent use, read only, and
// answer a window without traffic with an empty slice, not an error; the
// intervals are per device and bucket (registry.EvidenceQuery says which).
type Store interface {
	Intervals(q registry.EvidenceQuery) ([]registry.Interval, error)
	ShadowIntervals(q registry.EvidenceQuery) ([]registry.ShadowInterval, error)
}

// Options configure an Analyzer. Store is required.
type Options struct {
	Store Store
	// Reference returns the reference profile a model version's signed
	// manifest carries, nil (and no error) for a version without one; the
	// drift metric is skipped when it is nil or the candidate has no
	// profile with output features. It must be safe for concurrent use.
	Reference func(ctx context.Context, model string, version int64) (*profile.Profile, error)
	Logger    *slog.Logger
}

// Analyzer judges candidates against baselines from the store's evidence.
// It keeps no state between calls and is safe for concurrent use.
type Analyzer struct {
	opts Options
	log  *slog.Logger
}

// Errors.
var (
	// ErrInvalidRequest: a request Analyze cannot judge (no model, no
	// devices, a window that ends before it starts, an unknown phase, a
	// config that does not validate).
	ErrInvalidRequest = errors.New("analysis: invalid request")
)

// New returns an Analyzer.
func New(opts Options) (*Analyzer, error) {
	if opts.Store == nil {
		return nil, errors.New("analysis: a store is required")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Analyzer{opts: opts, log: log.With("component", "analysis")}, nil
}

// arm is one side's evidence, summed over its intervals.
type arm struct {
	requests, errors uint64
	// means are the mean latencies in ms of the latency test's units
	// (intervals with at least one latency, or devices: perDevice),
	// latencyN the requests behind them.
	means     []float64
	latencyN  uint64
	perDevice bool
	features  []protocol.FeatureCounts
}

// unit names what a.means count, unitOne one of them.
func (a *arm) unit() string { return a.unitOne() + "s" }

func (a *arm) unitOne() string {
	if a.perDevice {
		return "device"
	}
	return "interval"
}

func (a *arm) addTraffic(requests, errors uint64) {
	a.requests += requests
	a.errors += errors
}

func (a *arm) addLatency(h *registry.LatencyHistogram) {
	if n := h.Total(); n > 0 {
		a.means = append(a.means, float64(h.SumMicros)/float64(n)/1000)
		a.latencyN += n
	}
}

// evidence is what a phase's metrics are judged on. errBase and errCand
// are the error ratio's arms, latBase and latCand the latency's (in shadow
// the serving version's latency on the copied requests, paired with the
// candidate's), featBase and featCand the drift's.
type evidence struct {
	errBase, errCand, latBase, latCand, featBase, featCand *arm
	outputs                                                []protocol.OutputAgreement
}

// Analyze judges req's candidate against its baseline over [req.From,
// req.To]. A zero req.Config means Defaults. The report's Phase, Model,
// versions and window are req's (Wave is the caller's to set).
// ErrInvalidRequest for a request it cannot judge; other errors are the
// store's (or the reference's), worth trying again.
func (a *Analyzer) Analyze(ctx context.Context, req Request) (Report, error) {
	if err := ctx.Err(); err != nil {
		return Report{}, err
	}
	cfg := req.Config
	if cfg.IsZero() {
		cfg = Defaults()
	}
	if err := cfg.Validate(); err != nil {
		return Report{}, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	switch {
	case req.Model == "":
		return Report{}, fmt.Errorf("%w: no model", ErrInvalidRequest)
	case len(req.Devices) == 0:
		return Report{}, fmt.Errorf("%w: %s phase without devices", ErrInvalidRequest, req.Phase)
	case !req.To.After(req.From):
		return Report{}, fmt.Errorf("%w: window ends (%s) before it starts (%s)", ErrInvalidRequest, req.To, req.From)
	}
	ev, err := a.evidence(req)
	if err != nil {
		return Report{}, err
	}
	rep := Report{Phase: req.Phase, Model: req.Model, Baseline: req.Baseline, Candidate: req.Candidate,
		From: req.From, To: req.To, Metrics: []MetricResult{}}
	alpha := 1 - cfg.Confidence
	for _, m := range cfg.Metrics {
		var res MetricResult
		var judged bool
		switch m.Name {
		case MetricErrorRatio:
			res, judged = errorRatio(m, ev.errBase, ev.errCand, cfg.MinRequests, alpha), true
		case MetricLatency:
			res, judged = latency(m, ev.latBase, ev.latCand, cfg.MinRequests, alpha), true
		case MetricAgreement:
			if req.Phase == PhaseShadow {
				res, judged = agreement(m, ev.outputs, cfg.MinRequests, alpha), true
			}
		case MetricDrift:
			res, judged, err = a.drift(ctx, req, m, ev, cfg.MinRequests)
			if err != nil {
				return Report{}, err
			}
		}
		if judged {
			res.Name, res.Critical, res.Weight = m.Name, m.Critical, m.Weight
			if m.Name == MetricLatency && req.Phase == PhaseShadow && !m.ScoreInShadow {
				// Shown, not scored (MetricConfig.ScoreInShadow).
				res.Weight = 0
				res.Reason += " (not scored in shadow: the copies share the cores with live traffic)"
			}
			rep.Metrics = append(rep.Metrics, res)
		}
	}
	rep.Score, rep.Verdict, rep.Reason = combine(rep.Metrics, cfg)
	rep.Score = math.Round(rep.Score*100) / 100 // judged unrounded; shown to 0.01
	a.log.Debug("analysed", "model", req.Model, "phase", req.Phase, "baseline", req.Baseline, "candidate", req.Candidate,
		"verdict", rep.Verdict, "score", rep.Score, "reason", rep.Reason)
	return rep, nil
}

// evidence reads the phase's two arms.
func (a *Analyzer) evidence(req Request) (*evidence, error) {
	base, cand := strconv.FormatInt(req.Baseline, 10), strconv.FormatInt(req.Candidate, 10)
	q := registry.EvidenceQuery{Model: req.Model, Devices: req.Devices, Since: req.From, Until: req.To}
	// traffic reads q's served traffic; perDevice makes each device one
	// latency value (its mean over the window) instead of each interval.
	traffic := func(q registry.EvidenceQuery, perDevice bool) (*arm, error) {
		in, err := a.opts.Store.Intervals(q)
		if err != nil {
			return nil, fmt.Errorf("analysis: %s v%s: %w", q.Model, q.Version, err)
		}
		r := arm{perDevice: perDevice}
		byDevice := map[string]*registry.LatencyHistogram{}
		var order []string
		for i := range in {
			r.addTraffic(in[i].Requests, in[i].Errors)
			r.features = registry.MergeFeatures(r.features, in[i].Features)
			if !perDevice {
				r.addLatency(&in[i].Latency)
				continue
			}
			h := byDevice[in[i].Device]
			if h == nil {
				h = &registry.LatencyHistogram{}
				byDevice[in[i].Device] = h
				order = append(order, in[i].Device)
			}
			h.Merge(&in[i].Latency)
		}
		for _, d := range order {
			r.addLatency(byDevice[d])
		}
		return &r, nil
	}
	var ev evidence
	switch req.Phase {
	case PhaseShadow:
		// The candidate's answers to the copies, and the serving version's
		// latency on the same requests; its error ratio is the serving
		// version's traffic on the same devices (the copies are a sample
		// of it).
		q.Version, q.Baseline = cand, base
		sh, err := a.opts.Store.ShadowIntervals(q)
		if err != nil {
			return nil, fmt.Errorf("analysis: shadow of %s v%s: %w", q.Model, cand, err)
		}
		c, b := &arm{}, &arm{}
		for i := range sh {
			c.addTraffic(sh[i].Requests, sh[i].Errors)
			c.addLatency(&sh[i].Latency)
			b.addLatency(&sh[i].BaselineLatency)
			c.features = registry.MergeFeatures(c.features, sh[i].Features)
			ev.outputs = registry.MergeOutputs(ev.outputs, sh[i].Outputs)
		}
		q.Version, q.Baseline = base, ""
		served, err := traffic(q, false)
		if err != nil {
			return nil, err
		}
		ev.errBase, ev.errCand, ev.latBase, ev.latCand, ev.featBase, ev.featCand = served, c, b, c, served, c
	case PhaseCanary, PhaseWave:
		// In a wave the two arms are different devices: a device's own
		// speed (its hardware, its other work, its place on the cores)
		// lasts the whole window, so its intervals are not independent
		// evidence about the version, and the latency test counts
		// devices (docs/ANALYSIS.md).
		perDevice := req.Phase == PhaseWave
		q.Version = cand
		c, err := traffic(q, perDevice)
		if err != nil {
			return nil, err
		}
		q.Version = base
		if req.Phase == PhaseWave {
			// Devices still on the baseline: those named, or every other.
			q.Devices, q.Except = req.BaselineDevices, nil
			if len(q.Devices) == 0 {
				q.Except = req.Devices
			}
		}
		b, err := traffic(q, perDevice)
		if err != nil {
			return nil, err
		}
		ev.errBase, ev.errCand, ev.latBase, ev.latCand, ev.featBase, ev.featCand = b, c, b, c, b, c
	default:
		return nil, fmt.Errorf("%w: unknown phase %q", ErrInvalidRequest, req.Phase)
	}
	return &ev, nil
}

// errorRatio: the candidate fails when its error ratio is higher with the
// configured confidence (one-sided two-proportion z-test) and by more than
// MaxIncrease.
func errorRatio(m MetricConfig, b, c *arm, minRequests int64, alpha float64) MetricResult {
	r := MetricResult{Unit: "ratio", BaselineN: int64(b.requests), CandidateN: int64(c.requests)}
	if b.requests > 0 {
		r.Baseline = float64(b.errors) / float64(b.requests)
	}
	if c.requests > 0 {
		r.Candidate = float64(c.errors) / float64(c.requests)
	}
	if short := shortArms(b.requests, c.requests, minRequests, "requests"); short != "" {
		r.Verdict, r.Reason = Wait, short
		return r
	}
	_, p, ok := TwoProportions(c.errors, c.requests, b.errors, b.requests)
	if !ok {
		r.Verdict, r.Reason = Wait, "error counts above request counts"
		return r
	}
	r.P = p
	diff := r.Candidate - r.Baseline
	switch {
	case p < alpha && diff > m.MaxIncrease:
		r.Verdict = Fail
		r.Reason = fmt.Sprintf("error ratio %.4f against %.4f: %+.4f, above the %.4f tolerated (p %.2g < %.2g)",
			r.Candidate, r.Baseline, diff, m.MaxIncrease, p, alpha)
	case p < alpha:
		r.Verdict = Pass
		r.Reason = fmt.Sprintf("error ratio %.4f against %.4f: higher (p %.2g) but within the %.4f tolerated", r.Candidate, r.Baseline, p, m.MaxIncrease)
	default:
		r.Verdict = Pass
		r.Reason = fmt.Sprintf("error ratio %.4f against %.4f: not significantly higher (p %.2g)", r.Candidate, r.Baseline, p)
	}
	return r
}

// latency: Mann–Whitney U on the mean latencies of the arms' units
// (device intervals, or devices in a wave); the candidate fails when its
// units are slower with the configured confidence and the ratio of the
// medians of their means is above MaxRatio.
func latency(m MetricConfig, b, c *arm, minRequests int64, alpha float64) MetricResult {
	r := MetricResult{Unit: "ms", BaselineN: int64(len(b.means)), CandidateN: int64(len(c.means)),
		Baseline: median(b.means), Candidate: median(c.means)}
	if short := shortArms(b.latencyN, c.latencyN, minRequests, "requests with a latency"); short != "" {
		r.Verdict, r.Reason = Wait, short
		return r
	}
	if mp := MinP(len(c.means), len(b.means)); mp >= alpha {
		r.Verdict = Wait
		r.Reason = fmt.Sprintf("%d %s against %d: too few for the test to reach %.3g confidence whatever they show",
			len(c.means), c.unit(), len(b.means), 1-alpha)
		return r
	}
	_, p, ok := MannWhitney(c.means, b.means)
	if !ok {
		r.Verdict, r.Reason = Wait, "every interval has the same mean latency: nothing to compare"
		return r
	}
	r.P = p
	ratio := 1.0
	switch {
	case r.Baseline > 0:
		ratio = r.Candidate / r.Baseline
	case r.Candidate > 0:
		ratio = math.Inf(1)
	}
	switch {
	case p < alpha && ratio > m.MaxRatio:
		r.Verdict = Fail
		r.Reason = fmt.Sprintf("median %s latency %.3g ms against %.3g ms: %.2fx, above the %.2fx tolerated (p %.2g < %.2g)",
			c.unitOne(), r.Candidate, r.Baseline, ratio, m.MaxRatio, p, alpha)
	case p < alpha:
		r.Verdict = Pass
		r.Reason = fmt.Sprintf("median %s latency %.3g ms against %.3g ms: slower (p %.2g) but %.2fx, within %.2fx",
			c.unitOne(), r.Candidate, r.Baseline, p, ratio, m.MaxRatio)
	default:
		r.Verdict = Pass
		r.Reason = fmt.Sprintf("median %s latency %.3g ms against %.3g ms: not significantly slower (p %.2g)", c.unitOne(), r.Candidate, r.Baseline, p)
	}
	return r
}

// agreement (shadow): per output, the share of score vectors whose top
// class agrees (it fails under MinTop1 with the configured confidence,
// one-sided test of one proportion) and the mean absolute difference of an
// element (it fails above MaxMeanAbsDiff; the aggregates carry sums, not
// spreads, so this is a bound on the estimate). Outputs compared on fewer
// than minRequests requests are not judged.
func agreement(m MetricConfig, outs []protocol.OutputAgreement, minRequests int64, alpha float64) MetricResult {
	r := MetricResult{Unit: "top1", Baseline: 1, Candidate: 1}
	var compared uint64
	for _, o := range outs {
		compared = max(compared, o.Compared)
	}
	r.BaselineN, r.CandidateN = int64(compared), int64(compared)
	if compared < uint64(minRequests) {
		r.Verdict = Wait
		r.Reason = fmt.Sprintf("%d requests compared, want %d", compared, minRequests)
		return r
	}
	var fails, notes []string
	var topFail, diffFail bool
	worstTop1, worstDiff := 2.0, -1.0 // none yet
	var worstTop1P float64
	for _, o := range outs {
		if o.Compared < uint64(minRequests) {
			continue
		}
		diff := o.SumMeanAbsDiff / float64(o.Compared)
		worstDiff = max(worstDiff, diff)
		note := fmt.Sprintf("%s: mean |diff| %.3g (max %.3g)", o.Name, diff, o.MaxAbsDiff)
		if m.MaxMeanAbsDiff > 0 && diff > m.MaxMeanAbsDiff {
			diffFail = true
			fails = append(fails, fmt.Sprintf("%s: mean |diff| %.3g above %.3g", o.Name, diff, m.MaxMeanAbsDiff))
		}
		if o.Top1Compared > 0 && m.MinTop1 > 0 {
			share := float64(o.Top1Agree) / float64(o.Top1Compared)
			_, p, ok := ShareBelow(o.Top1Agree, o.Top1Compared, m.MinTop1)
			if share < worstTop1 {
				worstTop1, worstTop1P = share, p
			}
			note += fmt.Sprintf(", top-1 %.3f of %d", share, o.Top1Compared)
			if ok && share < m.MinTop1 && p < alpha {
				topFail = true
				fails = append(fails, fmt.Sprintf("%s: top-1 agreement %.3f of %d rows, under %.3g (p %.2g)", o.Name, share, o.Top1Compared, m.MinTop1, p))
			}
		}
		notes = append(notes, note)
	}
	// The numbers shown: the worst top-1 agreement (the serving version's
	// with itself being 1), unless only the differences fail or there is
	// no score vector: then the worst mean difference (its own being 0).
	if worstTop1 > 1 || (diffFail && !topFail) {
		r.Unit, r.Baseline, r.Candidate = "mean_abs_diff", 0, max(worstDiff, 0)
	} else {
		r.Candidate, r.P = worstTop1, worstTop1P
	}
	if len(fails) > 0 {
		r.Verdict, r.Reason = Fail, strings.Join(fails, "; ")
		return r
	}
	r.Verdict, r.Reason = Pass, "agrees: "+strings.Join(notes, "; ")
	return r
}

// drift: the candidate's output features (out:...) against the
// reference profile in its manifest, PSI per feature (fleet/drift); it
// fails when a feature's PSI is above MaxPSI and above the PSI sampling
// noise reaches once in a thousand windows (drift.NoiseBound). judged is
// false when there is nothing to compare with.
func (a *Analyzer) drift(ctx context.Context, req Request, m MetricConfig, ev *evidence, minRequests int64) (MetricResult, bool, error) {
	if a.opts.Reference == nil {
		return MetricResult{}, false, nil
	}
	ref, err := outputReference(ctx, a.opts.Reference, req.Model, req.Candidate)
	if err != nil || ref == nil {
		return MetricResult{}, false, err
	}
	th := drift.Thresholds{PSI: m.MaxPSI, MinCount: uint64(minRequests)}
	cand := drift.Judge(ref, ev.featCand.features, th)
	r := MetricResult{Unit: "psi"}
	var worst *drift.FeatureScore
	var fails []string
	for i := range cand.Features {
		f := &cand.Features[i]
		if !f.Judged {
			continue
		}
		r.CandidateN = max(r.CandidateN, int64(f.Count))
		if worst == nil || f.PSI > worst.PSI {
			worst = f
		}
		if f.PSI > m.MaxPSI && f.PSI >= f.Noise {
			fails = append(fails, fmt.Sprintf("%s: PSI %.3g above %.3g (noise %.2g)", f.Name, f.PSI, m.MaxPSI, f.Noise))
		}
	}
	if worst == nil {
		r.Verdict = Wait
		r.Reason = fmt.Sprintf("no output feature has %d values yet", minRequests)
		return r, true, nil
	}
	r.Candidate = worst.PSI
	// The baseline's output features against its own reference, for
	// comparison: the same shift in both says the inputs moved.
	if bref, err := outputReference(ctx, a.opts.Reference, req.Model, req.Baseline); err != nil {
		return MetricResult{}, false, err
	} else if bref != nil {
		base := drift.Judge(bref, ev.featBase.features, th)
		if i := slices.IndexFunc(base.Features, func(f drift.FeatureScore) bool { return f.Name == worst.Name }); i >= 0 && base.Features[i].Judged {
			r.Baseline, r.BaselineN = base.Features[i].PSI, int64(base.Features[i].Count)
		}
	}
	if len(fails) > 0 {
		r.Verdict, r.Reason = Fail, strings.Join(fails, "; ")
		return r, true, nil
	}
	r.Verdict = Pass
	r.Reason = fmt.Sprintf("largest PSI %.3g (%s), within %.3g or noise (%.2g)", worst.PSI, worst.Name, m.MaxPSI, worst.Noise)
	return r, true, nil
}

// outputReference is version's reference profile reduced to its output
// features, nil when it has none.
func outputReference(ctx context.Context, get func(context.Context, string, int64) (*profile.Profile, error), model string, version int64) (*profile.Profile, error) {
	p, err := get(ctx, model, version)
	if err != nil {
		return nil, fmt.Errorf("analysis: reference of %s v%d: %w", model, version, err)
	}
	if p == nil {
		return nil, nil
	}
	out := &profile.Profile{Version: p.Version, Requests: p.Requests}
	for _, f := range p.Features {
		if strings.HasPrefix(f.Name, "out:") {
			out.Features = append(out.Features, f)
		}
	}
	if len(out.Features) == 0 {
		return nil, nil
	}
	return out, nil
}

// shortArms says which arm has fewer than min of what, or "".
func shortArms(base, cand uint64, min int64, what string) string {
	var short []string
	if cand < uint64(min) {
		short = append(short, fmt.Sprintf("candidate %d", cand))
	}
	if base < uint64(min) {
		short = append(short, fmt.Sprintf("baseline %d", base))
	}
	if len(short) == 0 {
		return ""
	}
	return fmt.Sprintf("%s %s, want %d each", strings.Join(short, ", "), what, min)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// combine scores the metrics as Kayenta does: 100 × the weight of the
// passing metrics over the weight of the judged ones (pass or fail; a
// metric waiting for evidence is not judged). A critical metric that fails
// fails the analysis whatever the score; one that waits makes it wait; so
// does a score with nothing judged.
func combine(ms []MetricResult, cfg Config) (float64, Verdict, string) {
	var judged, passed float64
	var critFail, critWait, waiting []string
	for _, m := range ms {
		switch m.Verdict {
		case Pass:
			judged += m.Weight
			passed += m.Weight
		case Fail:
			judged += m.Weight
			if m.Critical {
				critFail = append(critFail, m.Name+" ("+m.Reason+")")
			}
		case Wait:
			waiting = append(waiting, m.Name)
			if m.Critical {
				critWait = append(critWait, m.Name+" ("+m.Reason+")")
			}
		}
	}
	var score float64
	if judged > 0 {
		score = 100 * passed / judged
	}
	switch {
	case len(critFail) > 0:
		return score, Fail, "critical metric failed: " + strings.Join(critFail, "; ")
	case len(critWait) > 0:
		return score, Wait, "waiting for evidence: " + strings.Join(critWait, "; ")
	case judged == 0:
		return score, Wait, "no metric has enough evidence yet: " + strings.Join(waiting, ", ")
	}
	failed := []string{}
	for _, m := range ms {
		if m.Verdict == Fail {
			failed = append(failed, m.Name)
		}
	}
	what := ""
	if len(failed) > 0 {
		what = ", failed: " + strings.Join(failed, ", ")
	}
	if len(waiting) > 0 {
		what += ", not judged yet: " + strings.Join(waiting, ", ")
	}
	switch {
	case score >= cfg.Pass:
		return score, Pass, fmt.Sprintf("score %.0f at or above pass %.0f%s", score, cfg.Pass, what)
	case score >= cfg.Marginal:
		return score, Marginal, fmt.Sprintf("score %.0f below pass %.0f, at or above marginal %.0f%s", score, cfg.Pass, cfg.Marginal, what)
	}
	return score, Fail, fmt.Sprintf("score %.0f below marginal %.0f%s", score, cfg.Marginal, what)
}
