package registry

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// The evidence a rollout's analysis reads (fleet/analysis): one model
// version's traffic per device and bucket over a window, from agg_buckets
// (served traffic) or shadow_buckets (a candidate's answers to copies).

// EvidenceQuery selects the per-device intervals of one model version.
type EvidenceQuery struct {
	Model, Version string
	// Baseline, for ShadowIntervals only, is the serving version the
	// copies came from.
	Baseline string
	// Devices, if not empty, are the only devices read; otherwise every
	// device. Except are devices left out either way.
	Devices, Except []string
	// Since and Until bound the window: the buckets read are those from
	// the one holding Since to the last starting before Until.
	Since, Until time.Time
	// Step is the bucket step read, in seconds; 0 takes EvidenceStep.
	Step int64
}

// Interval is one device's traffic of a version in one bucket.
type Interval struct {
	Device string
	Start  time.Time
	// Step is the bucket's length in seconds.
	Step             int64
	Requests, Errors uint64
	Latency          LatencyHistogram
	Features         []protocol.FeatureCounts
}

// ShadowInterval is one device's shadow section of a candidate in one
// bucket: Interval counts the candidate's answers to the copies.
type ShadowInterval struct {
	Interval
	Baseline string
	Dropped  uint64
	// BaselineLatency is the serving version's latency on the same
	// requests as Latency (paired).
	BaselineLatency LatencyHistogram
	Outputs         []protocol.OutputAgreement
}

// maxEvidenceIntervals is about how many buckets per device a window is
// read in: the finest step the store keeps that does not go over it.
const maxEvidenceIntervals = 120

// EvidenceStep is the bucket step a window [since, until) is read in as of
// now: the store's fine step (Options.FineStep) when it keeps one, the
// window starts within the hour that fine buckets are kept (with a margin)
// and the window is at most maxEvidenceIntervals of them; else minutes, up
// to maxEvidenceIntervals of them; else hours.
func (r *Registry) EvidenceStep(since, until, now time.Time) int64 {
	secs := int64(until.Sub(since) / time.Second)
	if f := r.mon.fineStep; f > 0 && since.After(now.Add(-55*time.Minute)) && secs <= f*maxEvidenceIntervals {
		return f
	}
	if secs <= MinuteBucket*maxEvidenceIntervals {
		return MinuteBucket
	}
	return HourBucket
}

// maxDeviceList is the most devices an evidence query names in SQL; with
// more, it reads every device's rows and keeps the wanted ones.
const maxDeviceList = 500

// deviceFilter keeps the rows of the devices a query wants that its SQL
// could not select: those of a list too long to name, less the excepted.
type deviceFilter struct {
	keep, except map[string]bool // keep nil: every device
}

func (f *deviceFilter) wanted(device string) bool {
	return (f.keep == nil || f.keep[device]) && !f.except[device]
}

