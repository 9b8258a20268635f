package registry

import (
	"database/sql"
	"math"
	"slices"
	"sort"
	"strings"

	"github.com/outpost-edge/outpost/protocol"
)

// Shadow sections in time buckets (schema 9): an aggregate record with a
// Shadow section is a candidate's answers to copies of live requests
// (docs/PROTOCOL.md, Trials). No client saw them, so ingest never adds it
// to agg_buckets or agg_totals; it merges it, in the transaction that
// stores it, into its device's shadow_buckets rows of the same steps as
// agg_buckets (the minute and hour holding the aggregate's Start, and the
// fine step when Options.FineStep is set), keyed by the candidate's
// version and the serving version the copies came from. Merging adds the
// counts, the two latency histograms (LatencyHistogram.Merge), the feature
// histograms (MergeFeatures) and the outputs' agreement (MergeOutputs).
// There are no fleet-wide rows: the rollout analysis reads devices.

// shadowKey names a shadow_buckets row.
type shadowKey struct {
	model, version, baseline, device string
	step, start                      int64
}

// shadowValue is one shadow_buckets row's values.
type shadowValue struct {
	records, requests, errors, dropped uint64
	latency, baselineLatency           LatencyHistogram
	outputs                            []protocol.OutputAgreement
	features                           []protocol.FeatureCounts
}

func (v *shadowValue) addAggregate(a *protocol.Aggregate) {
	v.records++
	v.requests += a.Requests
	v.errors += a.Errors
	v.dropped += a.Shadow.Dropped
	v.latency.Merge(&LatencyHistogram{BoundsMicros: a.Latency.BoundsMicros, Counts: a.Latency.Counts, SumMicros: a.Latency.SumMicros})
	bl := &a.Shadow.BaselineLatency
	v.baselineLatency.Merge(&LatencyHistogram{BoundsMicros: bl.BoundsMicros, Counts: bl.Counts, SumMicros: bl.SumMicros})
	v.outputs = MergeOutputs(v.outputs, a.Shadow.Outputs)
	v.features = MergeFeatures(v.features, a.Features)
}

func (v *shadowValue) add(o *shadowValue) {
	v.records += o.records
	v.requests += o.requests
	v.errors += o.errors
	v.dropped += o.dropped
	v.latency.Merge(&o.latency)
	v.baselineLatency.Merge(&o.baselineLatency)
	v.outputs = MergeOutputs(v.outputs, o.outputs)
	v.features = MergeFeatures(v.features, o.features)
}

// MergeOutputs adds add to into, output by output (matched by name; new
// names appended): Compared, SumMeanAbsDiff, Top1Compared and Top1Agree
// are added, MaxAbsDiff is the larger. A difference that is not a finite
// number (only a broken or hostile device sends one) counts as 0, so the
// stored JSON stays valid. It returns the merged list; into's slice may be
// reused. Ingest and the analysis both merge with it.
func MergeOutputs(into, add []protocol.OutputAgreement) []protocol.OutputAgreement {
	for _, o := range add {
		i := slices.IndexFunc(into, func(g protocol.OutputAgreement) bool { return g.Name == o.Name })
		if i < 0 {
			into = append(into, protocol.OutputAgreement{Name: o.Name})
			i = len(into) - 1
		}
		g := &into[i]
		g.Compared += o.Compared
		g.MaxAbsDiff = math.Max(g.MaxAbsDiff, math.Abs(finite(o.MaxAbsDiff)))
		g.SumMeanAbsDiff += math.Abs(finite(o.SumMeanAbsDiff))
		g.Top1Compared += o.Top1Compared
		g.Top1Agree += min(o.Top1Agree, o.Top1Compared)
	}
	return into
}

// shadowBatch is what one ingest transaction adds to shadow_buckets,
// merged in memory first.
type shadowBatch struct {
	rows map[shadowKey]*shadowValue
}

