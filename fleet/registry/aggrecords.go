package registry

import (
	"fmt"

	"github.com/outpost-edge/outpost/protocol"
)

// A device's minute and fine buckets are its agg_records rows (schema
// 0011), merged when read: ingest stores each aggregate once, as the
// device sent it, instead of writing a wide bucket row per record (the
// ingest benchmark's cost). Every reader of a device's buckets of a minute
// or less goes through recordRows, beside the agg_buckets rows it reads
// (device minute rows written before 0011 are still there until they
// expire; later ones are never written, so nothing counts twice). Hour
// buckets and every fleet bucket stay agg_buckets rows.

// recordStep reports whether the devices' buckets of step seconds come from
// agg_records (the fleet's are agg_buckets rows at every step).
func recordStep(step int64) bool { return step <= MinuteBucket }

// fromRecords reports whether device's buckets of step seconds come from
// agg_records; device "" is the fleet.
func fromRecords(device string, step int64) bool { return device != "" && recordStep(step) }

// recordRows merges the agg_records rows that where (a condition on model,
// version and device, with its args) selects into buckets of step seconds
// whose starts are in [since, until), and calls fn for each, in order of
// version, device and start.
func (r *Registry) recordRows(where string, args []any, step, since, until int64, fn func(version, device string, start int64, v *aggValue) error) error {
	lo := floorTo(since, step)
	if until <= lo {
		return nil
	}
	hi := floorTo(until-1, step) + step
	rows, err := r.r.Query(r.eng.rebind(`SELECT version, device, start, body FROM agg_records WHERE `+where+
		` AND start >= ? AND start < ? ORDER BY version, device, start`), append(append([]any{}, args...), lo, hi)...)
	if err != nil {
		return err
	}
	defer rows.Close()
	var (
		cur                   *aggValue
		curVersion, curDevice string
		curStart              int64
		body                  []byte
	)
	flush := func() error {
		if cur == nil {
			return nil
		}
		v := cur
		cur = nil
		return fn(curVersion, curDevice, curStart, v)
	}
	for rows.Next() {
		var version, device string
		var start int64
		if err := rows.Scan(&version, &device, &start, &body); err != nil {
			return err
		}
		rec, err := protocol.DecodeRecord(body)
		if err != nil || rec.Aggregate == nil {
			return fmt.Errorf("agg_records row of %s at %d: not an aggregate record: %v", device, start, err)
		}
		b := floorTo(start, step)
		if cur != nil && (version != curVersion || device != curDevice || b != curStart) {
			if err := flush(); err != nil {
				return err
			}
		}
		if cur == nil {
			cur, curVersion, curDevice, curStart = &aggValue{}, version, device, b
		}
		cur.addAggregate(rec.Aggregate, true)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return flush()
}
