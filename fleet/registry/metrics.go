package registry

// Queries over the model traffic the ingest keeps in agg_buckets and
// agg_totals (schema 5, docs/MONITORING.md "Queries and Prometheus").
//
// A query reads one bucket size: minute buckets (step 60) when the step is
// under an hour or not a whole number of hours, hour buckets otherwise.
// Fleet-wide queries read the rows of device '' (the ingest keeps them
// beside the devices' rows), per-device queries the device's rows, so a
// query reads one row per bucket and version whatever the fleet's size.
// A query over every version reads, for each version agg_totals lists for
// the model, a range of the primary key (model, version, device, step,
// start): no other index is needed.
//
// Latency quantiles are merged from the buckets' histograms: counts of the
// same bound are added (histograms with other bounds are merged on the
// union of the bounds, each bucket's count placed at its own upper bound),
// then the quantile is interpolated linearly inside the bucket that holds
// its rank, from the bucket's lower bound (0 for the first) to its upper
// bound. A rank in the overflow bucket (above the last bound) answers the
// last bound: nothing says how far above it the values were.

import (
	"bytes"
	"database/sql"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"time"
)

// Bucket sizes of agg_buckets.step, in seconds.
const (
	MinuteBucket = 60
	HourBucket   = 3600
)

// MaxMetricsPoints bounds a metrics query's series: the range divided by the
// step may not give more points than this.
const MaxMetricsPoints = 10000

// MetricsQuery selects a model's traffic.
type MetricsQuery struct {
	Model string
	// Version, if set, selects one version; empty merges them all.
	Version string
	// Device, if set, selects one device's buckets; empty the whole fleet.
	Device string
	// Since and Until bound the range; Since is moved back to a multiple
	// of Step. A zero Until means now.
	Since, Until time.Time
	// Step is the series' resolution, a whole number of minutes; 0 picks
	// DefaultStep(Until - Since).
	Step time.Duration
}

// DefaultStep is the step a query over a range of length d gets without
// one: a minute up to 6 hours, an hour above.
func DefaultStep(d time.Duration) time.Duration {
	if d <= 6*time.Hour {
		return time.Minute
	}
	return time.Hour
}

// ModelMetrics is a model's traffic over a range, as the admin API's
// GET /v1/models/{name}/metrics answers it.
type ModelMetrics struct {
	Model       string         `json:"model"`
	Version     string         `json:"version"`
	Device      string         `json:"device"`
	Since       time.Time      `json:"since"`
	Until       time.Time      `json:"until"`
	StepSeconds int64          `json:"step_seconds"`
	Totals      MetricsTotals  `json:"totals"`
	Series      []MetricsPoint `json:"series"`
	// Versions are those with traffic in the range (in the device's
	// buckets for a device query), in version order.
	Versions []string `json:"versions"`
}

// MetricsTotals sum a whole range. Quantiles are in milliseconds, 0
// without requests; ThroughputRPS is requests over the range's seconds.
type MetricsTotals struct {
	Requests      uint64            `json:"requests"`
	Errors        uint64            `json:"errors"`
	ErrorsByCode  map[string]uint64 `json:"errors_by_code"`
	P50MS         float64           `json:"p50_ms"`
	P90MS         float64           `json:"p90_ms"`
	P99MS         float64           `json:"p99_ms"`
	ThroughputRPS float64           `json:"throughput_rps"`
}

// MetricsPoint is one step of the series, starting at Start; a step
// without traffic is there with zeros.
type MetricsPoint struct {
	Start         time.Time `json:"start"`
	Requests      uint64    `json:"requests"`
	Errors        uint64    `json:"errors"`
	P50MS         float64   `json:"p50_ms"`
	P90MS         float64   `json:"p90_ms"`
	P99MS         float64   `json:"p99_ms"`
	ThroughputRPS float64   `json:"throughput_rps"`
}

// LatencyHistogram is the latency column of agg_buckets and agg_totals:
// Counts[i] counts requests that took at most BoundsMicros[i] (and more
// than the bound before), the last of Counts, one more than the bounds,
// those above the last bound (protocol.Histogram).
type LatencyHistogram struct {
	BoundsMicros []uint64 `json:"bounds_micros"`
	Counts       []uint64 `json:"counts"`
	SumMicros    uint64   `json:"sum_micros"`
}

