package registry

import (
	"cmp"
	"database/sql"
	"encoding/json"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// Model traffic in time buckets (schema 0005): every fresh aggregate record
// is merged, in the transaction that stores it, into four agg_buckets rows
// (its device's and the fleet's, device '', each a minute and an hour
// bucket holding the aggregate's Start) and into its version's agg_totals
// row. A duplicate record never reaches here (RecordBatch merges only the
// records its insert found new), so nothing counts twice.
//
// Merging adds every count: requests, errors, stream drops, errors by
// code, the latency histogram and the feature histograms (by feature name,
// bin by bin). Two latency histograms with the same bounds add bucket by
// bucket. A histogram with other bounds (an agent built with other ones)
// is re-binned into the stored row's bounds: each of its buckets is added
// to the stored bucket that holds its upper bound, so a merged quantile is
// never lower than the truth by more than one stored bucket; the overflow
// bucket goes to the stored overflow. The first histogram stored in a row
// sets its bounds. A feature whose bin count differs from the stored one
// (which cannot happen within one signed model version) is left out.

// Bucket steps in seconds.
const ()

// aggValue is one agg_buckets or agg_totals row's values.
type aggValue struct {
	records, requests, errors, streamDropped uint64
	byCode                                   map[string]uint64
	latency                                  LatencyHistogram
	features                                 []protocol.FeatureCounts
}

func (v *aggValue) addAggregate(a *protocol.Aggregate, features bool) {
	v.records++
	v.requests += a.Requests
	v.errors += a.Errors
	v.streamDropped += a.StreamDropped
	for _, c := range a.ErrorsByCode {
		if v.byCode == nil {
			v.byCode = map[string]uint64{}
		}
		v.byCode[c.Code] += c.Count
	}
	v.latency.Merge(&LatencyHistogram{BoundsMicros: a.Latency.BoundsMicros, Counts: a.Latency.Counts, SumMicros: a.Latency.SumMicros})
	if features {
		v.addFeatures(a.Features)
	}
}

func (v *aggValue) add(o *aggValue) {
	v.records += o.records
	v.requests += o.requests
	v.errors += o.errors
	v.streamDropped += o.streamDropped
	for c, n := range o.byCode {
		if v.byCode == nil {
			v.byCode = map[string]uint64{}
		}
		v.byCode[c] += n
	}
	v.latency.Merge(&o.latency)
	v.addFeatures(o.features)
}

func (v *aggValue) addFeatures(fs []protocol.FeatureCounts) {
	v.features = MergeFeatures(v.features, fs)
}

// finite keeps JSON encodable what a device sent: a sum that is not a
// finite number (only a broken or hostile device sends one) becomes 0.
func finite(f float64) float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return 0
	}
	return f
}

// bucketKey names an agg_buckets row; a totals key has device, step and
// start zero.
type bucketKey struct {
	model, version, device string
	step, start            int64
}

// aggBatch is what one batch, then one ingest transaction, adds to the
// buckets and totals, merged in memory first so that a row many records
// touch (the fleet's) is written once per transaction. Records are merged
// into their device's minute (and fine) buckets; expand derives the rows
// written from those (a device's own minute and fine buckets are its
// agg_records rows, not written here). A batch is expanded before its
// transaction (RecordBatch's prepare); the transaction absorbs its batches.
type aggBatch struct {
	minutes map[bucketKey]*aggValue // the devices' minute buckets
	fine    map[bucketKey]*aggValue // the devices' fine buckets (Options.FineStep)
	buckets map[bucketKey]*aggValue // every bucket, after expand
	totals  map[bucketKey]*aggValue // after expand
}

