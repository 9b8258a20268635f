package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Retention says how long ingested telemetry is kept; Prune applies it.
// Zero fields take the defaults below. Device audit records, the model
// versions' running totals (agg_totals) and samples (bounded by count and
// bytes at ingest instead) are not pruned by age.
type Retention struct {
	// MinuteBuckets and HourBuckets: how long agg_buckets rows (and
	// shadow_buckets rows) of each step are kept after their start.
	// MinuteBuckets is also how long a device's aggregate records
	// (agg_records: its minute and fine buckets, and their
	// de-duplication) are kept after their start.
	MinuteBuckets, HourBuckets time.Duration
	// MaxBucketRows bounds agg_buckets and agg_records together; over it,
	// the oldest minute buckets (of both) go first, hour buckets only once
	// no minute bucket is left.
	MaxBucketRows int64
	// Health: how long a device's health points are kept.
	Health time.Duration
	// RawTelemetry: how long the raw telemetry rows, which de-duplicate
	// by (device, epoch, sequence), are kept after they arrived. A record
	// delivered again after its raw row is gone counts again, so it must
	// be at least the agents' telemetry.max_age, the longest a device
	// holds a record it may send again (docs/MONITORING.md).
	RawTelemetry time.Duration
}

// Retention defaults (fleet.yaml monitoring.retention).
const (
	DefaultMinuteBuckets = 30 * 24 * time.Hour
	DefaultHourBuckets   = 365 * 24 * time.Hour
	// About 300 to 600 bytes a row without feature histograms, a few KiB
	// with them.
	DefaultMaxBucketRows = 5_000_000
	DefaultHealth        = 30 * 24 * time.Hour
	DefaultRawTelemetry  = 7 * 24 * time.Hour
)

// WithDefaults returns r with its zero fields set to the defaults.
func (r Retention) WithDefaults() Retention {
	for _, f := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&r.MinuteBuckets, DefaultMinuteBuckets}, {&r.HourBuckets, DefaultHourBuckets}, {&r.Health, DefaultHealth},
		{&r.RawTelemetry, DefaultRawTelemetry}} {
		if *f.v <= 0 {
			*f.v = f.def
		}
	}
	if r.MaxBucketRows <= 0 {
		r.MaxBucketRows = DefaultMaxBucketRows
	}
	return r
}

// Pruned counts the rows a Prune pass deleted.
type Pruned struct {
	MinuteBuckets, HourBuckets, OverBound, Health, Telemetry int64
}

// pruneChunk is how many rows one delete transaction removes at most
// (about; rows sharing the cut's value go together), so that ingest is
// never held up for long.
const pruneChunk = 5000