// evidenceWhere is the WHERE clause and arguments shared by both queries,
// and the filter of the devices the clause could not select.
func (r *Registry) evidenceWhere(q *EvidenceQuery, shadow bool) (string, []any, *deviceFilter, error) {
	if !q.Until.After(q.Since) {
		return "", nil, nil, fmt.Errorf("%w: evidence window ends (%s) before it starts (%s)", ErrInvalidQuery,
			q.Until.UTC().Format(time.RFC3339), q.Since.UTC().Format(time.RFC3339))
	}
	if q.Step == 0 {
		q.Step = r.EvidenceStep(q.Since, q.Until, time.Now())
	}
	if q.Step <= 0 {
		return "", nil, nil, fmt.Errorf("%w: evidence step %d s", ErrInvalidQuery, q.Step)
	}
	where := ` WHERE model = ? AND version = ?`
	args := []any{q.Model, q.Version}
	if shadow {
		where += ` AND baseline = ?`
		args = append(args, q.Baseline)
	}
	f := &deviceFilter{except: map[string]bool{}}
	for _, d := range q.Except {
		f.except[d] = true
	}
	switch {
	case len(q.Devices) > 0 && len(q.Devices) <= maxDeviceList:
		where += ` AND device IN (` + strings.TrimSuffix(strings.Repeat("?, ", len(q.Devices)), ", ") + `)`
		for _, d := range q.Devices {
			args = append(args, d)
		}
	case len(q.Devices) > 0:
		f.keep = map[string]bool{}
		for _, d := range q.Devices {
			f.keep[d] = true
		}
		fallthrough
	default:
		where += ` AND device <> ''`
	}
	where += ` AND step = ? AND start >= ? AND start < ?`
	args = append(args, q.Step, floorTo(q.Since.Unix(), q.Step), q.Until.Unix()+boolInt(q.Until.Nanosecond() > 0))
	return where, args, f, nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// Intervals returns the served traffic of q's version per device and
// bucket (agg_buckets), ordered by device and start.
// ErrInvalidQuery: a window that ends before it starts.
func (r *Registry) Intervals(q EvidenceQuery) ([]Interval, error) {
	where, args, filter, err := r.evidenceWhere(&q, false)
	if err != nil {
		return nil, err
	}
	// Rebound each time rather than cached (r.q): the text varies with the
	// number of devices named.
	rows, err := r.r.Query(r.eng.rebind(`SELECT device, step, start, requests, errors, latency, features FROM agg_buckets`+where+
		` ORDER BY device, start`), args...)
	if err != nil {
		return nil, fmt.Errorf("registry: intervals of %s v%s: %w", q.Model, q.Version, err)
	}
	defer rows.Close()
	out := []Interval{}
	for rows.Next() {
		var (
			in                    Interval
			start, requests, errs int64
			latency, features     []byte
		)
		if err := rows.Scan(&in.Device, &in.Step, &start, &requests, &errs, &latency, &features); err != nil {
			return nil, fmt.Errorf("registry: intervals of %s v%s: %w", q.Model, q.Version, err)
		}
		if !filter.wanted(in.Device) {
			continue
		}
		in.Start, in.Requests, in.Errors = time.Unix(start, 0).UTC(), uint64(requests), uint64(errs)
		if err := unjs(latency, &in.Latency); err != nil {
			return nil, fmt.Errorf("registry: intervals of %s v%s: %w", q.Model, q.Version, err)
		}
		if err := decodeFeatures(features, &in.Features); err != nil {
			return nil, fmt.Errorf("registry: intervals of %s v%s: %w", q.Model, q.Version, err)
		}
		out = append(out, in)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: intervals of %s v%s: %w", q.Model, q.Version, err)
	}
	if !recordStep(q.Step) {
		return out, nil
	}
	rwhere, rargs := `model = ? AND version = ?`, []any{q.Model, q.Version}
	if len(q.Devices) > 0 && len(q.Devices) <= maxDeviceList {
		rwhere += ` AND device IN (` + strings.TrimSuffix(strings.Repeat("?, ", len(q.Devices)), ", ") + `)`
		for _, d := range q.Devices {
			rargs = append(rargs, d)
		}
	}
	legacy := len(out)
	err = r.recordRows(rwhere, rargs, q.Step, q.Since.Unix(), q.Until.Unix()+boolInt(q.Until.Nanosecond() > 0),
		func(_, device string, start int64, v *aggValue) error {
			if filter.wanted(device) {
				out = append(out, Interval{Device: device, Start: time.Unix(start, 0).UTC(), Step: q.Step, Requests: v.requests,
					Errors: v.errors, Latency: v.latency, Features: v.features})
			}
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("registry: intervals of %s v%s: %w", q.Model, q.Version, err)
	}
	if legacy == 0 {
		return out, nil // agg_records alone: already in order
	}
	// Device minute rows from before agg_records beside records: in order,
	// one interval per device and bucket.
	slices.SortStableFunc(out, func(a, b Interval) int {
		if c := strings.Compare(a.Device, b.Device); c != 0 {
			return c
		}
		return a.Start.Compare(b.Start)
	})
	merged := out[:0]
	for _, in := range out {
		if n := len(merged); n > 0 && merged[n-1].Device == in.Device && merged[n-1].Start.Equal(in.Start) {
			m := &merged[n-1]
			m.Requests += in.Requests
			m.Errors += in.Errors
			m.Latency.Merge(&in.Latency)
			m.Features = MergeFeatures(m.Features, in.Features)
			continue
		}
		merged = append(merged, in)
	}
	return merged, nil
}

// ShadowIntervals returns the shadow sections of q's candidate version
// whose copies came from q.Baseline, per device and bucket
// (shadow_buckets), ordered by device and start.
// ErrInvalidQuery: a window that ends before it starts.
func (r *Registry) ShadowIntervals(q EvidenceQuery) ([]ShadowInterval, error) {
	where, args, filter, err := r.evidenceWhere(&q, true)
	if err != nil {
		return nil, err
	}
	rows, err := r.r.Query(r.eng.rebind(`SELECT device, step, start, `+shadowCols+` FROM shadow_buckets`+where+
		` ORDER BY device, start`), args...)
	if err != nil {
		return nil, fmt.Errorf("registry: shadow of %s v%s: %w", q.Model, q.Version, err)
	}
	defer rows.Close()
	out := []ShadowInterval{}
	for rows.Next() {
		var (
			in    ShadowInterval
			start int64
			v     shadowValue
		)
		if err := scanShadow(rows, &v, &in.Device, &in.Step, &start); err != nil {
			return nil, fmt.Errorf("registry: shadow of %s v%s: %w", q.Model, q.Version, err)
		}
		if !filter.wanted(in.Device) {
			continue
		}
		in.Start, in.Baseline = time.Unix(start, 0).UTC(), q.Baseline
		in.Requests, in.Errors, in.Dropped = v.requests, v.errors, v.dropped
		in.Latency, in.BaselineLatency, in.Outputs, in.Features = v.latency, v.baselineLatency, v.outputs, v.features
		out = append(out, in)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: shadow of %s v%s: %w", q.Model, q.Version, err)
	}
	return out, nil
}