// add merges one fresh aggregate record with a Shadow section; fine > 0
// keeps buckets of that many seconds too.
func (b *shadowBatch) add(device string, rec *protocol.Record, fine int64) {
	a := rec.Aggregate
	if rec.Model.Name == "" {
		return
	}
	at := a.Start
	if at.IsZero() {
		at = rec.Time
	}
	if b.rows == nil {
		b.rows = map[shadowKey]*shadowValue{}
	}
	steps := []int64{MinuteBucket, HourBucket}
	if fine > 0 {
		steps = append(steps, fine)
	}
	for _, step := range steps {
		k := shadowKey{model: rec.Model.Name, version: rec.Model.Version, baseline: a.Shadow.Baseline, device: device,
			step: step, start: floorTo(at.Unix(), step)}
		v := b.rows[k]
		if v == nil {
			v = &shadowValue{}
			b.rows[k] = v
		}
		v.addAggregate(a)
	}
}

const shadowCols = `records, requests, errors, dropped, latency, baseline_latency, outputs, features`

// flushShadow merges the batch into the stored rows inside tx, a row at a
// time (shadow sections are few: one per device on trial and interval),
// in one key order for every replica so that PostgreSQL's row locks are
// always taken in the same order.
func (r *Registry) flushShadow(tx *sql.Tx, b *shadowBatch) error {
	if len(b.rows) == 0 {
		return nil
	}
	keys := make([]shadowKey, 0, len(b.rows))
	for k := range b.rows {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		for _, c := range [][2]string{{a.model, b.model}, {a.version, b.version}, {a.baseline, b.baseline}, {a.device, b.device}} {
			if n := strings.Compare(c[0], c[1]); n != 0 {
				return n < 0
			}
		}
		if a.step != b.step {
			return a.step < b.step
		}
		return a.start < b.start
	})
	const where = ` WHERE model = ? AND version = ? AND baseline = ? AND device = ? AND step = ? AND start = ?`
	for _, k := range keys {
		args := []any{k.model, k.version, k.baseline, k.device, k.step, k.start}
		if r.eng.name == "postgres" {
			if _, err := r.exec(tx, `INSERT INTO shadow_buckets (model, version, baseline, device, step, start)
				VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`, args...); err != nil {
				return err
			}
		}
		v := &shadowValue{}
		row := tx.QueryRow(r.eng.rebind(`SELECT `+shadowCols+` FROM shadow_buckets`+where+r.eng.forUpdate), args...)
		switch err := scanShadow(row, v); {
		case err == sql.ErrNoRows:
		case err != nil:
			return err
		}
		v.add(b.rows[k])
		if _, err := r.exec(tx, `INSERT INTO shadow_buckets (model, version, baseline, device, step, start, `+shadowCols+`)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (model, version, baseline, device, step, start) DO UPDATE SET records = excluded.records,
			requests = excluded.requests, errors = excluded.errors, dropped = excluded.dropped, latency = excluded.latency,
			baseline_latency = excluded.baseline_latency, outputs = excluded.outputs, features = excluded.features`,
			append(args, int64(v.records), int64(v.requests), int64(v.errors), int64(v.dropped), v.latency.json(),
				v.baselineLatency.json(), outputsJSON(v.outputs), featuresJSON(v.features))...); err != nil {
			return err
		}
	}
	return nil
}

// scanShadow reads shadowCols into v.
func scanShadow(row scanner, v *shadowValue, lead ...any) error {
	var (
		records, requests, errs, dropped     int64
		latency, baseline, outputs, features []byte
	)
	if err := row.Scan(append(lead, &records, &requests, &errs, &dropped, &latency, &baseline, &outputs, &features)...); err != nil {
		return err
	}
	v.records, v.requests, v.errors, v.dropped = uint64(records), uint64(requests), uint64(errs), uint64(dropped)
	for _, f := range []struct {
		b []byte
		v any
	}{{latency, &v.latency}, {baseline, &v.baselineLatency}, {outputs, &v.outputs}, {features, &v.features}} {
		if err := unjs(f.b, f.v); err != nil {
			return err
		}
	}
	return nil
}

func outputsJSON(os []protocol.OutputAgreement) string {
	if len(os) == 0 {
		return "[]"
	}
	return js(os)
}
