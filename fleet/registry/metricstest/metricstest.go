// Package metricstest writes model traffic into a fleet store's
// agg_records, agg_buckets and agg_totals tables (schemas 5 and 11) the way
// the controller's ingest does, so that the queries over them
// (registry.Metrics, registry.ModelTotals, the controller's /metrics) can be
// tested with real rows on both engines before, and independently of, the
// ingest itself.
//
// The rows it writes, per aggregate added with Add (docs/MONITORING.md):
//
//   - agg_records: the aggregate as its device would have sent it (a
//     protocol aggregate record), start its Start, epoch 0 and a sequence
//     number of the Rows: the device's minute buckets.
//   - agg_buckets, for each of step 60 (the minute bucket holding the
//     aggregate's start) and step 3600 (its hour bucket), start the
//     bucket's first second (unix, a multiple of step): one row for the
//     empty device name (the whole fleet), and for step 3600 one for the
//     device, each the sum of every aggregate added to it. records counts the aggregates;
//     requests, errors and stream_dropped are added; errors_by_code is
//     the JSON object {code: count} of the sums; latency the JSON
//     {"bounds_micros": [...], "counts": [...], "sum_micros": n} of the
//     merged histograms (registry.LatencyHistogram); features the JSON of
//     the merged []protocol.FeatureCounts (json.Marshal's field names:
//     Name, Counts, NaNs, Sum, SumSq), "[]" without any.
//   - agg_totals: one row per (model, version), the sum of all of them.
//
// Write inserts the buckets: a bucket already in the store is an error, so
// add every aggregate of a bucket to one Rows. The totals are added to
// those already stored, as more traffic arriving later adds to them.
package metricstest

import (
	"cmp"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/protocol"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // the "sqlite" database/sql driver
)

// Aggregate is one device's traffic for one model version over an
// interval starting at Start (the agent's aggregate record).
type Aggregate struct {
	Model, Version, Device string
	Start                  time.Time
	Requests, Errors       uint64
	StreamDropped          uint64
	ErrorsByCode           map[string]uint64
	Latency                registry.LatencyHistogram
	// Features are the per-request feature histograms (merged with
	// registry.MergeFeatures).
	Features []protocol.FeatureCounts
}

type key struct {
	model, version, device string
	step, start            int64
}

type row struct {
	records, requests, errors, dropped uint64
	byCode                             map[string]uint64
	latency                            registry.LatencyHistogram
	features                           []protocol.FeatureCounts
}

func (r *row) add(a *Aggregate) {
	r.records++
	r.requests += a.Requests
	r.errors += a.Errors
	r.dropped += a.StreamDropped
	if r.byCode == nil {
		r.byCode = map[string]uint64{}
	}
	for c, n := range a.ErrorsByCode {
		r.byCode[c] += n
	}
	r.latency.Merge(&a.Latency)
	r.features = registry.MergeFeatures(r.features, a.Features)
}

// Rows accumulates aggregates in memory. Not safe for concurrent use.
type Rows struct {
	buckets map[key]*row
	totals  map[[2]string]*row
	records []Aggregate // the devices' agg_records rows
	seq     int64       // the last sequence number given
}

// Add merges a into its device's and the fleet's minute and hour buckets
// and its version's totals.
func (rs *Rows) Add(a Aggregate) {
	if rs.buckets == nil {
		rs.buckets, rs.totals = map[key]*row{}, map[[2]string]*row{}
	}
	for _, step := range []int64{registry.MinuteBucket, registry.HourBucket} {
		start := a.Start.Unix() / step * step
		for _, dev := range []string{a.Device, ""} {
			if dev != "" && step == registry.MinuteBucket {
				rs.records = append(rs.records, a)
				continue
			}
			k := key{a.Model, a.Version, dev, step, start}
			if rs.buckets[k] == nil {
				rs.buckets[k] = &row{}
			}
			rs.buckets[k].add(&a)
		}
	}
	tk := [2]string{a.Model, a.Version}
	if rs.totals[tk] == nil {
		rs.totals[tk] = &row{}
	}
	rs.totals[tk].add(&a)
}

