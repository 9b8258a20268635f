package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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
	steps := []struct {
		n      *int64
		table  string
		col    string
		filter string
		args   []any
		cut    int64
	}{
		{&p.MinuteBuckets, "agg_buckets", "start", "step = ?", []any{MinuteBucket}, now.Add(-ret.MinuteBuckets).Unix()},
		{&p.MinuteBuckets, "agg_records", "start", "", nil, now.Add(-ret.MinuteBuckets).Unix()},
		{&p.HourBuckets, "agg_buckets", "start", "step = ?", []any{HourBucket}, now.Add(-ret.HourBuckets).Unix()},
		// Fine buckets (Options.FineStep) serve drift windows under a
		// minute, judged within seconds: an hour is plenty.
		{&p.MinuteBuckets, "agg_buckets", "start", "step < ?", []any{MinuteBucket}, now.Add(-time.Hour).Unix()},
		// Shadow sections (shadow.go) as the buckets of served traffic.
		{&p.MinuteBuckets, "shadow_buckets", "start", "step = ?", []any{MinuteBucket}, now.Add(-ret.MinuteBuckets).Unix()},
		{&p.HourBuckets, "shadow_buckets", "start", "step = ?", []any{HourBucket}, now.Add(-ret.HourBuckets).Unix()},
		{&p.MinuteBuckets, "shadow_buckets", "start", "step < ?", []any{MinuteBucket}, now.Add(-time.Hour).Unix()},
		{&p.Health, "device_health", "time", "", nil, now.Add(-ret.Health).UnixNano()},
		{&p.Telemetry, "telemetry", "received", "", nil, now.Add(-ret.RawTelemetry).UnixNano()},
	}
	for _, s := range steps {
		n, err := r.pruneBefore(ctx, s.table, s.col, s.filter, s.args, s.cut, -1)
		*s.n += n
		if err != nil {
			return p, fmt.Errorf("registry: prune %s: %w", s.table, err)
		}
	}
	var rows int64
	if err := r.r.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM agg_buckets) + (SELECT count(*) FROM agg_records)`).Scan(&rows); err != nil {
		return p, fmt.Errorf("registry: prune: %w", err)
	}
	if rows > ret.MaxBucketRows {
		n, err := r.pruneMinutesOver(ctx, rows-ret.MaxBucketRows)
		p.OverBound += n
		rows -= n
		if err != nil {
			return p, fmt.Errorf("registry: prune over bound: %w", err)
		}
	}
	if rows > ret.MaxBucketRows {
		n, err := r.pruneBefore(ctx, "agg_buckets", "start", "step = ?", []any{HourBucket}, 1<<62, rows-ret.MaxBucketRows)
		p.OverBound += n
		if err != nil {
			return p, fmt.Errorf("registry: prune over bound: %w", err)
		}
	}
	return p, nil
}

// pruneMinutesOver deletes the oldest minute buckets, the fleet's
// (agg_buckets) and the devices' (agg_records) cut at the same start, about
// limit rows (rows sharing the last start go together), a chunk per
// transaction.
func (r *Registry) pruneMinutesOver(ctx context.Context, limit int64) (int64, error) {
	const minutes = `SELECT start FROM agg_buckets WHERE step = ? UNION ALL SELECT start FROM agg_records`
	var total int64
	for total < limit {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		chunk := min(int64(pruneChunk), limit-total)
		// The start chunk rows in: delete below it, or, if that is the
		// oldest start, the rows of that start.
		var bound int64
		err := r.r.QueryRowContext(ctx, r.q(`SELECT start FROM (`+minutes+`) m ORDER BY start LIMIT 1 OFFSET ?`),
			MinuteBucket, chunk).Scan(&bound)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			bound = 1 << 62
		case err != nil:
			return total, err
		}
		var n int64
		err = r.write(func(tx *sql.Tx) error {
			n = 0
			for _, op := range []string{"<", "="} {
				for _, del := range []struct {
					q    string
					args []any
				}{
					{`DELETE FROM agg_buckets WHERE step = ? AND start ` + op + ` ?`, []any{MinuteBucket, bound}},
					{`DELETE FROM agg_records WHERE start ` + op + ` ?`, []any{bound}},
				} {
					res, err := r.exec(tx, del.q, del.args...)
					if err != nil {
						return err
					}
					d, err := res.RowsAffected()
					if err != nil {
						return err
					}
					n += d
				}
				if n > 0 || bound == 1<<62 {
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

// pruneBefore deletes table's rows matching filter with col below cut,
// oldest first, at most limit of them (-1: all; rows sharing the last
// value may go over it), a chunk per transaction.
func (r *Registry) pruneBefore(ctx context.Context, table, col, filter string, args []any, cut, limit int64) (int64, error) {
	where := col + " < ?"
	if filter != "" {
		where = filter + " AND " + where
	}
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
		err := r.r.QueryRowContext(ctx, r.q(`SELECT `+col+` FROM `+table+` WHERE `+where+` ORDER BY `+col+` LIMIT 1 OFFSET ?`),
			append(append([]any{}, args...), cut, chunk)...).Scan(&bound)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			bound = cut
		case err != nil:
			return total, err
		}
		var n int64
		err = r.write(func(tx *sql.Tx) error {
			res, err := r.exec(tx, `DELETE FROM `+table+` WHERE `+where, append(append([]any{}, args...), bound)...)
			if err != nil {
				return err
			}
			if n, err = res.RowsAffected(); err != nil || n > 0 || bound == cut {
				return err
			}
			res, err = r.exec(tx, `DELETE FROM `+table+` WHERE `+filterAnd(filter)+col+` = ?`, append(append([]any{}, args...), bound)...)
			if err != nil {
				return err
			}
			n, err = res.RowsAffected()
			return err
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
