package registry

import (
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/internal/hashchain"
)

// ErrTampered: an audit record does not match its sequence number, its
// predecessor's hash, or the stored head.
var ErrTampered = errors.New("registry: audit log tampered with")

// AuditRecord is one change made through the admin API: who (Actor, the
// token id, or "local" in bootstrap mode, and ActorName), what (Method and
// Path) and how it ended (Status, the HTTP status code). Records are kept
// in order, each naming the sha256 of the stored bytes of the one before
// (Prev), like the device's audit trail, so an edit, a reorder or a removal
// in the middle is found by VerifyAudit.
type AuditRecord struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Actor     string    `json:"actor"`
	ActorName string    `json:"actor_name,omitempty"`
	Role      string    `json:"role,omitempty"`
	Remote    string    `json:"remote,omitempty"`
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	Status    int       `json:"status"`
	// Detail, in records the system writes on its own (a rollout's
	// decisions: actor "system", name "rollout"), says what was decided and
	// on which numbers. Absent from older records, so their hashes hold.
	Detail string `json:"detail,omitempty"`
	Prev   string `json:"prev"`
	// Hash is the hex sha256 of the record's stored JSON (not stored in
	// it); the next record names it as Prev.
	Hash string `json:"hash,omitempty"`
}

// auditHead is the chain's head in meta: the last record's number and
// hash (the same JSON as internal/hashchain's head, so an imported bbolt
// head is stored as it was).
type auditHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

const metaAuditHead = "audit_head"

// AppendAudit adds rec at the end of the fleet audit log, filling Seq, Prev
// and (if zero) Time, and returns the stored record with its Hash. The
// head's row is held for the transaction, so replicas append in turn.
func (r *Registry) AppendAudit(rec AuditRecord) (*AuditRecord, error) {
	if rec.Time.IsZero() {
		rec.Time = time.Now()
	}
	rec.Time = rec.Time.UTC()
	err := r.write(func(tx *sql.Tx) error { return r.appendAudit(tx, &rec) })
	if err != nil {
		return nil, fmt.Errorf("registry: append audit: %w", err)
	}
	return &rec, nil
}

// appendAudit chains rec (its Time set) to the log in tx, setting its
// Seq, Prev and Hash.
func (r *Registry) appendAudit(tx *sql.Tx, rec *AuditRecord) error {
	var hb []byte
	if err := tx.QueryRow(r.q(`SELECT value FROM meta WHERE key = ?`+r.eng.forUpdate), metaAuditHead).Scan(&hb); err != nil {
		return fmt.Errorf("head: %w", err)
	}
	var h auditHead
	if err := json.Unmarshal(hb, &h); err != nil {
		return fmt.Errorf("%w: head: %v", ErrTampered, err)
	}
	rec.Hash = ""
	rec.Seq, rec.Prev = h.Seq+1, h.Hash
	doc, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	rec.Hash = hashchain.Hash(doc)
	if _, err := r.exec(tx, `INSERT INTO audit (seq, time, doc) VALUES (?, ?, ?)`, int64(rec.Seq), ts(rec.Time), doc); err != nil {
		return err
	}
	return r.putMeta(tx, metaAuditHead, auditHead{Seq: rec.Seq, Hash: rec.Hash})
}

func (r *Registry) putMeta(tx *sql.Tx, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = r.exec(tx, `INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, b)
	return err
}

// Audit returns up to limit records (0: all) at or after since, oldest
// first, each with its Hash.
func (r *Registry) Audit(since time.Time, limit int) ([]AuditRecord, error) {
	q := `SELECT doc FROM audit WHERE time >= ? ORDER BY seq`
	args := []any{since.UnixNano()}
	if since.IsZero() {
		args[0] = int64(-1 << 63)
	}
	if limit > 0 {
		q += ` LIMIT ?`
		args = append(args, limit)
	}
	rows, err := r.r.Query(r.q(q), args...)
	if err != nil {
		return nil, fmt.Errorf("registry: audit: %w", err)
	}
	defer rows.Close()
	out := []AuditRecord{}
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, fmt.Errorf("registry: audit: %w", err)
		}
		var rec AuditRecord
		if err := json.Unmarshal(doc, &rec); err != nil {
			return nil, fmt.Errorf("registry: audit: %w", err)
		}
		rec.Hash = hashchain.Hash(doc)
		out = append(out, rec)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: audit: %w", err)
	}
	return out, nil
}

// VerifyAudit walks the whole audit log and checks every record's sequence
// number and Prev against its predecessor, and the last one against the
// stored head; it returns the number of records, or an error wrapping
// ErrTampered naming the first bad record. Like any hash chain it cannot
// see the whole log rewritten from some record on, head included.
func (r *Registry) VerifyAudit() (int, error) {
	n, err := r.verifyAudit()
	if errors.Is(err, ErrTampered) {
		return n, fmt.Errorf("registry: verify audit: %w", err)
	}
	if err != nil {
		return n, fmt.Errorf("registry: verify audit: %w", err)
	}
	return n, nil
}

func (r *Registry) verifyAudit() (int, error) {
	// One read transaction: the head and the records as of one moment.
	tx, err := r.r.Begin()
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // read only
	var hb []byte
	if err := tx.QueryRow(r.q(`SELECT value FROM meta WHERE key = ?`), metaAuditHead).Scan(&hb); err != nil {
		return 0, fmt.Errorf("head: %w", err)
	}
	var h auditHead
	if err := json.Unmarshal(hb, &h); err != nil {
		return 0, fmt.Errorf("%w: head: %v", ErrTampered, err)
	}
	rows, err := tx.Query(`SELECT seq, doc FROM audit ORDER BY seq`)
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	var (
		n    int
		prev string
		want uint64 = 1
	)
	for rows.Next() {
		var key int64
		var doc []byte
		if err := rows.Scan(&key, &doc); err != nil {
			return n, err
		}
		var rec AuditRecord
		if err := json.Unmarshal(doc, &rec); err != nil {
			return n, fmt.Errorf("%w: record %d: %v", ErrTampered, want, err)
		}
		switch {
		case uint64(key) != want || rec.Seq != want:
			return n, fmt.Errorf("%w: record %d: out of sequence", ErrTampered, want)
		case rec.Prev != prev:
			return n, fmt.Errorf("%w: record %d: does not name its predecessor's hash", ErrTampered, want)
		}
		prev = hashchain.Hash(doc)
		n++
		want++
	}
	if err := rows.Err(); err != nil {
		return n, err
	}
	if h.Seq != uint64(n) || h.Hash != prev {
		return n, fmt.Errorf("%w: head names record %d, the log ends at %d", ErrTampered, h.Seq, n)
	}
	return n, nil
}