// WriteDevices inserts the devices' buckets added so far and forgets them,
// keeping the fleet's buckets and the totals for Write: a way to seed more
// rows than fit in memory, a few devices at a time. Every bucket of the
// devices written must be complete.
func (rs *Rows) WriteDevices(store string) error {
	devs := &Rows{buckets: map[key]*row{}, records: rs.records, seq: rs.seq}
	rs.seq += int64(len(rs.records))
	rs.records = nil // devs.Write writes them
	for k, r := range rs.buckets {
		if k.device != "" {
			devs.buckets[k] = r
			delete(rs.buckets, k)
		}
	}
	return devs.Write(store)
}

// Len is the number of agg_buckets and agg_records rows Write would
// insert.
func (rs *Rows) Len() int { return len(rs.buckets) + len(rs.records) }

// Open opens store as registry.Open names it: a postgres:// URL or a
// SQLite file path.
func Open(store string) (*sql.DB, bool, error) {
	if strings.HasPrefix(store, "postgres://") || strings.HasPrefix(store, "postgresql://") {
		db, err := sql.Open("pgx", store)
		return db, true, err
	}
	db, err := sql.Open("sqlite", "file:"+store+"?_pragma=busy_timeout(10000)&_txlock=immediate")
	if err == nil {
		db.SetMaxOpenConns(1)
	}
	return db, false, err
}

// Write inserts the rows into store (see Open) in one transaction per
// 50,000 rows.
func (rs *Rows) Write(store string) error {
	db, pg, err := Open(store)
	if err != nil {
		return fmt.Errorf("metricstest: %w", err)
	}
	defer db.Close()
	keys := slices.SortedFunc(maps.Keys(rs.buckets), func(a, b key) int {
		return cmp.Or(strings.Compare(a.model, b.model), strings.Compare(a.version, b.version),
			strings.Compare(a.device, b.device), cmp.Compare(a.step, b.step), cmp.Compare(a.start, b.start))
	})
	const perStmt, perTx = 500, 50000
	for lo := 0; lo < len(keys); lo += perTx {
		tx, err := db.Begin()
		if err != nil {
			return fmt.Errorf("metricstest: %w", err)
		}
		for i := lo; i < min(lo+perTx, len(keys)); i += perStmt {
			part := keys[i:min(i+perStmt, lo+perTx, len(keys))]
			var sb strings.Builder
			sb.WriteString(`INSERT INTO agg_buckets (model, version, device, step, start, records, requests, errors, stream_dropped, errors_by_code, latency, features) VALUES `)
			args := make([]any, 0, len(part)*12)
			for j, k := range part {
				if j > 0 {
					sb.WriteString(", ")
				}
				sb.WriteString(placeholders(pg, len(args), 12))
				r := rs.buckets[k]
				features := "[]"
				if len(r.features) > 0 {
					features = jsonOf(r.features)
				}
				args = append(args, k.model, k.version, k.device, k.step, k.start, int64(r.records), int64(r.requests),
					int64(r.errors), int64(r.dropped), jsonOf(r.byCode), jsonOf(r.latency), features)
			}
			if _, err := tx.Exec(sb.String(), args...); err != nil {
				tx.Rollback()
				return fmt.Errorf("metricstest: insert buckets: %w", err)
			}
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("metricstest: %w", err)
		}
	}
	if err := rs.writeRecords(db, pg); err != nil {
		return err
	}
	rs.seq += int64(len(rs.records))
	rs.records = nil
	for tk, r := range rs.totals {
		if err := addTotals(db, pg, tk[0], tk[1], r); err != nil {
			return fmt.Errorf("metricstest: totals %s v%s: %w", tk[0], tk[1], err)
		}
	}
	return nil
}