// Prune deletes what ret no longer keeps, as of now, in transactions of
// about pruneChunk rows, until done or ctx is cancelled. Run it from one
// replica at a time (the leader); it is safe alongside ingest.
func (r *Registry) Prune(ctx context.Context, now time.Time, ret Retention) (Pruned, error) {
	ret = ret.WithDefaults()
	var p Pruned
	// The fleet's minute rows and the devices' records.
	minutes := []prunePart{{"agg_buckets", "step = ?", []any{MinuteBucket}}, {"agg_records", "", nil}}
	steps := []struct {
		n     *int64
		parts []prunePart
		col   string
		cut   int64
	}{
		{&p.MinuteBuckets, minutes, "start", now.Add(-ret.MinuteBuckets).Unix()},
		{&p.HourBuckets, []prunePart{{"agg_buckets", "step = ?", []any{HourBucket}}}, "start", now.Add(-ret.HourBuckets).Unix()},
		// Fine buckets (Options.FineStep) serve drift windows under a
		// minute, judged within seconds: an hour is plenty.
		{&p.MinuteBuckets, []prunePart{{"agg_buckets", "step < ?", []any{MinuteBucket}}}, "start", now.Add(-time.Hour).Unix()},
		// Shadow sections (shadow.go) as the buckets of served traffic.
		{&p.MinuteBuckets, []prunePart{{"shadow_buckets", "step = ?", []any{MinuteBucket}}}, "start", now.Add(-ret.MinuteBuckets).Unix()},
		{&p.HourBuckets, []prunePart{{"shadow_buckets", "step = ?", []any{HourBucket}}}, "start", now.Add(-ret.HourBuckets).Unix()},
		{&p.MinuteBuckets, []prunePart{{"shadow_buckets", "step < ?", []any{MinuteBucket}}}, "start", now.Add(-time.Hour).Unix()},
		{&p.Health, []prunePart{{"device_health", "", nil}}, "time", now.Add(-ret.Health).UnixNano()},
		{&p.Telemetry, []prunePart{{"telemetry", "", nil}}, "received", now.Add(-ret.RawTelemetry).UnixNano()},
	}
	for _, s := range steps {
		n, err := r.pruneBefore(ctx, s.parts, s.col, s.cut, -1)
		*s.n += n
		if err != nil {
			return p, fmt.Errorf("registry: prune %s: %w", s.parts[0].table, err)
		}
	}
	var rows int64
	if err := r.r.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM agg_buckets) + (SELECT count(*) FROM agg_records)`).Scan(&rows); err != nil {
		return p, fmt.Errorf("registry: prune: %w", err)
	}
	// Over the bound: the oldest minutes first, the fleet's and the
	// devices' cut at the same start; hours only once no minute is left.
	for _, parts := range [][]prunePart{minutes, {{"agg_buckets", "step = ?", []any{HourBucket}}}} {
		if rows <= ret.MaxBucketRows {
			break
		}
		n, err := r.pruneBefore(ctx, parts, "start", 1<<62, rows-ret.MaxBucketRows)
		p.OverBound += n
		rows -= n
		if err != nil {
			return p, fmt.Errorf("registry: prune over bound: %w", err)
		}
	}
	return p, nil
}

// prunePart is a table's rows that a filter (with its args) selects.
type prunePart struct {
	table, filter string
	args          []any
}

// where is the part's filter and col below a bound (or equal to it).
func (p prunePart) where(col, op string) string { return filterAnd(p.filter) + col + " " + op + " ?" }

// pruneBefore deletes the rows of parts with col below cut, oldest first
// across the parts, at most limit of them (-1: all; rows sharing the last
// value may go over it), a chunk per transaction.
func (r *Registry) pruneBefore(ctx context.Context, parts []prunePart, col string, cut, limit int64) (int64, error) {
	// The parts' rows below cut in col's order (a compound SELECT: SQLite
	// and PostgreSQL merge the parts' index scans).
	var q strings.Builder
	var qargs []any
	for i, p := range parts {
		if i > 0 {
			q.WriteString(" UNION ALL ")
		}
		q.WriteString(`SELECT ` + col + ` FROM ` + p.table + ` WHERE ` + p.where(col, "<"))
		qargs = append(append(qargs, p.args...), cut)
	}
	q.WriteString(` ORDER BY ` + col + ` LIMIT 1 OFFSET ?`)
	var total int64
	for limit < 0 || total < limit {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		chunk := int64(pruneChunk)
		if limit >= 0 {
			chunk = min(chunk, limit-total)
		}
		// The value chunk rows in: delete below it, or, if that is the
		// oldest value, the rows of that value.
		var bound int64
		err := r.r.QueryRowContext(ctx, r.q(q.String()), append(qargs, chunk)...).Scan(&bound)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			bound = cut
		case err != nil:
			return total, err
		}
		var n int64
		err = r.write(func(tx *sql.Tx) error {
			n = 0
			for _, op := range []string{"<", "="} {
				for _, p := range parts {
					res, err := r.exec(tx, `DELETE FROM `+p.table+` WHERE `+p.where(col, op), append(append([]any{}, p.args...), bound)...)
					if err != nil {
						return err
					}
					d, err := res.RowsAffected()
					if err != nil {
						return err
					}
					n += d
				}
				if n > 0 || bound == cut {
					return nil
				}
			}
			return nil
		})
		total += n
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil
		}
	}
	return total, nil
}

func filterAnd(filter string) string {
	if filter == "" {
		return ""
	}
	return filter + " AND "
}