// add merges one fresh aggregate record of device; fine > 0 keeps buckets
// of that many seconds too.
func (b *aggBatch) add(device string, rec *protocol.Record, fine int64) {
	a := rec.Aggregate
	if a == nil || rec.Model.Name == "" {
		return
	}
	at := aggStart(rec)
	k := bucketKey{model: rec.Model.Name, version: rec.Model.Version, device: device, step: MinuteBucket, start: floorTo(at.Unix(), MinuteBucket)}
	if b.minutes == nil {
		b.minutes = map[bucketKey]*aggValue{}
	}
	v := b.minutes[k]
	if v == nil {
		v = &aggValue{}
		b.minutes[k] = v
	}
	v.addAggregate(a, true)
	if fine > 0 {
		k.step, k.start = fine, floorTo(at.Unix(), fine)
		if b.fine == nil {
			b.fine = map[bucketKey]*aggValue{}
		}
		v := b.fine[k]
		if v == nil {
			v = &aggValue{}
			b.fine[k] = v
		}
		v.addAggregate(a, true)
	}
}

// aggStart is the time an aggregate record counts at: its Start, or the
// record's Time when it has none.
func aggStart(rec *protocol.Record) time.Time {
	if rec.Aggregate.Start.IsZero() {
		return rec.Time
	}
	return rec.Aggregate.Start
}

// floorTo rounds sec down to a multiple of step, also before 1970.
func floorTo(sec, step int64) int64 { return sec - ((sec%step)+step)%step }

// expand fills buckets and totals from the devices' minute buckets: the
// fleet's minute, the device's and the fleet's hour, the version's totals.
func (b *aggBatch) expand() {
	b.buckets, b.totals = map[bucketKey]*aggValue{}, map[bucketKey]*aggValue{}
	into := func(m map[bucketKey]*aggValue, k bucketKey, v *aggValue, features bool) {
		t := m[k]
		if t == nil {
			t = &aggValue{}
			m[k] = t
		}
		if !features {
			f := v.features
			v.features = nil
			t.add(v)
			v.features = f
			return
		}
		t.add(v)
	}
	for k, v := range b.minutes {
		h := floorTo(k.start, HourBucket)
		for _, dk := range []bucketKey{
			{model: k.model, version: k.version, step: MinuteBucket, start: k.start},
			{model: k.model, version: k.version, device: k.device, step: HourBucket, start: h},
			{model: k.model, version: k.version, step: HourBucket, start: h},
		} {
			into(b.buckets, dk, v, true)
		}
		into(b.totals, bucketKey{model: k.model, version: k.version}, v, false)
	}
	for k, v := range b.fine {
		into(b.buckets, bucketKey{model: k.model, version: k.version, step: k.step, start: k.start}, v, true)
	}
}

// absorb adds o's expanded buckets and totals to b's, copying: o stays as
// it was (a transaction run again absorbs it again).
func (b *aggBatch) absorb(o *aggBatch) {
	for _, m := range []struct {
		into *map[bucketKey]*aggValue
		from map[bucketKey]*aggValue
	}{{&b.buckets, o.buckets}, {&b.totals, o.totals}} {
		if *m.into == nil {
			*m.into = make(map[bucketKey]*aggValue, len(m.from))
		}
		for k, v := range m.from {
			t := (*m.into)[k]
			if t == nil {
				t = &aggValue{}
				(*m.into)[k] = t
			}
			t.add(v)
		}
	}
}

func sortedKeys(m map[bucketKey]*aggValue) []bucketKey {
	keys := make([]bucketKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	// One order for every replica, so two transactions on PostgreSQL lock
	// shared rows in the same order.
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if c := strings.Compare(a.model, b.model); c != 0 {
			return c < 0
		}
		if c := strings.Compare(a.version, b.version); c != 0 {
			return c < 0
		}
		if c := strings.Compare(a.device, b.device); c != 0 {
			return c < 0
		}
		if a.step != b.step {
			return a.step < b.step
		}
		return a.start < b.start
	})
	return keys
}

const (
	bucketCols  = `records, requests, errors, stream_dropped, errors_by_code, latency, features`
	totalsCols  = `requests, errors, stream_dropped, errors_by_code, latency`
	totalsWhere = ` WHERE model = ? AND version = ?`
	bucketRange = `SELECT start, ` + bucketCols + ` FROM agg_buckets
		WHERE model = ? AND version = ? AND device = ? AND step = ? AND start >= ? AND start <= ?`
	totalsSelect = `SELECT ` + totalsCols + ` FROM agg_totals` + totalsWhere
	totalsUpsert = `INSERT INTO agg_totals (model, version, ` + totalsCols + `) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (model, version) DO UPDATE SET requests = excluded.requests, errors = excluded.errors,
		stream_dropped = excluded.stream_dropped, errors_by_code = excluded.errors_by_code, latency = excluded.latency`
)

