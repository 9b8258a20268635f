// Package audit keeps the device's audit trail: an append-only list of
// records (what was installed, when, by which rollout, why it was rolled
// back) in a bbolt bucket, each record carrying the sha256 of the one before
// it, so that editing, reordering or deleting a record in the middle breaks
// the chain and Verify finds it.
//
// Records are appended inside the caller's bbolt transaction (AppendTx), so a
// state change and the record of it commit together or not at all.
//
// What a hash chain cannot do on its own: someone who can write the file can
// rewrite the whole chain from the first changed record on, or cut records
// off its end together with the head. The head hash of every record also
// travels to the fleet in telemetry (Entry.Hash), so the fleet holds a copy
// to compare against.
package audit

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

// Errors; callers test with errors.Is.
var (
	// ErrTampered: a record does not match its hash, its predecessor, its
	// sequence number, or the stored head.
	ErrTampered = errors.New("audit: trail tampered with")
)

var (
	bucketRecords = []byte("audit")
	bucketMeta    = []byte("audit-meta")
	keyHead       = []byte("head")
)

// Record is what happened. The caller fills it; Append adds the sequence
// number, the previous hash and (if zero) the time.
type Record struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	// Actor is who acted: "updater" for the device's own decisions, "fleet"
	// for a command it carried out.
	Actor string `json:"actor"`
	// Action is what was done ("update.activating", "command.refused", ...)
	// and Outcome how it ended ("ok", "failed", "refused").
	Action  string `json:"action"`
	Outcome string `json:"outcome"`
	// RolloutID and CommandID name the fleet's request behind it, if any.
	RolloutID string `json:"rollout_id,omitempty"`
	CommandID string `json:"command_id,omitempty"`
	// Model, Version and SHA256 name the model version concerned.
	Model   string `json:"model,omitempty"`
	Version int64  `json:"version,omitempty"`
	SHA256  string `json:"sha256,omitempty"`
	// Detail says why (the reason for a rollback, the error of a failure).
	Detail string `json:"detail,omitempty"`
	// Prev is the hex sha256 of the previous record's stored bytes; empty
	// for the first record.
	Prev string `json:"prev"`
}

// Entry is a stored record with its hash: the hex sha256 of the record's
// stored JSON, which the next record names as Prev.
type Entry struct {
	Record
	Hash string `json:"-"`
}

type head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// Init creates the buckets in tx; call it once when opening the database.
func Init(tx *bolt.Tx) error {
	for _, b := range [][]byte{bucketRecords, bucketMeta} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("audit: init: %w", err)
		}
	}
	return nil
}

func seqKey(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func readHead(tx *bolt.Tx) (head, error) {
	var h head
	m := tx.Bucket(bucketMeta)
	if m == nil {
		return h, fmt.Errorf("audit: not initialised")
	}
	if b := m.Get(keyHead); b != nil {
		if err := json.Unmarshal(b, &h); err != nil {
			return h, fmt.Errorf("%w: head: %v", ErrTampered, err)
		}
	}
	return h, nil
}

// AppendTx appends r inside tx and returns the stored entry. It does not
// read the chain back: Verify does that.
func AppendTx(tx *bolt.Tx, r Record) (Entry, error) {
	h, err := readHead(tx)
	if err != nil {
		return Entry{}, err
	}
	r.Seq = h.Seq + 1
	r.Prev = h.Hash
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Time = r.Time.UTC()
	b, err := json.Marshal(r)
	if err != nil {
		return Entry{}, fmt.Errorf("audit: append: %w", err)
	}
	sum := sha256.Sum256(b)
	e := Entry{Record: r, Hash: hex.EncodeToString(sum[:])}
	if err := tx.Bucket(bucketRecords).Put(seqKey(r.Seq), b); err != nil {
		return Entry{}, fmt.Errorf("audit: append: %w", err)
	}
	hb, _ := json.Marshal(head{Seq: r.Seq, Hash: e.Hash})
	if err := tx.Bucket(bucketMeta).Put(keyHead, hb); err != nil {
		return Entry{}, fmt.Errorf("audit: append: %w", err)
	}
	return e, nil
}

// Append appends r in a transaction of its own.
func Append(db *bolt.DB, r Record) (Entry, error) {
	var e Entry
	err := db.Update(func(tx *bolt.Tx) error {
		var err error
		e, err = AppendTx(tx, r)
		return err
	})
	return e, err
}

// VerifyTx walks the whole chain in tx and returns the number of records. An
// error wrapping ErrTampered names the first record that does not fit.
func VerifyTx(tx *bolt.Tx) (int, error) {
	h, err := readHead(tx)
	if err != nil {
		return 0, err
	}
	c := tx.Bucket(bucketRecords).Cursor()
	var (
		n    int
		prev string
		want uint64 = 1
	)
	for k, v := c.First(); k != nil; k, v = c.Next() {
		r, err := decode(v)
		if err != nil {
			return n, fmt.Errorf("%w: record %d: %v", ErrTampered, want, err)
		}
		switch {
		case len(k) != 8 || binary.BigEndian.Uint64(k) != want || r.Seq != want:
			return n, fmt.Errorf("%w: record %d: out of sequence", ErrTampered, want)
		case r.Prev != prev:
			return n, fmt.Errorf("%w: record %d: does not follow record %d", ErrTampered, want, want-1)
		}
		sum := sha256.Sum256(v)
		prev = hex.EncodeToString(sum[:])
		want++
		n++
	}
	if uint64(n) != h.Seq || prev != h.Hash {
		return n, fmt.Errorf("%w: %d records end in %.12s, head says %d ending in %.12s", ErrTampered, n, prev, h.Seq, h.Hash)
	}
	return n, nil
}

// Verify walks the whole chain; see VerifyTx.
func Verify(db *bolt.DB) (int, error) {
	var n int
	err := db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = VerifyTx(tx)
		return err
	})
	return n, err
}

func decode(v []byte) (Record, error) {
	var r Record
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.DisallowUnknownFields()
	err := dec.Decode(&r)
	return r, err
}

// List returns up to limit entries after sequence number after, oldest
// first (limit <= 0: all).
func List(db *bolt.DB, after uint64, limit int) ([]Entry, error) {
	var out []Entry
	err := db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketRecords)
		if b == nil {
			return fmt.Errorf("audit: not initialised")
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			r, err := decode(v)
			if err != nil {
				return fmt.Errorf("%w: record %x: %v", ErrTampered, k, err)
			}
			sum := sha256.Sum256(v)
			out = append(out, Entry{Record: r, Hash: hex.EncodeToString(sum[:])})
		}
		return nil
	})
	return out, err
}
