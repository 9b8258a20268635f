package registry

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"time"
)

// DriftRow is drift detection's record of one model version and scope
// (Device "" for the whole fleet): Status and Score are fleet/drift's JSON,
// kept as they are (schema 8).
type DriftRow struct {
	Model, Version, Device string
	Status, Score          json.RawMessage
	Updated                time.Time
}

// DriftRows returns the rows of model (and version, when not empty),
// ordered by version and device, the fleet's row first.
func (r *Registry) DriftRows(model, version string) ([]DriftRow, error) {
	q := `SELECT model, version, device, status, score, updated FROM drift_state WHERE model = ?`
	args := []any{model}
	if version != "" {
		q += ` AND version = ?`
		args = append(args, version)
	}
	rows, err := r.r.Query(r.q(q+` ORDER BY version, device`), args...)
	if err != nil {
		return nil, fmt.Errorf("registry: drift of %s: %w", model, err)
	}
	defer rows.Close()
	var out []DriftRow
	for rows.Next() {
		var d DriftRow
		var status, score []byte
		var updated int64
		if err := rows.Scan(&d.Model, &d.Version, &d.Device, &status, &score, &updated); err != nil {
			return nil, fmt.Errorf("registry: drift of %s: %w", model, err)
		}
		d.Status, d.Score, d.Updated = status, score, fromTS(updated)
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: drift of %s: %w", model, err)
	}
	return out, nil
}

// PutDrift writes rows (replacing those of the same model, version and
// device) in one transaction; on a fenced view only while its lease holds.
func (r *Registry) PutDrift(rows []DriftRow) error {
	if len(rows) == 0 {
		return nil
	}
	err := r.write(func(tx *sql.Tx) error {
		for _, d := range rows {
			if _, err := r.exec(tx, `INSERT INTO drift_state (model, version, device, status, score, updated) VALUES (?, ?, ?, ?, ?, ?)
				ON CONFLICT (model, version, device) DO UPDATE SET status = excluded.status, score = excluded.score, updated = excluded.updated`,
				d.Model, d.Version, d.Device, string(d.Status), string(d.Score), ts(d.Updated)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("registry: drift: %w", err)
	}
	return nil
}

// DeviceFeatures returns, per device, the feature histograms model version
// has in its buckets of step seconds within [since, until), merged: the
// devices that sent some, read in one query (the drift monitor judges every
// device each window, and a fleet has thousands).
func (r *Registry) DeviceFeatures(model, version string, step int64, since, until time.Time) (map[string]*Features, error) {
	rows, err := r.r.Query(r.q(`SELECT device, start, requests, records, features FROM agg_buckets
		WHERE model = ? AND version = ? AND step = ? AND start >= ? AND start < ? AND device <> '' AND features <> '[]'`),
		model, version, step, since.Unix()/step*step, until.Unix())
	if err != nil {
		return nil, fmt.Errorf("registry: device features of %s v%s: %w", model, version, err)
	}
	defer rows.Close()
	out := map[string]*Features{}
	var col []byte
	for rows.Next() {
		var device string
		var start, requests, records int64
		if err := rows.Scan(&device, &start, &requests, &records, &col); err != nil {
			return nil, fmt.Errorf("registry: device features of %s v%s: %w", model, version, err)
		}
		f := out[device]
		if f == nil {
			f = &Features{}
			out[device] = f
		}
		if err := f.add(requests, records, col); err != nil {
			return nil, fmt.Errorf("registry: features %s v%s of %s bucket %d: %w", model, version, device, start, err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: device features of %s v%s: %w", model, version, err)
	}
	if recordStep(step) {
		err := r.recordRows(`model = ? AND version = ?`, []any{model, version}, step, since.Unix()/step*step, until.Unix(),
			func(_, device string, _ int64, v *aggValue) error {
				if len(v.features) == 0 {
					return nil // as the query's features <> '[]'
				}
				f := out[device]
				if f == nil {
					f = &Features{}
					out[device] = f
				}
				f.addValue(v)
				return nil
			})
		if err != nil {
			return nil, fmt.Errorf("registry: device features of %s v%s: %w", model, version, err)
		}
	}
	return out, nil
}
