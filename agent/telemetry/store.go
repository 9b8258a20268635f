package telemetry

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Bucket layout of the queue file. Records wait in one bucket per priority,
// keyed by their big-endian sequence number, so the oldest low-priority record
// is the first key of its bucket and the uplink merges the three in sequence
// order.
var (
	bucketMeta       = []byte("meta")
	bucketQuarantine = []byte("quarantine")
	bucketByPrio     = [3][]byte{[]byte("q-low"), []byte("q-normal"), []byte("q-critical")}

	keyEpoch = []byte("epoch") // 8 bytes: random id of this queue file
	keyNext  = []byte("next")  // 8 bytes: next sequence number to give out
	keyDrops = []byte("drops") // 8 bytes per protocol.DropReason: cumulative counters
)

const numPrio = 3

// seqKey is the bucket key of sequence number seq.
func seqKey(seq uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, seq)
	return k
}

// recordOverhead is added to a record's body length when counting the bytes
// it holds on disk: its key plus bbolt's per-element header.
const recordOverhead = 8 + 16

// bucketState is the in-memory account of one priority bucket, kept equal to
// what is on disk by updating it only after a transaction commits.
type bucketState struct {
	count int
	bytes int64
	head  time.Time // time of the first (oldest) record; zero if empty
}

// openDB opens the queue file at path and checks it. A file that bbolt
// refuses, that fails its consistency check, or that makes bbolt panic is
// reported with errCorrupt so the caller moves it aside; a lock held by another
// process or a permission problem is not corruption.
func openDB(path string) (db *bolt.DB, err error) {
	defer func() {
		if p := recover(); p != nil {
			if db != nil {
				_ = db.Close()
			}
			db, err = nil, fmt.Errorf("telemetry: open %s: panic %v: %w", path, p, errCorrupt)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout: 2 * time.Second,
		// The freelist is rebuilt from the file at open instead of written at
		// every commit: cheaper commits, and it does not weaken durability.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		// A lock held elsewhere, a permission problem or an I/O error (no
		// space, read-only file system) says nothing about the file's content:
		// moving a healthy queue aside for it would lose what it holds.
		var errno syscall.Errno
		if errors.Is(err, berrors.ErrTimeout) || errors.Is(err, fs.ErrPermission) ||
			errors.Is(err, fs.ErrNotExist) || errors.As(err, &errno) {
			return nil, fmt.Errorf("telemetry: open %s: %w", path, err)
		}
		return nil, fmt.Errorf("telemetry: open %s: %v: %w", path, err, errCorrupt)
	}
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			return err
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("telemetry: check %s: %v: %w", path, err, errCorrupt)
	}
	return db, nil
}

// errCorrupt marks a queue file that must be moved aside. Internal: callers of
// the package see a health warning and an audit record instead.
var errCorrupt = errors.New("corrupt queue file")

// keepCorrupt is how many moved-aside queue files are kept for inspection; older
// ones are removed so a disk that keeps corrupting files does not fill up.
const keepCorrupt = 3

