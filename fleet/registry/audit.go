package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/internal/hashchain"
	bolt "go.etcd.io/bbolt"
)

// ErrTampered: an audit record does not match its sequence number, its
// predecessor's hash, or the stored head.
var ErrTampered = errors.New("registry: audit log tampered with")

// auditChain is the audit log: records and head (internal/hashchain, the
// same chain as the device's audit trail).
var auditChain = hashchain.Chain{Records: bAudit, Meta: bAuditMeta}

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
	Prev      string    `json:"prev"`
	// Hash is the hex sha256 of the record's stored JSON (not stored in
	// it); the next record names it as Prev.
	Hash string `json:"hash,omitempty"`
}

func auditKey(seq uint64) []byte { return hashchain.Key(seq) }

// AppendAudit adds rec at the end of the fleet audit log, filling Seq, Prev
// and (if zero) Time, and returns the stored record with its Hash.
func (r *Registry) AppendAudit(rec AuditRecord) (*AuditRecord, error) {
	if rec.Time.IsZero() {
		rec.Time = time.Now()
	}
	rec.Time = rec.Time.UTC()
	rec.Hash = ""
	err := r.db.Update(func(tx *bolt.Tx) error {
		_, hash, err := auditChain.Append(tx, func(seq uint64, prev string) ([]byte, error) {
			rec.Seq, rec.Prev = seq, prev
			return json.Marshal(&rec)
		})
		rec.Hash = hash
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("registry: append audit: %w", err)
	}
	return &rec, nil
}

// Audit returns up to limit records (0: all) at or after since, oldest
// first, each with its Hash.
func (r *Registry) Audit(since time.Time, limit int) ([]AuditRecord, error) {
	out := []AuditRecord{}
	err := r.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bAudit).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var rec AuditRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			if rec.Time.Before(since) {
				continue
			}
			rec.Hash = hashchain.Hash(v)
			out = append(out, rec)
			if limit > 0 && len(out) == limit {
				break
			}
		}
		return nil
	})
	if err != nil {
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
	var n int
	err := r.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = auditChain.Verify(tx, func(v []byte) (uint64, string, error) {
			var rec AuditRecord
			err := json.Unmarshal(v, &rec)
			return rec.Seq, rec.Prev, err
		})
		return err
	})
	if errors.Is(err, hashchain.ErrTampered) {
		return n, fmt.Errorf("registry: verify audit: %w: %w", ErrTampered, err)
	}
	if err != nil {
		return n, fmt.Errorf("registry: verify audit: %w", err)
	}
	return n, nil
}