// flushAgg merges the batch into the stored rows inside tx: read (locked
// on PostgreSQL, where missing rows are inserted empty first so that there
// is one to lock), add, write. Rows are read a range at a time (one query
// per model, version, device and step) and written bucketRows at a time:
// a device's backlog touches many consecutive buckets.
func (r *Registry) flushAgg(tx *sql.Tx, b *aggBatch) error {
	pg := r.eng.name == "postgres"
	keys := sortedKeys(b.buckets)
	if pg {
		for i := 0; i < len(keys); i += bucketRows {
			chunk := keys[i:min(i+bucketRows, len(keys))]
			args := make([]any, 0, 5*len(chunk))
			for _, k := range chunk {
				args = append(args, k.model, k.version, k.device, k.step, k.start)
			}
			if _, err := tx.Exec(r.eng.rebind(`INSERT INTO agg_buckets (model, version, device, step, start) VALUES `+
				placeholders(len(chunk), 5)+` ON CONFLICT (model, version, device, step, start) DO NOTHING`), args...); err != nil {
				return err
			}
		}
	}
	// Runs of keys that differ only in start.
	merged := make([]*aggValue, len(keys))
	for i := 0; i < len(keys); {
		j := i + 1
		for j < len(keys) && sameSeries(keys[i], keys[j]) {
			j++
		}
		k := keys[i]
		rows, err := r.stmt(tx, bucketRange).Query(k.model, k.version, k.device, k.step, k.start, keys[j-1].start)
		if err != nil {
			return err
		}
		stored := map[int64]*aggValue{}
		for rows.Next() {
			var start int64
			v, err := scanAggRow(rows, &start)
			if err != nil {
				rows.Close()
				return err
			}
			stored[start] = v
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return err
		}
		for n := i; n < j; n++ {
			v := stored[keys[n].start]
			if v == nil {
				merged[n] = b.buckets[keys[n]]
				continue
			}
			v.add(b.buckets[keys[n]])
			merged[n] = v
		}
		i = j
	}
	for i := 0; i < len(keys); i += bucketRows {
		chunk := keys[i:min(i+bucketRows, len(keys))]
		args := make([]any, 0, 12*len(chunk))
		for n, k := range chunk {
			v := merged[i+n]
			args = append(args, k.model, k.version, k.device, k.step, k.start, int64(v.records), int64(v.requests), int64(v.errors),
				int64(v.streamDropped), codesJSON(v.byCode), v.latency.json(), featuresJSON(v.features))
		}
		var err error
		if len(chunk) == bucketRows {
			_, err = r.stmt(tx, bucketUpsertFull).Exec(args...)
		} else {
			_, err = tx.Exec(r.eng.rebind(bucketUpsertN(len(chunk))), args...)
		}
		if err != nil {
			return err
		}
	}
	for _, k := range sortedKeys(b.totals) {
		args := []any{k.model, k.version}
		if pg {
			if _, err := r.exec(tx, `INSERT INTO agg_totals (model, version) VALUES (?, ?) ON CONFLICT (model, version) DO NOTHING`, args...); err != nil {
				return err
			}
		}
		v, err := scanAgg(r.stmt(tx, totalsSelect).QueryRow(args...), false)
		if err != nil {
			return err
		}
		v.add(b.totals[k])
		if _, err := r.stmt(tx, totalsUpsert).Exec(append(args, int64(v.requests), int64(v.errors), int64(v.streamDropped),
			codesJSON(v.byCode), v.latency.json())...); err != nil {
			return err
		}
	}
	return nil
}

// bucketRows is how many rows one upsert statement writes.
const bucketRows = 50

func sameSeries(a, b bucketKey) bool {
	return a.model == b.model && a.version == b.version && a.device == b.device && a.step == b.step
}

