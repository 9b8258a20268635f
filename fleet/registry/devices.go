package registry

import (
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// Device is what the controller knows about one device.
type Device struct {
	ID           string            `json:"id"`
	Labels       map[string]string `json:"labels,omitempty"`
	AgentVersion string            `json:"agent_version,omitempty"`
	Online       bool              `json:"online"`
	// OnlineSince is when the device last said "online", i.e. its last
	// connection.
	OnlineSince time.Time              `json:"online_since,omitzero"`
	LastSeen    time.Time              `json:"last_seen,omitzero"`
	Models      []protocol.ModelStatus `json:"models,omitempty"`
	Update      *protocol.UpdateStatus `json:"update,omitempty"`
	Health      protocol.HealthSummary `json:"health"`
	RootVersion int64                  `json:"root_version,omitempty"`
	StatusTime  time.Time              `json:"status_time,omitzero"`
	Telemetry   TelemetryCounters      `json:"telemetry"`
	// Features are the optional protocol features the agent reports
	// (protocol.Status.Features).
	Features []string `json:"features,omitempty"`
}

// Supports reports whether the device's agent reported feature f.
func (d *Device) Supports(f string) bool {
	for _, g := range d.Features {
		if g == f {
			return true
		}
	}
	return false
}

// Running returns the version of model the device reports serving, or 0.
func (d *Device) Running(model string) int64 {
	for _, m := range d.Models {
		if m.Name == model {
			return m.Version
		}
	}
	return 0
}

// TelemetryCounters count the telemetry a device sent, de-duplicated by
// (device, epoch, sequence).
type TelemetryCounters struct {
	Batches    uint64 `json:"batches"`
	Records    uint64 `json:"records"`
	Duplicates uint64 `json:"duplicates"`
	// ByKind counts new records by kind name.
	ByKind map[string]uint64 `json:"by_kind,omitempty"`
	// Epoch and MaxSeq: the device's current queue and the highest sequence
	// number seen in it.
	Epoch  uint64 `json:"epoch"`
	MaxSeq uint64 `json:"max_seq"`
	// Drops are the epoch's cumulative drop counters (maximum seen).
	Drops map[string]uint64 `json:"drops,omitempty"`
	// Last is when the last batch arrived.
	Last time.Time `json:"last,omitzero"`
}

const deviceCols = `id, labels, agent_version, online, online_since, last_seen, models, update_status, health, root_version,
	status_time, tel_batches, tel_records, tel_duplicates, tel_by_kind, tel_epoch, tel_max_seq, tel_drops, tel_last, features`

func scanDevice(s scanner) (*Device, error) {
	var d Device
	var labels, models, update, health, byKind, drops, features []byte
	var onlineSince, lastSeen, statusTime, telLast int64
	var batches, records, dups, epoch, maxSeq int64
	if err := s.Scan(&d.ID, &labels, &d.AgentVersion, &d.Online, &onlineSince, &lastSeen, &models, &update, &health, &d.RootVersion,
		&statusTime, &batches, &records, &dups, &byKind, &epoch, &maxSeq, &drops, &telLast, &features); err != nil {
		return nil, notFound(err)
	}
	d.OnlineSince, d.LastSeen, d.StatusTime = fromTS(onlineSince), fromTS(lastSeen), fromTS(statusTime)
	t := &d.Telemetry
	t.Batches, t.Records, t.Duplicates, t.Epoch, t.MaxSeq = uint64(batches), uint64(records), uint64(dups), uint64(epoch), uint64(maxSeq)
	t.Last = fromTS(telLast)
	for _, f := range []struct {
		b []byte
		v any
	}{{labels, &d.Labels}, {models, &d.Models}, {update, &d.Update}, {health, &d.Health}, {byKind, &t.ByKind}, {drops, &t.Drops}, {features, &d.Features}} {
		if err := unjs(f.b, f.v); err != nil {
			return nil, fmt.Errorf("device %s: %w", d.ID, err)
		}
	}
	return &d, nil
}

// lockDevice returns device id inside a write transaction, creating an
// empty row first when it is new so that PostgreSQL has a row to lock.
func (r *Registry) lockDevice(tx *sql.Tx, id string) (*Device, error) {
	if _, err := r.exec(tx, `INSERT INTO devices (id) VALUES (?) ON CONFLICT (id) DO NOTHING`, id); err != nil {
		return nil, err
	}
	return scanDevice(tx.QueryRow(r.q(`SELECT `+deviceCols+` FROM devices WHERE id = ?`+r.eng.forUpdate), id))
}

// saveDevice writes every column of an existing row.
func (r *Registry) saveDevice(tx *sql.Tx, d *Device) error {
	t := &d.Telemetry
	updateState := ""
	if d.Update != nil {
		updateState = string(d.Update.State)
	}
	_, err := r.exec(tx, `UPDATE devices SET labels = ?, agent_version = ?, online = ?, online_since = ?, last_seen = ?, models = ?,
		update_state = ?, update_status = ?, health = ?, root_version = ?, status_time = ?, tel_batches = ?, tel_records = ?,
		tel_duplicates = ?, tel_by_kind = ?, tel_epoch = ?, tel_max_seq = ?, tel_drops = ?, tel_last = ?, features = ? WHERE id = ?`,
		js(d.Labels), d.AgentVersion, d.Online, ts(d.OnlineSince), ts(d.LastSeen), js(d.Models),
		updateState, js(d.Update), js(d.Health), d.RootVersion, ts(d.StatusTime), int64(t.Batches), int64(t.Records),
		int64(t.Duplicates), js(t.ByKind), int64(t.Epoch), int64(t.MaxSeq), js(t.Drops), ts(t.Last), js(d.Features), d.ID)
	return err
}

// UpdateDevice applies fn to the device (a zero Device with ID set if new)
// and stores the result, in one transaction holding the device's row. fn
// may run more than once, each time on a fresh copy.
func (r *Registry) UpdateDevice(id string, fn func(d *Device)) (*Device, error) {
	var d *Device
	err := r.write(func(tx *sql.Tx) error {
		var err error
		if d, err = r.lockDevice(tx, id); err != nil {
			return err
		}
		d.ID = id
		fn(d)
		d.ID = id
		return r.saveDevice(tx, d)
	})
	if err != nil {
		return nil, fmt.Errorf("registry: device %s: %w", id, err)
	}
	return d, nil
}

// Device returns one device.
func (r *Registry) Device(id string) (*Device, error) {
	d, err := scanDevice(r.r.QueryRow(r.q(`SELECT `+deviceCols+` FROM devices WHERE id = ?`), id))
	if err != nil {
		return nil, fmt.Errorf("registry: device %s: %w", id, err)
	}
	return d, nil
}

// Devices lists every device by id.
func (r *Registry) Devices() ([]Device, error) {
	out, err := queryAll(r.r, `SELECT `+deviceCols+` FROM devices ORDER BY id`, nil, scanDevice)
	if err != nil {
		return nil, fmt.Errorf("registry: devices: %w", err)
	}
	return out, nil
}

// telemetryRows is how many records one INSERT carries.
const telemetryRows = 500

// RecordBatch stores a decoded telemetry batch from device and counts it,
// and returns how many of its records were new. Records are unique by
// (device, epoch, sequence) in the store, so a record delivered twice, to
// one replica or to two, is stored and counted once. The protocol
// guarantees that a sequence number not seen before is higher than all
// seen in the epoch, so records at or below the device's highest are known
// duplicates and not even offered to the store.
//
// Group commit: batches that arrive while another caller's transaction is
// committing are stored together in the next transaction, one sync for
// all of them; a lone caller commits at once. If a group's transaction
// fails, its batches are stored one by one, so one bad batch fails only
// its own caller.
func (r *Registry) RecordBatch(device string, b *protocol.Batch, now time.Time) (int, error) {
	it := &ingestItem{device: device, b: b, prep: r.prepareBatch(device, b), now: now, done: make(chan struct{}), lead: make(chan struct{})}
	r.ingest.mu.Lock()
	r.ingest.pending = append(r.ingest.pending, it)
	lead := !r.ingest.active
	r.ingest.active = true
	r.ingest.mu.Unlock()
	if lead {
		r.commitIngest()
	}
	select {
	case <-it.done:
	case <-it.lead:
		r.commitIngest()
		<-it.done
	}
	if it.err != nil {
		return 0, fmt.Errorf("registry: telemetry of %s: %w", device, it.err)
	}
	return it.fresh, nil
}

// maxIngestGroup bounds the batches of one group transaction.
const maxIngestGroup = 64

// ingestQueue is RecordBatch's group commit: the pending batches and
// whether a caller is committing (the leader). The leader commits the
// pending batches (its own first among them), then hands the lead to the
// caller of the oldest batch still pending, or ends it.
type ingestQueue struct {
	mu      sync.Mutex // guards the fields below
	pending []*ingestItem
	active  bool
}

type ingestItem struct {
	device string
	b      *protocol.Batch
	prep   *batchPrep
	now    time.Time
	fresh  int
	err    error
	done   chan struct{} // closed when fresh and err are set
	lead   chan struct{} // closed when this caller is to lead the next group
}

func (r *Registry) commitIngest() {
	q := r.ingest
	q.mu.Lock()
	n := min(len(q.pending), maxIngestGroup)
	group := q.pending[:n:n]
	q.pending = q.pending[n:]
	q.mu.Unlock()

	// One ingestTx per attempt: a transaction run again starts afresh.
	var itx *ingestTx
	err := r.write(func(tx *sql.Tx) error {
		itx = &ingestTx{}
		for _, it := range group {
			if err := r.recordBatch(tx, itx, it); err != nil {
				return err
			}
		}
		return r.flushIngest(tx, itx)
	})
	if err != nil && len(group) > 1 {
		for _, it := range group {
			it.err = r.write(func(tx *sql.Tx) error {
				itx = &ingestTx{}
				if err := r.recordBatch(tx, itx, it); err != nil {
					return err
				}
				return r.flushIngest(tx, itx)
			})
			if it.err == nil {
				r.reportIngest(itx)
			}
		}
	} else {
		for _, it := range group {
			it.err = err
		}
		if err == nil {
			r.reportIngest(itx)
		}
	}
	for _, it := range group {
		close(it.done)
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) == 0 {
		q.active = false
		return
	}
	close(q.pending[0].lead)
}

// recordBatch stores one batch inside tx and sets it.fresh; what its fresh
// records add to buckets, health, audit and samples goes through itx
// (ingest.go).
func (r *Registry) recordBatch(tx *sql.Tx, itx *ingestTx, it *ingestItem) error {
	device, b, now := it.device, it.b, it.now
	fresh := 0
	d, err := r.lockDevice(tx, device)
	if err != nil {
		return err
	}
	t := &d.Telemetry
	if t.Epoch != b.Epoch {
		t.Epoch, t.MaxSeq, t.Drops = b.Epoch, 0, nil
	}
	t.Batches++
	t.Last = now.UTC()
	// Every entry is offered, those at or below MaxSeq too: a broker may
	// deliver a device's batches out of order (NATS redelivers after its ack
	// wait, any broker resends after a reconnect), and the inserts below,
	// unique by (device, epoch, seq), are what tell a duplicate. Aggregates
	// go to agg_records, which de-duplicates them as well; every other
	// record gets a telemetry row (prepareBatch sorted them).
	p := it.prep
	offer, aggs, kinds := p.offer, p.aggs, p.kinds
	count := func(seqs []uint64) {
		for _, seq := range seqs {
			fresh++
			t.MaxSeq = max(t.MaxSeq, seq)
			if k, ok := kinds[seq]; ok {
				if t.ByKind == nil {
					t.ByKind = map[string]uint64{}
				}
				t.ByKind[k]++
			}
		}
	}
	for len(offer) > 0 {
		n := min(len(offer), telemetryRows)
		chunk := offer[:n]
		seqs, err := r.insertTelemetry(tx, device, b.Epoch, chunk, kinds, now)
		if err != nil {
			return err
		}
		offer = offer[n:]
		if err := r.ingestFresh(tx, itx, device, chunk, seqs, now); err != nil {
			return err
		}
		count(seqs)
	}
	aggFresh := map[uint64]bool{}
	for len(aggs) > 0 {
		n := min(len(aggs), aggRecordRows)
		seqs, err := r.insertAggRecords(tx, device, b.Epoch, aggs[:n])
		if err != nil {
			return err
		}
		aggs = aggs[n:]
		count(seqs)
		for _, s := range seqs {
			aggFresh[s] = true
		}
	}
	if len(aggFresh) == len(p.aggs) {
		itx.agg.absorb(&p.agg)
	} else if len(aggFresh) > 0 {
		itx.agg.absorb(r.freshAggs(p, device, aggFresh))
	}
	t.Records += uint64(fresh)
	t.Duplicates += uint64(len(b.Entries) - fresh)
	for reason, c := range b.Drops {
		if c == 0 {
			continue
		}
		if t.Drops == nil {
			t.Drops = map[string]uint64{}
		}
		name := protocol.DropReason(reason).String()
		t.Drops[name] = max(t.Drops[name], c)
	}
	it.fresh = fresh
	return r.saveDevice(tx, d)
}

// insertTelemetry inserts es and returns the sequence numbers that were
// new (RETURNING gives only the rows inserted). Full chunks go through a
// statement prepared once (parsing a statement of telemetryRows rows costs
// as much as running it).
func (r *Registry) insertTelemetry(tx *sql.Tx, device string, epoch uint64, es []protocol.Entry, kinds map[uint64]string, now time.Time) ([]uint64, error) {
	args := make([]any, 0, 6*len(es))
	for _, e := range es {
		body := e.Body
		if body == nil || (!r.mon.rawOnly && keptElsewhere[kinds[e.Seq]]) {
			// The row is for de-duplication; what the record says is
			// kept in its own table (ingest.go).
			body = []byte{}
		}
		args = append(args, device, int64(epoch), int64(e.Seq), kinds[e.Seq], now.UnixNano(), body)
	}
	return r.returningSeqs(tx, r.telStmt, telemetryRows, len(es), telemetryInsert, args)
}

// returningSeqs runs an INSERT of n rows with RETURNING seq (full, prepared
// once, when n is fullRows; else the statement text(n) makes) and returns
// the sequence numbers it gave back: the rows it inserted.
func (r *Registry) returningSeqs(tx *sql.Tx, full *sql.Stmt, fullRows, n int, text func(int) string, args []any) ([]uint64, error) {
	var rows *sql.Rows
	var err error
	if n == fullRows {
		rows, err = tx.Stmt(full).Query(args...)
	} else {
		rows, err = tx.Query(r.eng.rebind(text(n)), args...)
	}
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []uint64
	for rows.Next() {
		var s int64
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, uint64(s))
	}
	return out, rows.Err()
}

func telemetryInsert(n int) string {
	var sb strings.Builder
	sb.WriteString(`INSERT INTO telemetry (device, epoch, seq, kind, received, body) VALUES `)
	for i := range n {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString("(?, ?, ?, ?, ?, ?)")
	}
	sb.WriteString(` ON CONFLICT (device, epoch, seq) DO NOTHING RETURNING seq`)
	return sb.String()
}

// OnlineDevices returns the ids of the devices online now (an indexed
// query that reads no other column).
func (r *Registry) OnlineDevices() (map[string]bool, error) {
	rows, err := r.r.Query(r.q(`SELECT id FROM devices WHERE online = ?`), true)
	if err != nil {
		return nil, fmt.Errorf("registry: online devices: %w", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("registry: online devices: %w", err)
		}
		out[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: online devices: %w", err)
	}
	return out, nil
}
