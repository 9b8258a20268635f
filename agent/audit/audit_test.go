package audit

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

func openDB(t *testing.T) *bolt.DB {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "audit.db"), 0o600, nil)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	require.NoError(t, db.Update(Init))
	return db
}

func fill(t *testing.T, db *bolt.DB, n int) []Entry {
	t.Helper()
	var out []Entry
	for i := range n {
		e, err := Append(db, Record{Actor: "updater", Action: "update.activating", Outcome: "ok",
			RolloutID: "r1", Model: "face", Version: int64(i + 1), Detail: "step"})
		require.NoError(t, err)
		out = append(out, e)
	}
	return out
}

func TestAppendAndVerify(t *testing.T) {
	db := openDB(t)
	n, err := Verify(db)
	require.NoError(t, err)
	require.Zero(t, n, "empty trail")
	es := fill(t, db, 5)
	require.Empty(t, es[0].Prev)
	for i := 1; i < len(es); i++ {
		require.Equal(t, es[i-1].Hash, es[i].Prev, "record %d names its predecessor", i)
		require.Equal(t, uint64(i+1), es[i].Seq)
	}
	n, err = Verify(db)
	require.NoError(t, err)
	require.Equal(t, 5, n)
	got, err := List(db, 2, 2)
	require.NoError(t, err)
	require.Len(t, got, 2)
	require.Equal(t, es[2].Hash, got[0].Hash)
	require.Equal(t, int64(4), got[1].Version)
	require.WithinDuration(t, time.Now(), got[0].Time, time.Minute)
}

// TestTamper edits the stored trail the ways an attacker with the file could
// and checks that Verify notices each.
func TestTamper(t *testing.T) {
	edits := []struct {
		name string
		edit func(tx *bolt.Tx) error
	}{
		{"detail changed", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketRecords)
			v := append([]byte(nil), b.Get(seqKey(2))...)
			v = []byte(string(v[:len(v)-1]) + `,"detail":"x"}`)
			return b.Put(seqKey(2), v)
		}},
		{"record rewritten with a fresh hash", func(tx *bolt.Tx) error {
			// Rewrite record 2 as if appended honestly: its own hash is fine,
			// record 3 no longer follows it.
			b := tx.Bucket(bucketRecords)
			r, err := decode(b.Get(seqKey(2)))
			if err != nil {
				return err
			}
			r.Detail = "nothing happened"
			v, err := jsonMarshal(r)
			if err != nil {
				return err
			}
			return b.Put(seqKey(2), v)
		}},
		{"middle record deleted", func(tx *bolt.Tx) error { return tx.Bucket(bucketRecords).Delete(seqKey(3)) }},
		{"last record deleted", func(tx *bolt.Tx) error { return tx.Bucket(bucketRecords).Delete(seqKey(5)) }},
		{"records swapped", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketRecords)
			a, c := append([]byte(nil), b.Get(seqKey(2))...), append([]byte(nil), b.Get(seqKey(4))...)
			if err := b.Put(seqKey(2), c); err != nil {
				return err
			}
			return b.Put(seqKey(4), a)
		}},
		{"garbage record", func(tx *bolt.Tx) error { return tx.Bucket(bucketRecords).Put(seqKey(1), []byte("{")) }},
		{"head moved back", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyHead, []byte(`{"seq":4,"hash":"00"}`))
		}},
	}
	for _, tc := range edits {
		t.Run(tc.name, func(t *testing.T) {
			db := openDB(t)
			fill(t, db, 5)
			require.NoError(t, db.Update(tc.edit))
			_, err := Verify(db)
			require.ErrorIs(t, err, ErrTampered)
		})
	}
}

// FuzzVerify stores arbitrary bytes as the second record of a trail: Verify
// must never panic, and must refuse anything but the genuine record.
func FuzzVerify(f *testing.F) {
	f.Add([]byte(`{"seq":2,"time":"2026-01-01T00:00:00Z","actor":"a","action":"b","outcome":"c","prev":""}`))
	f.Add([]byte("{"))
	f.Add([]byte(`{"seq":2,"unknown":1}`))
	f.Add([]byte{})
	db, err := bolt.Open(filepath.Join(f.TempDir(), "f.db"), 0o600, nil)
	require.NoError(f, err)
	defer db.Close()
	require.NoError(f, db.Update(Init))
	for range 3 {
		_, err := Append(db, Record{Actor: "updater", Action: "x", Outcome: "ok"})
		require.NoError(f, err)
	}
	var genuine []byte
	require.NoError(f, db.View(func(tx *bolt.Tx) error {
		genuine = append([]byte(nil), tx.Bucket(bucketRecords).Get(seqKey(2))...)
		return nil
	}))
	f.Fuzz(func(t *testing.T, v []byte) {
		if len(v) == 0 {
			v = []byte{0}
		}
		err := db.Update(func(tx *bolt.Tx) error {
			if err := tx.Bucket(bucketRecords).Put(seqKey(2), v); err != nil {
				return err
			}
			_, verr := VerifyTx(tx)
			if string(v) != string(genuine) && verr == nil {
				t.Errorf("forged record %q verified", v)
			}
			return errRollbackTx
		})
		require.ErrorIs(t, err, errRollbackTx)
	})
}

var errRollbackTx = errors.New("roll the test transaction back")

func jsonMarshal(r Record) ([]byte, error) { return json.Marshal(r) }