// Total is the number of requests the histogram counts.
func (h *LatencyHistogram) Total() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Merge adds o to h, ingest's merge and the queries' alike. With the same
// bounds every count is added; with other bounds each of o's counts goes to
// the bucket of h that holds its upper bound (o's overflow to h's), so a
// stored row keeps the bounds its first histogram gave it, whatever a
// device sends (a row cannot grow). Into an empty h, o is copied. A
// malformed o (not one count more than bounds) is ignored.
func (h *LatencyHistogram) Merge(o *LatencyHistogram) {
	if len(o.Counts) == 0 || len(o.Counts) != len(o.BoundsMicros)+1 {
		return
	}
	if len(h.Counts) == 0 {
		h.BoundsMicros = slices.Clone(o.BoundsMicros)
		h.Counts = slices.Clone(o.Counts)
		h.SumMicros = o.SumMicros
		return
	}
	h.SumMicros += o.SumMicros
	if slices.Equal(h.BoundsMicros, o.BoundsMicros) {
		for i, c := range o.Counts {
			h.Counts[i] += c
		}
		return
	}
	for i, c := range o.Counts {
		j := len(h.BoundsMicros) // overflow
		if i < len(o.BoundsMicros) {
			j, _ = slices.BinarySearch(h.BoundsMicros, o.BoundsMicros[i])
		}
		h.Counts[j] += c
	}
}

// Quantile returns the q-quantile (0 < q < 1) in microseconds, linearly
// interpolated inside its bucket; 0 for an empty histogram, the last bound
// for a rank in the overflow bucket.
func (h *LatencyHistogram) Quantile(q float64) float64 {
	total := h.Total()
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	var below float64
	for i, c := range h.Counts {
		if c == 0 {
			continue
		}
		if below+float64(c) < rank {
			below += float64(c)
			continue
		}
		if i >= len(h.BoundsMicros) {
			if len(h.BoundsMicros) == 0 {
				return 0
			}
			return float64(h.BoundsMicros[len(h.BoundsMicros)-1])
		}
		lo := 0.0
		if i > 0 {
			lo = float64(h.BoundsMicros[i-1])
		}
		hi := float64(h.BoundsMicros[i])
		return lo + (hi-lo)*(rank-below)/float64(c)
	}
	// Rounding left the rank above the last count: the top non-empty bucket.
	return float64(h.BoundsMicros[len(h.BoundsMicros)-1])
}

// quantilesMS fills the three quantiles in milliseconds.
func (h *LatencyHistogram) quantilesMS() (p50, p90, p99 float64) {
	return h.Quantile(0.5) / 1000, h.Quantile(0.9) / 1000, h.Quantile(0.99) / 1000
}