// moveAside renames a corrupt queue file to path.corrupt-<time> and removes all
// but the newest keepCorrupt such files. It returns the new name.
func moveAside(path string, now time.Time) (string, error) {
	aside := fmt.Sprintf("%s.corrupt-%s", path, now.UTC().Format("20060102T150405.000000000Z"))
	if err := os.Rename(path, aside); err != nil {
		return "", fmt.Errorf("telemetry: move corrupt queue aside: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync() // make the rename durable before a new file appears
		_ = d.Close()
	}
	old, _ := filepath.Glob(path + ".corrupt-*")
	sort.Strings(old)
	for len(old) > keepCorrupt {
		_ = os.Remove(old[0])
		old = old[1:]
	}
	return aside, nil
}

// meta is what the meta bucket holds.
type meta struct {
	epoch uint64
	next  uint64
	drops protocol.DropCounts
}

// initDB creates the buckets and the meta keys of a new file, and loads the
// meta and per-bucket accounts of an existing one.
func initDB(db *bolt.DB) (m meta, st [numPrio]bucketState, quarantined int, err error) {
	defer func() {
		// bbolt panics on some damaged pages its check did not reach.
		if p := recover(); p != nil {
			err = fmt.Errorf("telemetry: init queue: panic %v: %w", p, errCorrupt)
		}
	}()
	err = db.Update(func(tx *bolt.Tx) error {
		mb, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		for _, name := range append(bucketByPrio[:], bucketQuarantine) {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if v := mb.Get(keyEpoch); len(v) == 8 {
			m.epoch = binary.BigEndian.Uint64(v)
		} else {
			var b [8]byte
			if _, err := rand.Read(b[:]); err != nil {
				return err
			}
			b[0] &= 0x7f // keep it a positive int64 for receivers in other languages
			m.epoch = binary.BigEndian.Uint64(b[:])
			if err := mb.Put(keyEpoch, b[:]); err != nil {
				return err
			}
		}
		m.next = 1
		if v := mb.Get(keyNext); len(v) == 8 {
			m.next = binary.BigEndian.Uint64(v)
		}
		m.drops = decodeDrops(mb.Get(keyDrops))
		for p := range numPrio {
			b := tx.Bucket(bucketByPrio[p])
			c := b.Cursor()
			for k, v := c.First(); k != nil; k, v = c.Next() {
				if st[p].count == 0 {
					_, st[p].head, _ = protocol.PeekRecord(v)
				}
				st[p].count++
				st[p].bytes += int64(len(v) + recordOverhead)
				// Never give out a number that is already in the file, even if
				// the meta key were behind.
				if s := binary.BigEndian.Uint64(k); s >= m.next {
					m.next = s + 1
				}
			}
		}
		quarantined = tx.Bucket(bucketQuarantine).Stats().KeyN
		return nil
	})
	if err != nil {
		return meta{}, st, 0, fmt.Errorf("telemetry: init queue: %w", err)
	}
	return m, st, quarantined, nil
}

func encodeDrops(d protocol.DropCounts) []byte {
	b := make([]byte, 8*len(d))
	for i, c := range d {
		binary.BigEndian.PutUint64(b[8*i:], c)
	}
	return b
}

func decodeDrops(b []byte) protocol.DropCounts {
	var d protocol.DropCounts
	for i := range d {
		if len(b) >= 8*(i+1) {
			d[i] = binary.BigEndian.Uint64(b[8*i:])
		}
	}
	return d
}

// putMeta writes next and drops in tx.
func putMeta(tx *bolt.Tx, next uint64, drops protocol.DropCounts) error {
	mb := tx.Bucket(bucketMeta)
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], next)
	if err := mb.Put(keyNext, n[:]); err != nil {
		return err
	}
	return mb.Put(keyDrops, encodeDrops(drops))
}

// quarantineEntry is a record set aside: its sequence number (0 if it never
// got one), why, and its encoded body or a description of it.
func quarantineValue(seq uint64, reason string, body []byte) []byte {
	v := binary.AppendUvarint(nil, seq)
	v = binary.AppendUvarint(v, uint64(len(reason)))
	v = append(v, reason...)
	return append(v, body...)
}

// putQuarantine adds an entry to the quarantine bucket and trims the bucket to
// maxBytes, oldest first. It returns the change in its number of entries.
func putQuarantine(tx *bolt.Tx, value []byte, maxBytes int64) (int, error) {
	b := tx.Bucket(bucketQuarantine)
	id, err := b.NextSequence()
	if err != nil {
		return 0, err
	}
	newest := seqKey(id)
	if err := b.Put(newest, value); err != nil {
		return 0, err
	}
	delta := 1
	var total int64
	c := b.Cursor()
	for k, v := c.Last(); k != nil; k, v = c.Prev() {
		total += int64(len(k) + len(v))
	}
	var drop [][]byte
	for k, v := c.First(); k != nil && total > maxBytes; k, v = c.Next() {
		if bytes.Equal(k, newest) {
			break // always keep the newest
		}
		drop = append(drop, k)
		total -= int64(len(k) + len(v))
	}
	for _, k := range drop {
		if err := b.Delete(k); err != nil {
			return 0, err
		}
		delta--
	}
	return delta, nil
}

// QuarantineEntry is a record set aside for inspection.
type QuarantineEntry struct {
	Seq    uint64 // its sequence number; 0 if it never got one
	Reason string // why it was set aside
	Body   []byte // the encoded record (protocol.DecodeRecord), or a description if it could not be encoded
}

// Quarantine lists the quarantine bucket, oldest first, for the agent's
// status endpoint and for people. It returns ErrClosed unless Run has the
// file open.
func (q *Queue) Quarantine() ([]QuarantineEntry, error) {
	q.mu.Lock()
	db := q.openDB
	q.mu.Unlock()
	if db == nil {
		return nil, fmt.Errorf("telemetry: quarantine: %w", ErrClosed)
	}
	var out []QuarantineEntry
	err := db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketQuarantine).ForEach(func(_, v []byte) error {
			seq, n := binary.Uvarint(v)
			if n <= 0 {
				return nil
			}
			v = v[n:]
			l, n := binary.Uvarint(v)
			if n <= 0 || uint64(len(v)-n) < l {
				return nil
			}
			out = append(out, QuarantineEntry{
				Seq:    seq,
				Reason: string(v[n : n+int(l)]),
				Body:   append([]byte(nil), v[n+int(l):]...),
			})
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("telemetry: quarantine: %w", err)
	}
	return out, nil
}
