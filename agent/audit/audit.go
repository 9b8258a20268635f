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
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/internal/hashchain"
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
	keyHead       = []byte("head") // where hashchain keeps the head in bucketMeta
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

// chain is where the trail lives: the records and the head.
var chain = hashchain.Chain{Records: bucketRecords, Meta: bucketMeta}

// Init creates the buckets in tx; call it once when opening the database.
func Init(tx *bolt.Tx) error {
	if err := chain.Init(tx); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

func seqKey(n uint64) []byte { return hashchain.Key(n) }

// chainErr turns the chain's errors into this package's.
func chainErr(err error) error {
	if errors.Is(err, hashchain.ErrTampered) {
		return fmt.Errorf("%w: %w", ErrTampered, err)
	}
	return fmt.Errorf("audit: %w", err)
}

// AppendTx appends r inside tx and returns the stored entry. It does not
// read the chain back: Verify does that.
func AppendTx(tx *bolt.Tx, r Record) (Entry, error) {
	if r.Time.IsZero() {
		r.Time = time.Now()
	}
	r.Time = r.Time.UTC()
	_, hash, err := chain.Append(tx, func(seq uint64, prev string) ([]byte, error) {
		r.Seq, r.Prev = seq, prev
		return json.Marshal(r)
	})
	if err != nil {
		return Entry{}, chainErr(err)
	}
	return Entry{Record: r, Hash: hash}, nil
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
	n, err := chain.Verify(tx, func(v []byte) (uint64, string, error) {
		r, err := decode(v)
		return r.Seq, r.Prev, err
	})
	if err != nil {
		return n, chainErr(err)
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
			out = append(out, Entry{Record: r, Hash: hashchain.Hash(v)})
		}
		return nil
	})
	return out, err
}