// Metrics answers q: totals over the range and a series by step.
// ErrNotFound: the model has neither a stored version nor traffic;
// ErrInvalidQuery: a step that is not a whole number of minutes, a range that
// ends before it starts, or more than MaxMetricsPoints steps.
func (r *Registry) Metrics(q MetricsQuery) (*ModelMetrics, error) {
	if q.Until.IsZero() {
		q.Until = time.Now()
	}
	if !q.Until.After(q.Since) {
		return nil, fmt.Errorf("%w: metrics range ends (%s) before it starts (%s)", ErrInvalidQuery,
			q.Until.UTC().Format(time.RFC3339), q.Since.UTC().Format(time.RFC3339))
	}
	if q.Step == 0 {
		q.Step = DefaultStep(q.Until.Sub(q.Since))
	}
	if q.Step < time.Minute || q.Step%time.Minute != 0 {
		return nil, fmt.Errorf("%w: metrics step %s: want a whole number of minutes", ErrInvalidQuery, q.Step)
	}
	step := int64(q.Step / time.Second)
	bucket := int64(MinuteBucket)
	if step%HourBucket == 0 {
		bucket = HourBucket
	}
	// Whole buckets: the first one the range touches to the last.
	since := q.Since.Unix() / step * step
	if q.Since.Unix() < 0 && q.Since.Unix()%step != 0 {
		since -= step
	}
	until := q.Until.Unix()
	if q.Until.Nanosecond() > 0 {
		until++
	}
	points := (until - since + step - 1) / step
	if points > MaxMetricsPoints {
		return nil, fmt.Errorf("%w: metrics range of %d steps of %s, at most %d", ErrInvalidQuery, points, q.Step, MaxMetricsPoints)
	}

	versions, err := r.metricsVersions(q.Model, q.Version)
	if err != nil {
		return nil, err
	}
	out := &ModelMetrics{Model: q.Model, Version: q.Version, Device: q.Device, Since: time.Unix(since, 0).UTC(),
		Until: q.Until.UTC(), StepSeconds: step, Series: make([]MetricsPoint, points), Versions: []string{},
		Totals: MetricsTotals{ErrorsByCode: map[string]uint64{}}}
	lat := make([]LatencyHistogram, points)
	var all LatencyHistogram
	for i := range out.Series {
		out.Series[i].Start = time.Unix(since+int64(i)*step, 0).UTC()
	}
	for _, v := range versions {
		seen, err := r.metricsRows(q.Model, v, q.Device, bucket, since, until, func(start int64, b *bucketRow) {
			i := (start - since) / step
			p := &out.Series[i]
			p.Requests += b.requests
			p.Errors += b.errors
			lat[i].Merge(&b.latency)
			out.Totals.Requests += b.requests
			out.Totals.Errors += b.errors
			for code, n := range b.byCode {
				out.Totals.ErrorsByCode[code] += n
			}
		})
		if err != nil {
			return nil, err
		}
		if seen {
			out.Versions = append(out.Versions, v)
		}
	}
	for i := range out.Series {
		p := &out.Series[i]
		p.P50MS, p.P90MS, p.P99MS = lat[i].quantilesMS()
		p.ThroughputRPS = float64(p.Requests) / float64(step)
		all.Merge(&lat[i])
	}
	t := &out.Totals
	t.P50MS, t.P90MS, t.P99MS = all.quantilesMS()
	t.ThroughputRPS = float64(t.Requests) / q.Until.Sub(q.Since).Seconds()
	return out, nil
}

// metricsVersions lists the versions a query reads: version alone when
// set, else every version agg_totals has for the model (the ingest adds a
// version's totals row with its first bucket). ErrNotFound when the model
// has no traffic and no stored version.
func (r *Registry) metricsVersions(model, version string) ([]string, error) {
	rows, err := r.r.Query(r.q(`SELECT version FROM agg_totals WHERE model = ?`), model)
	if err != nil {
		return nil, fmt.Errorf("registry: metrics %s: %w", model, err)
	}
	var vs []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			rows.Close()
			return nil, fmt.Errorf("registry: metrics %s: %w", model, err)
		}
		vs = append(vs, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: metrics %s: %w", model, err)
	}
	if len(vs) == 0 {
		var n int
		if err := r.r.QueryRow(r.q(`SELECT count(*) FROM models WHERE name = ?`), model).Scan(&n); err != nil {
			return nil, fmt.Errorf("registry: metrics %s: %w", model, err)
		}
		if n == 0 {
			return nil, fmt.Errorf("registry: metrics %s: %w", model, ErrNotFound)
		}
	}
	if version != "" {
		return []string{version}, nil
	}
	sortVersions(vs)
	return vs, nil
}

// sortVersions orders versions numerically (they are integers), any
// other text after them in text order.
func sortVersions(vs []string) {
	sort.Slice(vs, func(i, j int) bool { return versionLess(vs[i], vs[j]) })
}

func versionLess(x, y string) bool {
	a, aerr := strconv.ParseInt(x, 10, 64)
	b, berr := strconv.ParseInt(y, 10, 64)
	switch {
	case aerr == nil && berr == nil:
		return a < b
	case aerr == nil:
		return true
	case berr == nil:
		return false
	}
	return x < y
}

// bucketRow is one agg_buckets row's traffic columns, decoded.
type bucketRow struct {
	requests, errors uint64
	byCode           map[string]uint64
	latency          LatencyHistogram
}

