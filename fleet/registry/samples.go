package registry

import (
	"database/sql"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// Sampled predictions. Every fresh sample record is kept (its encoded body,
// as the device sent it) until the store holds more than MaxSamples of them
// or more than MaxSampleBytes of bodies; then the oldest to arrive are
// deleted, in the transaction that went over, down to 9/10 of the bound
// (so that the deletion is not paid again at every record).

// Sample bounds' defaults (fleet.yaml monitoring.samples).
const (
	DefaultMaxSamples     = 100_000
	DefaultMaxSampleBytes = 512 << 20
)

func (r *Registry) insertSample(tx *sql.Tx, it *ingestTx, device string, rec *protocol.Record, body []byte, now time.Time) error {
	if _, err := r.exec(tx, `INSERT INTO samples (device, model, version, time, received, bytes, body) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		device, rec.Model.Name, rec.Model.Version, rec.Time.UnixNano(), now.UnixNano(), len(body), body); err != nil {
		return err
	}
	it.samples++
	it.sampleBytes += int64(len(body))
	return nil
}

// boundSamples adds the transaction's samples to the running total and
// drops the oldest when over a bound.
func (r *Registry) boundSamples(tx *sql.Tx, it *ingestTx) error {
	if it.samples == 0 {
		return nil
	}
	var n, bytes int64
	if err := tx.QueryRow(r.q(`UPDATE samples_total SET n = n + ?, bytes = bytes + ? WHERE k = 1 RETURNING n, bytes`),
		it.samples, it.sampleBytes).Scan(&n, &bytes); err != nil {
		return err
	}
	maxN, maxB := r.mon.maxSamples, r.mon.maxSampleBytes
	if n <= maxN && bytes <= maxB {
		return nil
	}
	wantN, wantB := maxN-maxN/10, maxB-maxB/10
	var cut, dropN, dropB int64
	for n-dropN > wantN || bytes-dropB > wantB {
		rows, err := tx.Query(r.q(`SELECT id, bytes FROM samples WHERE id > ? ORDER BY id LIMIT 1000`), cut)
		if err != nil {
			return err
		}
		got := 0
		for rows.Next() && (n-dropN > wantN || bytes-dropB > wantB) {
			var id, b int64
			if err := rows.Scan(&id, &b); err != nil {
				rows.Close()
				return err
			}
			cut, dropN, dropB = id, dropN+1, dropB+b
			got++
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return err
		}
		if got == 0 {
			break // the total was off; the rows are all gone
		}
	}
	if _, err := r.exec(tx, `DELETE FROM samples WHERE id <= ?`, cut); err != nil {
		return err
	}
	r.mon.samplesDropped.Add(uint64(dropN))
	_, err := r.exec(tx, `UPDATE samples_total SET n = n - ?, bytes = bytes - ? WHERE k = 1`, dropN, dropB)
	return err
}

// StoredSample is one kept sample record.
type StoredSample struct {
	ID       int64
	Device   string
	Model    string
	Version  string
	Time     time.Time
	Received time.Time
	Sample   protocol.Sample
}

// SampleFilter selects samples: Model is required; Version "" means every
// version; a zero Since means all.
type SampleFilter struct {
	Model, Version string
	Since          time.Time
}

// Samples calls fn for each kept sample that f selects, oldest first
// (by the time on the device), and stops at fn's first error. A record
// that no longer decodes is skipped.
func (r *Registry) Samples(f SampleFilter, fn func(*StoredSample) error) error {
	q := `SELECT id, device, model, version, time, received, body FROM samples WHERE model = ? AND time >= ?`
	args := []any{f.Model, f.Since.UnixNano()}
	if f.Since.IsZero() {
		args[1] = int64(-1 << 63)
	}
	if f.Version != "" {
		q += ` AND version = ?`
		args = append(args, f.Version)
	}
	rows, err := r.r.Query(r.q(q+` ORDER BY time, id`), args...)
	if err != nil {
		return wrapErr("samples", err)
	}
	defer rows.Close()
	for rows.Next() {
		var s StoredSample
		var t, recv int64
		var body []byte
		if err := rows.Scan(&s.ID, &s.Device, &s.Model, &s.Version, &t, &recv, &body); err != nil {
			return wrapErr("samples", err)
		}
		rec, err := protocol.DecodeRecord(body)
		if err != nil || rec.Sample == nil {
			continue
		}
		s.Time, s.Received, s.Sample = fromTS(t), fromTS(recv), *rec.Sample
		if err := fn(&s); err != nil {
			return err
		}
	}
	return wrapErr("samples", rows.Err())
}

// SampleStats are the kept samples' count and bytes, and how many the
// bounds dropped since this process opened the store.
type SampleStats struct {
	Count, Bytes int64
	Dropped      uint64
}

// SampleStats returns the samples' running totals.
func (r *Registry) SampleStats() (SampleStats, error) {
	var s SampleStats
	err := r.r.QueryRow(`SELECT n, bytes FROM samples_total WHERE k = 1`).Scan(&s.Count, &s.Bytes)
	s.Dropped = r.mon.samplesDropped.Load()
	return s, wrapErr("sample stats", err)
}