func placeholders(rows, cols int) string {
	var sb strings.Builder
	one := "(" + strings.TrimSuffix(strings.Repeat("?, ", cols), ", ") + ")"
	for i := range rows {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(one)
	}
	return sb.String()
}

func bucketUpsertN(n int) string {
	return `INSERT INTO agg_buckets (model, version, device, step, start, ` + bucketCols + `) VALUES ` + placeholders(n, 12) + `
		ON CONFLICT (model, version, device, step, start) DO UPDATE SET records = excluded.records,
		requests = excluded.requests, errors = excluded.errors, stream_dropped = excluded.stream_dropped,
		errors_by_code = excluded.errors_by_code, latency = excluded.latency, features = excluded.features`
}

// decodeJSON fills v's JSON columns.
func (v *aggValue) decodeJSON(byCode, latency, features []byte) error {
	if err := unjs(byCode, &v.byCode); err != nil {
		return err
	}
	if len(latency) > 0 {
		if err := decodeLatency(latency, &v.latency); err != nil {
			return err
		}
	}
	if len(features) > 0 {
		return decodeFeatures(features, &v.features)
	}
	return nil
}

// scanAggRow reads a bucketRange row.
func scanAggRow(rows *sql.Rows, start *int64) (*aggValue, error) {
	var (
		v                                aggValue
		records, requests, errs, dropped int64
		byCode, latency, features        []byte
	)
	if err := rows.Scan(start, &records, &requests, &errs, &dropped, &byCode, &latency, &features); err != nil {
		return nil, err
	}
	v.records, v.requests, v.errors, v.streamDropped = uint64(records), uint64(requests), uint64(errs), uint64(dropped)
	if err := v.decodeJSON(byCode, latency, features); err != nil {
		return nil, err
	}
	return &v, nil
}

// The JSON columns, written by hand: encoding/json's reflection was a
// tenth of ingest's time. They read back with encoding/json.

func codesJSON(m map[string]uint64) string {
	if len(m) == 0 {
		return "{}"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	b := []byte{'{'}
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = strconv.AppendUint(b, m[k], 10)
	}
	return string(append(b, '}'))
}

func appendUints(b []byte, vs []uint64) []byte {
	b = append(b, '[')
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, v, 10)
	}
	return append(b, ']')
}

func (l *LatencyHistogram) json() string {
	if len(l.Counts) == 0 {
		return "{}"
	}
	b := append([]byte(nil), `{"bounds_micros":`...)
	b = appendUints(b, l.BoundsMicros)
	b = append(b, `,"counts":`...)
	b = appendUints(b, l.Counts)
	b = append(b, `,"sum_micros":`...)
	b = strconv.AppendUint(b, l.SumMicros, 10)
	return string(append(b, '}'))
}

