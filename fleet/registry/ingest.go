package registry

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// What RecordBatch keeps of each fresh record besides its raw row in
// telemetry, in the same transaction (docs/MONITORING.md "What the
// controller keeps"):
//
//	aggregate  merged into agg_buckets and agg_totals (buckets.go); one with
//	           a shadow section (a candidate's answers to copies, which no
//	           client saw) into shadow_buckets instead (shadow.go)
//	health     a point of the device's health series (device_health)
//	audit      the device's audit log, its hash chain checked (device_audit, deviceaudit.go)
//	sample     kept for export, within count and byte bounds (samples, samples.go)
//	update     only the raw row (the rollout engine has the device's acks)
//
// A record that does not decode is kept raw and counted, nothing more.

// keptElsewhere are the kinds whose raw telemetry rows are stored without
// their body: ingest keeps what they say in their own tables, and the raw
// row is only there for de-duplication. Update records, records of kinds
// this build does not know and records that do not decode keep their body.
var keptElsewhere = map[string]bool{
	protocol.KindAggregate.String(): true, protocol.KindHealth.String(): true,
	protocol.KindAudit.String(): true, protocol.KindSample.String(): true,
}

// ingestTx is what one ingest transaction gathers while it stores its
// batches' records, to write once at its end (flush) and to report once it
// committed (breaks).
type ingestTx struct {
	agg         aggBatch
	shadow      shadowBatch
	heads       map[string]*deviceAuditHead
	breaks      []ChainBreak
	samples     int64 // samples added
	sampleBytes int64
	undecodable int
}

// ingestFresh keeps the records of chunk whose sequence numbers the insert
// found new (seqs, in any order), in sequence order.
func (r *Registry) ingestFresh(tx *sql.Tx, it *ingestTx, device string, chunk []protocol.Entry, seqs []uint64, now time.Time) error {
	if len(seqs) == 0 || r.mon.rawOnly {
		return nil
	}
	fresh := make(map[uint64]bool, len(seqs))
	for _, s := range seqs {
		fresh[s] = true
	}
	for _, e := range chunk {
		if fresh[e.Seq] {
			delete(fresh, e.Seq) // a batch naming a seq twice: the first is the one stored
			if err := r.ingestRecord(tx, it, device, e.Body, now); err != nil {
				return fmt.Errorf("record %d: %w", e.Seq, err)
			}
		}
	}
	return nil
}

// aggRecord is an aggregate record of a batch kept as an agg_records row,
// decoded once.
type aggRecord struct {
	seq   uint64
	start int64 // aggStart, unix seconds
	body  []byte
	rec   protocol.Record
}

// asAggRecord reports whether e, of kind k, is kept as an agg_records row:
// an aggregate of a named model without a shadow section (shadow ones go
// to shadow_buckets and keep a telemetry row), on a store that ingests.
func (r *Registry) asAggRecord(k protocol.Kind, e protocol.Entry) (aggRecord, bool) {
	if k != protocol.KindAggregate || r.mon.rawOnly {
		return aggRecord{}, false
	}
	rec, err := protocol.DecodeRecord(e.Body)
	if err != nil || rec.Aggregate == nil || rec.Aggregate.Shadow != nil || rec.Model.Name == "" {
		return aggRecord{}, false
	}
	return aggRecord{seq: e.Seq, start: aggStart(&rec).Unix(), body: e.Body, rec: rec}, true
}

// aggRecordRows is how many rows one agg_records insert carries.
const aggRecordRows = 500

// aggRecordInsertFull is insertAggRecords' statement for a full chunk.
var aggRecordInsertFull = aggRecordInsert(aggRecordRows)

func aggRecordInsert(n int) string {
	return `INSERT INTO agg_records (model, version, device, start, epoch, seq, body) VALUES ` + placeholders(n, 7) +
		` ON CONFLICT (model, version, device, start, epoch, seq) DO NOTHING RETURNING seq`
}

