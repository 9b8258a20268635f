package registry

import (
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// The devices' audit trails. A device keeps its audit trail as a hash
// chain (agent/audit): record seq names the hex sha256 of record seq-1. Its
// audit telemetry records carry seq, prev and the record's own hash
// (protocol.Audit), and ingest checks each against the last chained record
// held for the device (the head):
//
//	seq = head+1, prev = head's hash    ok
//	seq = head+1, prev differs          broken: the device's trail was edited or replaced
//	seq <= head, same hash as held      a repeat (the updater re-sends after a crash): not stored again
//	seq <= head, other hash             broken: a record the fleet holds was rewritten
//	seq = 1 while head > 1              broken: the trail started again (data wiped)
//	seq > head+1                        ok, with reason "gap": the agent does not send every
//	                                    trail record (only those behind an update report), so a
//	                                    gap alone is no evidence; prev cannot be checked
//	first chained record seen           ok: nothing to compare with yet
//
// A broken record is kept, flagged (chain 'broken', reason), counted in
// device_audit_head.breaks and reported (Options.OnAuditChainBroken); the
// chain goes on from it, so one break is reported once. Records without a
// place in the chain (agent notices, older agents) are kept with chain
// 'none'.

// Chain states of a device audit record.
const (
	ChainOK     = "ok"
	ChainBroken = "broken"
	ChainNone   = "none"
)

// ChainBreak is a device audit record that does not follow the one before
// it in the device's trail.
type ChainBreak struct {
	Device string
	// N is the record's number in the controller's copy of the device's
	// log (DeviceAuditRecord.N), Seq its number in the device's trail.
	N, Seq uint64
	Time   time.Time
	Model  string
	Action string
	Reason string
}

// deviceAuditHead is a device's device_audit_head row.
type deviceAuditHead struct {
	n, seq, breaks uint64
	hash           string
	dirty          bool
}

func (r *Registry) deviceAuditHead(tx *sql.Tx, it *ingestTx, device string) (*deviceAuditHead, error) {
	if h := it.heads[device]; h != nil {
		return h, nil
	}
	var n, seq, breaks int64
	h := &deviceAuditHead{}
	err := tx.QueryRow(r.q(`SELECT n, chain_seq, chain_hash, breaks FROM device_audit_head WHERE device = ?`+r.eng.forUpdate), device).
		Scan(&n, &seq, &h.hash, &breaks)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	h.n, h.seq, h.breaks = uint64(n), uint64(seq), uint64(breaks)
	if it.heads == nil {
		it.heads = map[string]*deviceAuditHead{}
	}
	it.heads[device] = h
	return h, nil
}

func (r *Registry) saveAuditHeads(tx *sql.Tx, it *ingestTx) error {
	for dev, h := range it.heads {
		if !h.dirty {
			continue
		}
		if _, err := r.exec(tx, `INSERT INTO device_audit_head (device, n, chain_seq, chain_hash, breaks) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (device) DO UPDATE SET n = excluded.n, chain_seq = excluded.chain_seq, chain_hash = excluded.chain_hash,
			breaks = excluded.breaks`, dev, int64(h.n), int64(h.seq), h.hash, int64(h.breaks)); err != nil {
			return err
		}
	}
	return nil
}

// insertDeviceAudit checks rec against the device's chain and stores it.
// The device's row is locked by the caller (lockDevice), so one device's
// records are checked one transaction at a time, also across replicas.
func (r *Registry) insertDeviceAudit(tx *sql.Tx, it *ingestTx, device string, rec *protocol.Record, now time.Time) error {
	a := rec.Audit
	h, err := r.deviceAuditHead(tx, it, device)
	if err != nil {
		return err
	}
	chain, reason := ChainNone, ""
	if a.Seq > 0 {
		chain = ChainOK
		switch {
		case h.seq == 0:
		case a.Seq == h.seq+1:
			if a.Prev != h.hash {
				chain, reason = ChainBroken, fmt.Sprintf("names %.16s as its predecessor's hash, record %d held has %.16s", a.Prev, h.seq, h.hash)
			}
		case a.Seq > h.seq+1:
			reason = fmt.Sprintf("gap: follows record %d", h.seq)
		default: // a.Seq <= h.seq
			var held string
			err := tx.QueryRow(r.q(`SELECT chain_hash FROM device_audit WHERE device = ? AND chain_seq = ? ORDER BY n DESC LIMIT 1`),
				device, int64(a.Seq)).Scan(&held)
			switch {
			case err == nil && held == a.Hash:
				return nil // a repeat
			case err != nil && !errors.Is(err, sql.ErrNoRows):
				return err
			case a.Seq == 1:
				chain, reason = ChainBroken, fmt.Sprintf("the trail started again at 1 after record %d", h.seq)
			case err == nil:
				chain, reason = ChainBroken, fmt.Sprintf("record %d held with hash %.16s arrived again with %.16s", a.Seq, held, a.Hash)
			default:
				chain, reason = ChainBroken, fmt.Sprintf("record %d arrived after record %d", a.Seq, h.seq)
			}
		}
		h.seq, h.hash = a.Seq, a.Hash
	}
	h.n++
	h.dirty = true
	if _, err := r.exec(tx, `INSERT INTO device_audit (device, n, time, received, model, version, actor, action, outcome, detail,
		chain_seq, chain_prev, chain_hash, chain, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		device, int64(h.n), rec.Time.UnixNano(), now.UnixNano(), rec.Model.Name, rec.Model.Version, a.Actor, a.Action, a.Outcome,
		a.Detail, int64(a.Seq), a.Prev, a.Hash, chain, reason); err != nil {
		return err
	}
	if chain == ChainBroken {
		h.breaks++
		b := ChainBreak{Device: device, N: h.n, Seq: a.Seq, Time: rec.Time, Model: rec.Model.Name, Action: a.Action, Reason: reason}
		it.breaks = append(it.breaks, b)
		if r.mon.breakAlerts != nil {
			if _, err := r.enqueueAlerts(tx, r.mon.breakAlerts(b)); err != nil {
				return err
			}
		}
	}
	return nil
}

// DeviceAuditRecord is one audit record of a device as the controller
// keeps it (GET /v1/devices/{id}/audit).
type DeviceAuditRecord struct {
	// Seq numbers the device's records in the controller's copy, in
	// arrival order (1, 2, ...); before= pages by it.
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Model   string    `json:"model"`
	Version string    `json:"version,omitempty"`
	Actor   string    `json:"actor"`
	Action  string    `json:"action"`
	Outcome string    `json:"outcome"`
	Detail  string    `json:"detail"`
	// Chain is "ok", "broken" or "none" (the record is not part of the
	// device's hash chain: an agent notice, or an older agent).
	Chain string `json:"chain"`
	// ChainSeq and Hash are the record's place in the device's trail;
	// Reason says why the chain is broken here, or notes a gap.
	ChainSeq uint64    `json:"chain_seq,omitempty"`
	Hash     string    `json:"hash,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Received time.Time `json:"received"`
}

// DeviceAudit returns up to limit (default 100) of device's audit records
// numbered below before (0: from the newest), newest first.
func (r *Registry) DeviceAudit(device string, limit int, before uint64) ([]DeviceAuditRecord, error) {
	if limit <= 0 {
		limit = 100
	}
	if before == 0 || before > 1<<62 {
		before = 1 << 62
	}
	rows, err := r.r.Query(r.q(`SELECT n, time, received, model, version, actor, action, outcome, detail, chain_seq, chain_hash,
		chain, reason FROM device_audit WHERE device = ? AND n < ? ORDER BY n DESC LIMIT ?`), device, int64(before), limit)
	if err != nil {
		return nil, wrapErr("device audit", err)
	}
	defer rows.Close()
	out := []DeviceAuditRecord{}
	for rows.Next() {
		var d DeviceAuditRecord
		var n, t, recv, seq int64
		if err := rows.Scan(&n, &t, &recv, &d.Model, &d.Version, &d.Actor, &d.Action, &d.Outcome, &d.Detail, &seq, &d.Hash,
			&d.Chain, &d.Reason); err != nil {
			return nil, wrapErr("device audit", err)
		}
		d.Seq, d.ChainSeq = uint64(n), uint64(seq)
		d.Time, d.Received = fromTS(t), fromTS(recv)
		out = append(out, d)
	}
	return out, wrapErr("device audit", rows.Err())
}

// AuditChainBreaks returns how many breaks of device's audit chain the
// controller has found.
func (r *Registry) AuditChainBreaks(device string) (uint64, error) {
	var n int64
	err := r.r.QueryRow(r.q(`SELECT breaks FROM device_audit_head WHERE device = ?`), device).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return uint64(n), wrapErr("audit chain breaks", err)
}