// featuresJSON writes fs as encoding/json writes []protocol.FeatureCounts.
func featuresJSON(fs []protocol.FeatureCounts) string {
	b := []byte{'['}
	for i, f := range fs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"Name":`...)
		b = appendString(b, f.Name)
		b = append(b, `,"Counts":`...)
		if f.Counts == nil {
			b = append(b, "null"...)
		} else {
			b = appendUints(b, f.Counts)
		}
		b = append(b, `,"NaNs":`...)
		b = strconv.AppendUint(b, f.NaNs, 10)
		b = append(b, `,"Sum":`...)
		b = appendFloat(b, f.Sum)
		b = append(b, `,"SumSq":`...)
		b = appendFloat(b, f.SumSq)
		b = append(b, '}')
	}
	return string(append(b, ']'))
}

// appendString quotes s as JSON does (strconv's quoting is Go's, not
// JSON's, for control and invalid bytes).
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	// Printable ASCII without quotes or backslashes: as it is.
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendFloat(b []byte, f float64) []byte {
	return strconv.AppendFloat(b, finite(f), 'g', -1, 64)
}

// scanAgg reads a bucket row (or a totals row: no records, no features);
// a missing row is a zero value.
func scanAgg(row *sql.Row, bucket bool) (*aggValue, error) {
	var (
		v                                aggValue
		records, requests, errs, dropped int64
		byCode, latency, features        []byte
	)
	dest := []any{&requests, &errs, &dropped, &byCode, &latency}
	if bucket {
		dest = append([]any{&records}, append(dest, &features)...)
	}
	if err := row.Scan(dest...); err != nil {
		if err == sql.ErrNoRows {
			return &v, nil
		}
		return nil, err
	}
	v.records, v.requests, v.errors, v.streamDropped = uint64(records), uint64(requests), uint64(errs), uint64(dropped)
	if err := v.decodeJSON(byCode, latency, features); err != nil {
		return nil, err
	}
	return &v, nil
}

// Bucket is one agg_buckets row, decoded: for tests and tools; the metrics
// API reads the table itself.
type Bucket struct {
	Model, Version, Device string
	Step                   int64
	Start                  time.Time
	Records                uint64
	Requests, Errors       uint64
	StreamDropped          uint64
	ErrorsByCode           map[string]uint64
	Latency                LatencyHistogram
	Features               []protocol.FeatureCounts
}

// Buckets returns the rows of model (every version) with the given step
// and device (” for the fleet's), oldest first.
func (r *Registry) Buckets(model, device string, step int64) ([]Bucket, error) {
	rows, err := r.r.Query(r.q(`SELECT version, start, `+bucketCols+` FROM agg_buckets
		WHERE model = ? AND device = ? AND step = ?`), model, device, step)
	if err != nil {
		return nil, wrapErr("buckets", err)
	}
	defer rows.Close()
	// One bucket per version and start: a device minute row from before
	// agg_records and records of the same minute add up.
	type slot struct {
		version string
		start   int64
	}
	vals := map[slot]*aggValue{}
	add := func(k slot, v *aggValue) {
		if t := vals[k]; t != nil {
			t.add(v)
			return
		}
		vals[k] = v
	}
	for rows.Next() {
		var k slot
		var records, requests, errs, dropped int64
		var byCode, latency, features []byte
		if err := rows.Scan(&k.version, &k.start, &records, &requests, &errs, &dropped, &byCode, &latency, &features); err != nil {
			return nil, wrapErr("buckets", err)
		}
		v := &aggValue{records: uint64(records), requests: uint64(requests), errors: uint64(errs), streamDropped: uint64(dropped)}
		if err := v.decodeJSON(byCode, latency, features); err != nil {
			return nil, wrapErr("buckets", err)
		}
		add(k, v)
	}
	if err := rows.Err(); err != nil {
		return nil, wrapErr("buckets", err)
	}
	if fromRecords(device, step) {
		err := r.recordRows(`model = ? AND device = ?`, []any{model, device}, step, -1<<62, 1<<62, func(version, _ string, start int64, v *aggValue) error {
			add(slot{version, start}, v)
			return nil
		})
		if err != nil {
			return nil, wrapErr("buckets", err)
		}
	}
	keys := slices.SortedFunc(maps.Keys(vals), func(a, b slot) int {
		return cmp.Or(cmp.Compare(a.start, b.start), strings.Compare(a.version, b.version))
	})
	out := make([]Bucket, 0, len(keys))
	for _, k := range keys {
		v := vals[k]
		out = append(out, Bucket{Model: model, Version: k.version, Device: device, Step: step, Start: time.Unix(k.start, 0).UTC(),
			Records: v.records, Requests: v.requests, Errors: v.errors, StreamDropped: v.streamDropped,
			ErrorsByCode: v.byCode, Latency: v.latency, Features: v.features})
	}
	return out, nil
}

// Totals returns a model version's running totals (agg_totals), zero if
// it has none.
func (r *Registry) Totals(model, version string) (Bucket, error) {
	v, err := scanAgg(r.r.QueryRow(r.q(`SELECT `+totalsCols+` FROM agg_totals`+totalsWhere), model, version), false)
	if err != nil {
		return Bucket{}, wrapErr("totals", err)
	}
	return Bucket{Model: model, Version: version, Requests: v.requests, Errors: v.errors, StreamDropped: v.streamDropped,
		ErrorsByCode: v.byCode, Latency: v.latency}, nil
}
