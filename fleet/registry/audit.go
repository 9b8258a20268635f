package registry

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// ErrTampered: an audit record does not match its sequence number, its
// predecessor's hash, or the stored head.
var ErrTampered = errors.New("registry: audit log tampered with")

var keyAuditHead = []byte("head")

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

type auditHead struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

func auditKey(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// AppendAudit adds rec at the end of the fleet audit log, filling Seq, Prev
// and (if zero) Time, and returns the stored record with its Hash.
func (r *Registry) AppendAudit(rec AuditRecord) (*AuditRecord, error) {
	if rec.Time.IsZero() {
		rec.Time = time.Now()
	}
	rec.Time = rec.Time.UTC()
	rec.Hash = ""
	err := r.db.Update(func(tx *bolt.Tx) error {
		b, meta := tx.Bucket(bAudit), tx.Bucket(bAuditMeta)
		var h auditHead
		if p := meta.Get(keyAuditHead); p != nil {
			if err := json.Unmarshal(p, &h); err != nil {
				return err
			}
		}
		rec.Seq, rec.Prev = h.Seq+1, h.Hash
		p, err := json.Marshal(&rec)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(p)
		rec.Hash = hex.EncodeToString(sum[:])
		if err := b.Put(auditKey(rec.Seq), p); err != nil {
			return err
		}
		return putJSON(meta, keyAuditHead, auditHead{Seq: rec.Seq, Hash: rec.Hash})
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
			sum := sha256.Sum256(v)
			rec.Hash = hex.EncodeToString(sum[:])
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
	n := 0
	err := r.db.View(func(tx *bolt.Tx) error {
		var prev string
		var seq uint64
		c := tx.Bucket(bAudit).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var rec AuditRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("%w: record %x: %v", ErrTampered, k, err)
			}
			if rec.Seq != seq+1 || !bytes.Equal(k, auditKey(rec.Seq)) {
				return fmt.Errorf("%w: record %d follows %d", ErrTampered, rec.Seq, seq)
			}
			if rec.Prev != prev {
				return fmt.Errorf("%w: record %d does not follow the hash of record %d", ErrTampered, rec.Seq, seq)
			}
			sum := sha256.Sum256(v)
			prev, seq = hex.EncodeToString(sum[:]), rec.Seq
			n++
		}
		var h auditHead
		if p := tx.Bucket(bAuditMeta).Get(keyAuditHead); p != nil {
			if err := json.Unmarshal(p, &h); err != nil {
				return fmt.Errorf("%w: head: %v", ErrTampered, err)
			}
		}
		if h.Seq != seq || h.Hash != prev {
			return fmt.Errorf("%w: the head names record %d, the log ends at %d", ErrTampered, h.Seq, seq)
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("registry: verify audit: %w", err)
	}
	return n, nil
}