// writeRecords inserts the devices' agg_records rows.
func (rs *Rows) writeRecords(db *sql.DB, pg bool) error {
	const perStmt, perTx = 500, 50000
	seq := rs.seq
	for lo := 0; lo < len(rs.records); lo += perTx {
		tx, err := db.Begin()
		if err != nil {
			return fmt.Errorf("metricstest: %w", err)
		}
		for i := lo; i < min(lo+perTx, len(rs.records)); i += perStmt {
			part := rs.records[i:min(i+perStmt, lo+perTx, len(rs.records))]
			var sb strings.Builder
			sb.WriteString(`INSERT INTO agg_records (model, version, device, start, epoch, seq, body) VALUES `)
			args := make([]any, 0, len(part)*7)
			for j := range part {
				a := &part[j]
				if j > 0 {
					sb.WriteString(", ")
				}
				sb.WriteString(placeholders(pg, len(args), 7))
				body, err := protocol.AppendRecord(nil, record(a))
				if err != nil {
					tx.Rollback()
					return fmt.Errorf("metricstest: record: %w", err)
				}
				seq++
				args = append(args, a.Model, a.Version, a.Device, a.Start.Unix(), int64(0), seq, body)
			}
			if _, err := tx.Exec(sb.String(), args...); err != nil {
				tx.Rollback()
				return fmt.Errorf("metricstest: insert records: %w", err)
			}
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("metricstest: %w", err)
		}
	}
	return nil
}

// record is a as its device sends it.
func record(a *Aggregate) *protocol.Record {
	codes := make([]protocol.CodeCount, 0, len(a.ErrorsByCode))
	for _, c := range slices.Sorted(maps.Keys(a.ErrorsByCode)) {
		codes = append(codes, protocol.CodeCount{Code: c, Count: a.ErrorsByCode[c]})
	}
	return &protocol.Record{Kind: protocol.KindAggregate, Time: a.Start.Add(time.Minute), Model: protocol.ModelRef{Name: a.Model, Version: a.Version},
		Aggregate: &protocol.Aggregate{Start: a.Start, End: a.Start.Add(time.Minute), Requests: a.Requests, Errors: a.Errors,
			StreamDropped: a.StreamDropped, ErrorsByCode: codes, Latency: protocol.Histogram{BoundsMicros: a.Latency.BoundsMicros,
				Counts: a.Latency.Counts, SumMicros: a.Latency.SumMicros}, Features: a.Features}}
}

// placeholders is "(?, ?, ...)" on SQLite, "($n+1, ...)" on PostgreSQL.
func placeholders(pg bool, before, n int) string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = "?"
		if pg {
			ps[i] = fmt.Sprintf("$%d", before+i+1)
		}
	}
	return "(" + strings.Join(ps, ", ") + ")"
}

func jsonOf(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // maps of counts and a histogram always encode
	}
	return string(b)
}

// addTotals adds r to the version's agg_totals row (read, merged and
// written in one transaction).
func addTotals(db *sql.DB, pg bool, model, version string, r *row) error {
	tx, err := db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	sel := `SELECT requests, errors, stream_dropped, errors_by_code, latency FROM agg_totals WHERE model = ? AND version = ?`
	del := `DELETE FROM agg_totals WHERE model = ? AND version = ?`
	if pg {
		sel = `SELECT requests, errors, stream_dropped, errors_by_code, latency FROM agg_totals WHERE model = $1 AND version = $2 FOR UPDATE`
		del = `DELETE FROM agg_totals WHERE model = $1 AND version = $2`
	}
	sum := row{requests: r.requests, errors: r.errors, dropped: r.dropped, byCode: maps.Clone(r.byCode)}
	sum.latency.Merge(&r.latency)
	if sum.byCode == nil {
		sum.byCode = map[string]uint64{}
	}
	var req, errs, dropped int64
	var byCode, latency []byte
	err = tx.QueryRow(sel, model, version).Scan(&req, &errs, &dropped, &byCode, &latency)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return err
	default:
		var old row
		if err := json.Unmarshal(byCode, &old.byCode); err != nil {
			return err
		}
		if err := json.Unmarshal(latency, &old.latency); err != nil {
			return err
		}
		sum.requests += uint64(req)
		sum.errors += uint64(errs)
		sum.dropped += uint64(dropped)
		for c, n := range old.byCode {
			sum.byCode[c] += n
		}
		sum.latency.Merge(&old.latency)
		if _, err := tx.Exec(del, model, version); err != nil {
			return err
		}
	}
	q := `INSERT INTO agg_totals (model, version, requests, errors, stream_dropped, errors_by_code, latency) VALUES ` + placeholders(pg, 0, 7)
	if _, err := tx.Exec(q, model, version, int64(sum.requests), int64(sum.errors), int64(sum.dropped), jsonOf(sum.byCode), jsonOf(sum.latency)); err != nil {
		return err
	}
	return tx.Commit()
}