// metricsRows calls fn for every bucket of one version and device in
// [since, until) and reports whether any had a request or an error.
func (r *Registry) metricsRows(model, version, device string, bucket, since, until int64, fn func(start int64, b *bucketRow)) (bool, error) {
	// A range of the primary key: one version's, device's and step's
	// buckets (SQLite's plan: SEARCH agg_buckets USING PRIMARY KEY).
	rows, err := r.r.Query(r.q(`SELECT start, requests, errors, errors_by_code, latency FROM agg_buckets
		WHERE model = ? AND version = ? AND device = ? AND step = ? AND start >= ? AND start < ?`),
		model, version, device, bucket, since, until)
	if err != nil {
		return false, fmt.Errorf("registry: metrics %s v%s: %w", model, version, err)
	}
	defer rows.Close()
	seen := false
	var byCode, latency []byte
	for rows.Next() {
		var start int64
		var requests, errors int64
		if err := rows.Scan(&start, &requests, &errors, &byCode, &latency); err != nil {
			return false, fmt.Errorf("registry: metrics %s v%s: %w", model, version, err)
		}
		b := bucketRow{requests: uint64(requests), errors: uint64(errors)}
		if string(byCode) != "{}" {
			if err := unjs(byCode, &b.byCode); err != nil {
				return false, fmt.Errorf("registry: metrics %s v%s bucket %d: errors_by_code: %w", model, version, start, err)
			}
		}
		if err := decodeLatency(latency, &b.latency); err != nil {
			return false, fmt.Errorf("registry: metrics %s v%s bucket %d: latency: %w", model, version, start, err)
		}
		seen = seen || requests > 0 || errors > 0
		fn(start, &b)
	}
	if err := rows.Err(); err != nil {
		return false, fmt.Errorf("registry: metrics %s v%s: %w", model, version, err)
	}
	if !fromRecords(device, bucket) {
		return seen, nil
	}
	err = r.recordRows(`model = ? AND version = ? AND device = ?`, []any{model, version, device}, bucket, since, until,
		func(_, _ string, start int64, v *aggValue) error {
			seen = seen || v.requests > 0 || v.errors > 0
			fn(start, &bucketRow{requests: v.requests, errors: v.errors, byCode: v.byCode, latency: v.latency})
			return nil
		})
	if err != nil {
		return false, fmt.Errorf("registry: metrics %s v%s: %w", model, version, err)
	}
	return seen, nil
}

// VersionTotals are a model version's running totals since it was first
// seen (agg_totals): what /metrics exposes as counters.
type VersionTotals struct {
	Model         string
	Version       string
	Requests      uint64
	Errors        uint64
	StreamDropped uint64
	ErrorsByCode  map[string]uint64
	Latency       LatencyHistogram
}

// ModelTotals lists every model version's totals, by model then version.
func (r *Registry) ModelTotals() ([]VersionTotals, error) {
	rows, err := r.r.Query(`SELECT model, version, requests, errors, stream_dropped, errors_by_code, latency FROM agg_totals`)
	if err != nil {
		return nil, fmt.Errorf("registry: model totals: %w", err)
	}
	defer rows.Close()
	var out []VersionTotals
	var byCode, latency []byte
	for rows.Next() {
		var t VersionTotals
		var requests, errors, dropped int64
		if err := rows.Scan(&t.Model, &t.Version, &requests, &errors, &dropped, &byCode, &latency); err != nil {
			return nil, fmt.Errorf("registry: model totals: %w", err)
		}
		t.Requests, t.Errors, t.StreamDropped = uint64(requests), uint64(errors), uint64(dropped)
		if err := unjs(byCode, &t.ErrorsByCode); err != nil {
			return nil, fmt.Errorf("registry: model totals %s v%s: errors_by_code: %w", t.Model, t.Version, err)
		}
		if err := unjs(latency, &t.Latency); err != nil {
			return nil, fmt.Errorf("registry: model totals %s v%s: latency: %w", t.Model, t.Version, err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: model totals: %w", err)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Model != out[j].Model {
			return out[i].Model < out[j].Model
		}
		return versionLess(out[i].Version, out[j].Version)
	})
	return out, nil
}

// FleetCounts are the fleet-wide gauges and counters /metrics shows beside
// the models' totals, read in one pass over small aggregates.
type FleetCounts struct {
	Devices, Online int
	// Rollouts counts rollouts by state.
	Rollouts map[RolloutState]int
	// Telemetry sums the devices' telemetry counters: batches, new
	// records and duplicates the controller stored.
	TelemetryBatches, TelemetryRecords, TelemetryDuplicates uint64
}

