// Package hashchain keeps an append-only list of records in a bbolt bucket,
// each naming the hex sha256 of the stored bytes of the one before it, with
// the last record's number and hash (the head) kept in a second bucket. An
// edit, a reorder or a removal anywhere, or a cut at the end, breaks the
// chain and Verify finds it. The device's audit trail (agent/audit) and the
// fleet's audit log (fleet/registry) are both such chains.
//
// The records' encoding is the caller's: Append asks it for the bytes of
// the record numbered seq naming prev, Verify for the number and prev a
// stored record holds.
package hashchain

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// ErrTampered: a record does not match its number, its predecessor's hash,
// or the stored head.
var ErrTampered = errors.New("hashchain: chain tampered with")

var keyHead = []byte("head")

// Chain names the two buckets of a chain.
type Chain struct {
	Records, Meta []byte
}

type head struct {
	Seq  uint64 `json:"seq"`
	Hash string `json:"hash"`
}

// Key is the bucket key of record seq (big-endian, so in order).
func Key(seq uint64) []byte { return binary.BigEndian.AppendUint64(nil, seq) }

// Hash is the hash a record's successor names: hex sha256 of its stored
// bytes.
func Hash(stored []byte) string {
	sum := sha256.Sum256(stored)
	return hex.EncodeToString(sum[:])
}

// Init creates the buckets in tx.
func (c Chain) Init(tx *bolt.Tx) error {
	for _, b := range [][]byte{c.Records, c.Meta} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("hashchain: init: %w", err)
		}
	}
	return nil
}

func (c Chain) head(tx *bolt.Tx) (head, error) {
	var h head
	m := tx.Bucket(c.Meta)
	if m == nil || tx.Bucket(c.Records) == nil {
		return h, errors.New("hashchain: not initialised")
	}
	if b := m.Get(keyHead); b != nil {
		if err := json.Unmarshal(b, &h); err != nil {
			return h, fmt.Errorf("%w: head: %v", ErrTampered, err)
		}
	}
	return h, nil
}

// Append stores, inside tx, the record encode makes for number seq (one
// past the head) naming prev (the head's hash, "" for the first), and
// moves the head to it. It returns the record's number and hash.
func (c Chain) Append(tx *bolt.Tx, encode func(seq uint64, prev string) ([]byte, error)) (uint64, string, error) {
	h, err := c.head(tx)
	if err != nil {
		return 0, "", err
	}
	seq := h.Seq + 1
	b, err := encode(seq, h.Hash)
	if err != nil {
		return 0, "", fmt.Errorf("hashchain: append: %w", err)
	}
	hash := Hash(b)
	if err := tx.Bucket(c.Records).Put(Key(seq), b); err != nil {
		return 0, "", fmt.Errorf("hashchain: append: %w", err)
	}
	hb, _ := json.Marshal(head{Seq: seq, Hash: hash})
	if err := tx.Bucket(c.Meta).Put(keyHead, hb); err != nil {
		return 0, "", fmt.Errorf("hashchain: append: %w", err)
	}
	return seq, hash, nil
}

// Verify walks the whole chain in tx and returns the number of records; an
// error wrapping ErrTampered names the first record that does not fit.
// decode returns the number and prev a stored record holds.
func (c Chain) Verify(tx *bolt.Tx, decode func(stored []byte) (seq uint64, prev string, err error)) (int, error) {
	h, err := c.head(tx)
	if err != nil {
		return 0, err
	}
	cur := tx.Bucket(c.Records).Cursor()
	var (
		n    int
		prev string
		want uint64 = 1
	)
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		seq, p, err := decode(v)
		if err != nil {
			return n, fmt.Errorf("%w: record %d: %v", ErrTampered, want, err)
		}
		switch {
		case len(k) != 8 || binary.BigEndian.Uint64(k) != want || seq != want:
			return n, fmt.Errorf("%w: record %d: out of sequence", ErrTampered, want)
		case p != prev:
			return n, fmt.Errorf("%w: record %d: does not follow record %d", ErrTampered, want, want-1)
		}
		prev = Hash(v)
		want++
		n++
	}
	if uint64(n) != h.Seq || prev != h.Hash {
		return n, fmt.Errorf("%w: %d records end in %.12s, head says %d ending in %.12s", ErrTampered, n, prev, h.Seq, h.Hash)
	}
	return n, nil
}
