package registry

import (
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// FeatureQuery selects the per-request feature histograms of one model
// version over a range: what drift detection compares with the version's
// reference profile (issue #12 part 6).
type FeatureQuery struct {
	Model, Version string
	// Device, if set, selects one device's buckets; empty the fleet's.
	Device string
	// Since and Until bound the range in whole buckets: every bucket whose
	// start is in [Since rounded down to Bucket, Until) is read.
	Since, Until time.Time
	// Bucket is the step of the buckets read: MinuteBucket, HourBucket, or
	// the finer step ingest keeps for drift windows under a minute
	// (0: MinuteBucket).
	Bucket int64
}

// Features are the merged feature histograms of a range, with the
// requests and aggregates (records) behind them.
type Features struct {
	Requests, Records uint64
	// Features are merged by name (MergeFeatures), in the order first
	// seen.
	Features []protocol.FeatureCounts
}

// Features merges the features column of the buckets q selects. The
// column is the JSON of []protocol.FeatureCounts (its Go field names, as
// json.Marshal writes them), schema 5.
func (r *Registry) Features(q FeatureQuery) (*Features, error) {
	if q.Bucket == 0 {
		q.Bucket = MinuteBucket
	}
	if q.Bucket != MinuteBucket && q.Bucket != HourBucket && (q.Bucket < 1 || q.Bucket > 30 || MinuteBucket%q.Bucket != 0) {
		return nil, fmt.Errorf("%w: feature bucket %d s: want %d, %d, or a divisor of a minute (Options.FineStep)", ErrInvalidQuery, q.Bucket, MinuteBucket, HourBucket)
	}
	since := q.Since.Unix() / q.Bucket * q.Bucket
	rows, err := r.r.Query(r.q(`SELECT start, requests, records, features FROM agg_buckets
		WHERE model = ? AND version = ? AND device = ? AND step = ? AND start >= ? AND start < ?`),
		q.Model, q.Version, q.Device, q.Bucket, since, q.Until.Unix())
	if err != nil {
		return nil, fmt.Errorf("registry: features %s v%s: %w", q.Model, q.Version, err)
	}
	defer rows.Close()
	out := &Features{}
	var col []byte
	for rows.Next() {
		var start, requests, records int64
		if err := rows.Scan(&start, &requests, &records, &col); err != nil {
			return nil, fmt.Errorf("registry: features %s v%s: %w", q.Model, q.Version, err)
		}
		if err := out.add(requests, records, col); err != nil {
			return nil, fmt.Errorf("registry: features %s v%s bucket %d: %w", q.Model, q.Version, start, err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: features %s v%s: %w", q.Model, q.Version, err)
	}
	if fromRecords(q.Device, q.Bucket) {
		err := r.recordRows(`model = ? AND version = ? AND device = ?`, []any{q.Model, q.Version, q.Device}, q.Bucket, since, q.Until.Unix(),
			func(_, _ string, _ int64, v *aggValue) error {
				out.addValue(v)
				return nil
			})
		if err != nil {
			return nil, fmt.Errorf("registry: features %s v%s: %w", q.Model, q.Version, err)
		}
	}
	return out, nil
}

// add merges one bucket row (its counts and its features column) into f.
func (f *Features) add(requests, records int64, col []byte) error {
	var fs []protocol.FeatureCounts
	if err := decodeFeatures(col, &fs); err != nil {
		return err
	}
	f.Requests += uint64(requests)
	f.Records += uint64(records)
	f.Features = MergeFeatures(f.Features, fs)
	return nil
}

// addValue adds a bucket merged from agg_records, as add adds a row.
func (f *Features) addValue(v *aggValue) {
	f.Requests += v.requests
	f.Records += v.records
	f.Features = MergeFeatures(f.Features, v.features)
}

// MergeFeatures adds add to into, feature by feature (matched by name;
// new names appended, their counts copied), every field added as
// protocol.FeatureCounts says. A feature whose counts have another length
// than into's (binned with other edges: another reference) is left out
// rather than mixed in. A sum that is not a finite number (only a broken
// or hostile device sends one) counts as 0, so the stored JSON stays
// valid. It returns the merged list; into's slices may be reused. Ingest
// and the queries both merge with it.
func MergeFeatures(into, add []protocol.FeatureCounts) []protocol.FeatureCounts {
	for n, f := range add {
		// The same names in the same order (one model version's) first.
		i := n
		if i >= len(into) || into[i].Name != f.Name {
			i = slices.IndexFunc(into, func(g protocol.FeatureCounts) bool { return g.Name == f.Name })
		}
		if i < 0 {
			into = append(into, protocol.FeatureCounts{Name: f.Name, Counts: slices.Clone(f.Counts),
				NaNs: f.NaNs, Sum: finite(f.Sum), SumSq: finite(f.SumSq)})
			continue
		}
		g := &into[i]
		if len(g.Counts) != len(f.Counts) {
			continue
		}
		for j, c := range f.Counts {
			g.Counts[j] += c
		}
		g.NaNs += f.NaNs
		g.Sum += finite(f.Sum)
		g.SumSq += finite(f.SumSq)
	}
	return into
}

// decodeFeatures reads a features column. What featuresJSON writes is read
// by hand (encoding/json's reflection was most of a query's and an ingest's
// decoding time); anything else, by encoding/json, with its errors.
func decodeFeatures(b []byte, fs *[]protocol.FeatureCounts) error {
	if out, ok := fastFeatures(b); ok {
		*fs = out
		return nil
	}
	*fs = nil
	return unjs(b, fs)
}

// fastFeatures parses exactly featuresJSON's form: no spaces, the fields in
// its order, names of printable ASCII without escapes. It reports false for
// anything else, which encoding/json then reads (or refuses).
func fastFeatures(b []byte) ([]protocol.FeatureCounts, bool) {
	if string(b) == "null" {
		return nil, true
	}
	if len(b) < 2 || b[0] != '[' {
		return nil, false
	}
	p := b[1:]
	out := []protocol.FeatureCounts{}
	for len(p) > 0 && p[0] != ']' {
		if len(out) > 0 {
			if p[0] != ',' {
				return nil, false
			}
			p = p[1:]
		}
		var f protocol.FeatureCounts
		var ok bool
		if p, ok = field(p, `{"Name":"`); !ok {
			return nil, false
		}
		i := 0
		for i < len(p) && p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\' {
			i++
		}
		if i == len(p) || p[i] != '"' {
			return nil, false
		}
		f.Name = string(p[:i])
		if p, ok = field(p[i+1:], `,"Counts":`); !ok {
			return nil, false
		}
		if f.Counts, p, ok = parseUints(p); !ok {
			return nil, false
		}
		if p, ok = field(p, `,"NaNs":`); !ok {
			return nil, false
		}
		if f.NaNs, p, ok = parseUint(p); !ok {
			return nil, false
		}
		if p, ok = field(p, `,"Sum":`); !ok {
			return nil, false
		}
		if f.Sum, p, ok = parseNumber(p); !ok {
			return nil, false
		}
		if p, ok = field(p, `,"SumSq":`); !ok {
			return nil, false
		}
		if f.SumSq, p, ok = parseNumber(p); !ok {
			return nil, false
		}
		if p, ok = field(p, `}`); !ok {
			return nil, false
		}
		out = append(out, f)
	}
	if len(p) != 1 { // the closing ], and nothing after it
		return nil, false
	}
	return out, true
}

// field reports whether p starts with s, and p after it.
func field(p []byte, s string) ([]byte, bool) {
	if len(p) < len(s) || string(p[:len(s)]) != s {
		return p, false
	}
	return p[len(s):], true
}

// parseNumber reads the JSON number at the start of p (its grammar
// exactly: strconv.ParseFloat alone also takes "1.", ".5", "inf", hex).
func parseNumber(p []byte) (float64, []byte, bool) {
	i := 0
	digits := func() int {
		j := i
		for i < len(p) && p[i] >= '0' && p[i] <= '9' {
			i++
		}
		return i - j
	}
	if i < len(p) && p[i] == '-' {
		i++
	}
	switch {
	case i < len(p) && p[i] == '0':
		i++
	case digits() == 0:
		return 0, p, false
	}
	if i < len(p) && p[i] == '.' {
		i++
		if digits() == 0 {
			return 0, p, false
		}
	}
	if i < len(p) && (p[i] == 'e' || p[i] == 'E') {
		i++
		if i < len(p) && (p[i] == '+' || p[i] == '-') {
			i++
		}
		if digits() == 0 {
			return 0, p, false
		}
	}
	v, err := strconv.ParseFloat(string(p[:i]), 64)
	if err != nil {
		return 0, p, false
	}
	return v, p[i:], true
}