// insertAggRecords inserts as and returns the sequence numbers that were
// new.
func (r *Registry) insertAggRecords(tx *sql.Tx, device string, epoch uint64, as []aggRecord) ([]uint64, error) {
	args := make([]any, 0, 7*len(as))
	for i := range as {
		a := &as[i]
		args = append(args, a.rec.Model.Name, a.rec.Model.Version, device, a.start, int64(epoch), int64(a.seq), a.body)
	}
	return r.returningSeqs(tx, r.mon.stmts[aggRecordInsertFull], aggRecordRows, len(as), aggRecordInsert, args)
}

// batchPrep is what RecordBatch works out of a batch on its caller's
// goroutine before queueing it, so that the group's transaction, one at a
// time on the single writer, only stores and merges: the records' kinds,
// which ones get a telemetry row and which an agg_records row, and the
// latter merged and expanded as if all were new.
type batchPrep struct {
	kinds map[uint64]string
	offer []protocol.Entry
	aggs  []aggRecord
	agg   aggBatch
}

func (r *Registry) prepareBatch(device string, b *protocol.Batch) *batchPrep {
	p := &batchPrep{kinds: make(map[uint64]string, len(b.Entries))}
	for _, e := range b.Entries {
		if k, _, err := protocol.PeekRecord(e.Body); err == nil {
			p.kinds[e.Seq] = k.String()
			if a, ok := r.asAggRecord(k, e); ok {
				p.aggs = append(p.aggs, a)
				continue
			}
		}
		p.offer = append(p.offer, e)
	}
	for i := range p.aggs {
		p.agg.add(device, &p.aggs[i].rec, r.mon.fineStep)
	}
	p.agg.expand()
	return p
}

// freshAggs is the buckets of p's aggregates whose sequence numbers are in
// fresh (which it empties), each counted once.
func (r *Registry) freshAggs(p *batchPrep, device string, fresh map[uint64]bool) *aggBatch {
	var b aggBatch
	for i := range p.aggs {
		if fresh[p.aggs[i].seq] {
			delete(fresh, p.aggs[i].seq)
			b.add(device, &p.aggs[i].rec, r.mon.fineStep)
		}
	}
	b.expand()
	return &b
}

// reportIngest tells the subscribers what a committed transaction found.
func (r *Registry) reportIngest(it *ingestTx) {
	if it == nil {
		return
	}
	for _, b := range it.breaks {
		r.log.Warn("device audit chain broken", "device", b.Device, "seq", b.Seq, "reason", b.Reason)
		if r.mon.onBreak != nil {
			r.mon.onBreak(b)
		}
	}
}

// ingestRecord keeps one fresh record of device.
func (r *Registry) ingestRecord(tx *sql.Tx, it *ingestTx, device string, body []byte, now time.Time) error {
	rec, err := protocol.DecodeRecord(body)
	if err != nil {
		it.undecodable++
		return nil
	}
	switch rec.Kind {
	case protocol.KindAggregate:
		// The others reach here only without a model name (asAggRecord):
		// counted in the device's telemetry, in no bucket.
		if rec.Aggregate != nil && rec.Aggregate.Shadow != nil {
			it.shadow.add(device, &rec, r.mon.fineStep)
		}
	case protocol.KindHealth:
		return r.insertHealth(tx, device, &rec)
	case protocol.KindAudit:
		return r.insertDeviceAudit(tx, it, device, &rec, now)
	case protocol.KindSample:
		return r.insertSample(tx, it, device, &rec, body, now)
	}
	return nil
}

// flush writes what the transaction gathered.
func (r *Registry) flushIngest(tx *sql.Tx, it *ingestTx) error {
	if err := r.flushAgg(tx, &it.agg); err != nil {
		return fmt.Errorf("buckets: %w", err)
	}
	if err := r.flushShadow(tx, &it.shadow); err != nil {
		return fmt.Errorf("shadow buckets: %w", err)
	}
	if err := r.saveAuditHeads(tx, it); err != nil {
		return fmt.Errorf("audit heads: %w", err)
	}
	if err := r.boundSamples(tx, it); err != nil {
		return fmt.Errorf("samples: %w", err)
	}
	return nil
}