// FleetCounts counts devices, online devices, rollouts by state and the
// telemetry the devices sent.
func (r *Registry) FleetCounts() (*FleetCounts, error) {
	fc := &FleetCounts{Rollouts: map[RolloutState]int{}}
	var online, batches, records, dups sql.NullInt64
	if err := r.r.QueryRow(r.q(`SELECT count(*), CAST(sum(CASE WHEN online THEN 1 ELSE 0 END) AS BIGINT),
		CAST(sum(tel_batches) AS BIGINT), CAST(sum(tel_records) AS BIGINT), CAST(sum(tel_duplicates) AS BIGINT) FROM devices`)).
		Scan(&fc.Devices, &online, &batches, &records, &dups); err != nil {
		return nil, fmt.Errorf("registry: fleet counts: %w", err)
	}
	fc.Online = int(online.Int64)
	fc.TelemetryBatches, fc.TelemetryRecords, fc.TelemetryDuplicates = uint64(batches.Int64), uint64(records.Int64), uint64(dups.Int64)
	rows, err := r.r.Query(`SELECT state, count(*) FROM rollouts GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("registry: fleet counts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			return nil, fmt.Errorf("registry: fleet counts: %w", err)
		}
		fc.Rollouts[RolloutState(s)] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: fleet counts: %w", err)
	}
	return fc, nil
}

// decodeLatency decodes a latency column. The compact form json.Marshal
// writes ({"bounds_micros":[...],"counts":[...],"sum_micros":n}, keys in
// any order) is parsed by hand, about ten times faster than encoding/json
// (BenchmarkDecodeLatency), which a metrics query over 1,440 minute
// buckets per version feels; anything else goes to encoding/json.
func decodeLatency(b []byte, h *LatencyHistogram) error {
	if fastLatency(b, h) {
		return nil
	}
	*h = LatencyHistogram{}
	return unjs(b, h)
}

func fastLatency(b []byte, h *LatencyHistogram) bool {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return false
	}
	p := b[1 : len(b)-1]
	for len(p) > 0 {
		var key string
		switch {
		case bytes.HasPrefix(p, []byte(`"bounds_micros":`)):
			key = "bounds_micros"
		case bytes.HasPrefix(p, []byte(`"counts":`)):
			key = "counts"
		case bytes.HasPrefix(p, []byte(`"sum_micros":`)):
			key = "sum_micros"
		default:
			return false
		}
		p = p[len(key)+3:]
		if key == "sum_micros" {
			n, rest, ok := parseUint(p)
			if !ok {
				return false
			}
			h.SumMicros, p = n, rest
		} else {
			vs, rest, ok := parseUints(p)
			if !ok {
				return false
			}
			p = rest
			if key == "counts" {
				h.Counts = vs
			} else {
				h.BoundsMicros = vs
			}
		}
		if len(p) > 0 {
			if p[0] != ',' || len(p) == 1 {
				return false
			}
			p = p[1:]
		}
	}
	return len(h.Counts) == 0 || len(h.Counts) == len(h.BoundsMicros)+1
}

// parseUints reads the JSON array of unsigned integers, or null, at the
// start of p, without spaces.
func parseUints(p []byte) ([]uint64, []byte, bool) {
	if bytes.HasPrefix(p, []byte("null")) {
		return nil, p[4:], true
	}
	if len(p) == 0 || p[0] != '[' {
		return nil, p, false
	}
	p = p[1:]
	vs := []uint64{} // [] is an empty list, as encoding/json makes it
	for len(p) > 0 && p[0] != ']' {
		n, rest, ok := parseUint(p)
		if !ok {
			return nil, p, false
		}
		vs = append(vs, n)
		p = rest
		if len(p) > 1 && p[0] == ',' && p[1] != ']' {
			p = p[1:]
		}
	}
	if len(p) == 0 {
		return nil, p, false
	}
	return vs, p[1:], true
}

// parseUint reads the decimal digits at the start of p.
func parseUint(p []byte) (uint64, []byte, bool) {
	i := 0
	var n uint64
	for i < len(p) && p[i] >= '0' && p[i] <= '9' {
		d := uint64(p[i] - '0')
		if n > (math.MaxUint64-d)/10 {
			return 0, p, false
		}
		n = n*10 + d
		i++
	}
	if i > 1 && p[0] == '0' {
		return 0, p, false // JSON has no leading zeros
	}
	return n, p[i:], i > 0
}