func (r *Registry) insertHealth(tx *sql.Tx, device string, rec *protocol.Record) error {
	h := rec.Health
	var temp any
	if !math.IsNaN(h.TemperatureC) && !math.IsInf(h.TemperatureC, 0) {
		temp = h.TemperatureC
	}
	_, err := r.exec(tx, `INSERT INTO device_health (device, time, cpu_percent, load1, mem_used_bytes, mem_total_bytes,
		disk_used_bytes, disk_total_bytes, temperature_c, uptime_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (device, time) DO NOTHING`,
		device, rec.Time.UnixNano(), finite(h.CPUPercent), finite(h.Load1), int64(h.MemUsedBytes), int64(h.MemTotalBytes),
		int64(h.DiskUsedBytes), int64(h.DiskTotalBytes), temp, h.Uptime.Seconds())
	return err
}

// HealthPoint is one health snapshot of a device (GET /v1/devices/{id}/health).
type HealthPoint struct {
	Time           time.Time `json:"time"`
	CPUPercent     float64   `json:"cpu_percent"`
	Load1          float64   `json:"load1"`
	MemUsedBytes   uint64    `json:"mem_used_bytes"`
	MemTotalBytes  uint64    `json:"mem_total_bytes"`
	DiskUsedBytes  uint64    `json:"disk_used_bytes"`
	DiskTotalBytes uint64    `json:"disk_total_bytes"`
	// TemperatureC is nil when the device has no sensor.
	TemperatureC  *float64 `json:"temperature_c"`
	UptimeSeconds float64  `json:"uptime_seconds"`
}

// DeviceHealth returns device's health points at or after since, oldest
// first, at most limit of them (the newest; limit <= 0: all).
func (r *Registry) DeviceHealth(device string, since time.Time, limit int) ([]HealthPoint, error) {
	q := `SELECT time, cpu_percent, load1, mem_used_bytes, mem_total_bytes, disk_used_bytes, disk_total_bytes,
		temperature_c, uptime_seconds FROM device_health WHERE device = ? AND time >= ? ORDER BY time DESC`
	args := []any{device, since.UnixNano()}
	if since.IsZero() {
		args[1] = int64(math.MinInt64)
	}
	if limit > 0 {
		q += ` LIMIT ?`
		args = append(args, limit)
	}
	rows, err := r.r.Query(r.q(q), args...)
	if err != nil {
		return nil, wrapErr("health", err)
	}
	defer rows.Close()
	out := []HealthPoint{}
	for rows.Next() {
		var p HealthPoint
		var t, mu, mt, du, dt int64
		var temp sql.NullFloat64
		if err := rows.Scan(&t, &p.CPUPercent, &p.Load1, &mu, &mt, &du, &dt, &temp, &p.UptimeSeconds); err != nil {
			return nil, wrapErr("health", err)
		}
		p.Time = time.Unix(0, t).UTC()
		p.MemUsedBytes, p.MemTotalBytes, p.DiskUsedBytes, p.DiskTotalBytes = uint64(mu), uint64(mt), uint64(du), uint64(dt)
		if temp.Valid {
			p.TemperatureC = &temp.Float64
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, wrapErr("health", err)
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// ingestStatements are prepared once; bucketSelect and totalsSelect lock
// the row on PostgreSQL.
var ingestStatements = []string{bucketRange, bucketUpsertFull, totalsSelect, totalsUpsert, aggRecordInsertFull}

var bucketUpsertFull = bucketUpsertN(bucketRows)

func (r *Registry) prepareIngest(ctx context.Context) error {
	r.mon.stmts = map[string]*sql.Stmt{}
	for _, q := range ingestStatements {
		text := q
		if q == bucketRange || q == totalsSelect {
			text += r.eng.forUpdate
		}
		st, err := r.w.PrepareContext(ctx, r.eng.rebind(text))
		if err != nil {
			return err
		}
		r.mon.stmts[q] = st
	}
	return nil
}

// stmt returns the prepared statement q (one of ingestStatements) for tx.
func (r *Registry) stmt(tx *sql.Tx, q string) *sql.Stmt { return tx.Stmt(r.mon.stmts[q]) }

func wrapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("registry: %s: %w", what, err)
}
