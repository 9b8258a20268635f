package hashchain

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

type rec struct {
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"`
	Note string `json:"note"`
}

func decode(v []byte) (uint64, string, error) {
	var r rec
	err := json.Unmarshal(v, &r)
	return r.Seq, r.Prev, err
}

// TestChain appends records and verifies them, then edits the stored
// bytes and the head the way someone with write access to the file would.
func TestChain(t *testing.T) {
	c := Chain{Records: []byte("r"), Meta: []byte("m")}
	tests := []struct {
		name   string
		tamper func(tx *bolt.Tx) error
	}{
		{"none", nil},
		{"record edited", func(tx *bolt.Tx) error {
			return tx.Bucket(c.Records).Put(Key(1), []byte(`{"seq":1,"prev":"","note":"x"}`))
		}},
		{"record deleted", func(tx *bolt.Tx) error { return tx.Bucket(c.Records).Delete(Key(2)) }},
		{"last cut", func(tx *bolt.Tx) error { return tx.Bucket(c.Records).Delete(Key(3)) }},
		{"head rewound", func(tx *bolt.Tx) error { return tx.Bucket(c.Meta).Put(keyHead, []byte(`{"seq":2,"hash":"00"}`)) }},
		{"garbage", func(tx *bolt.Tx) error { return tx.Bucket(c.Records).Put(Key(2), []byte("{")) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, err := bolt.Open(filepath.Join(t.TempDir(), "db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.View(func(tx *bolt.Tx) error {
				_, err := c.Verify(tx, decode)
				return err
			}); err == nil || errors.Is(err, ErrTampered) {
				t.Fatalf("uninitialised: got %v, want a plain error", err)
			}
			var hashes []string
			err = db.Update(func(tx *bolt.Tx) error {
				if err := c.Init(tx); err != nil {
					return err
				}
				for _, note := range []string{"a", "b", "c"} {
					seq, h, err := c.Append(tx, func(seq uint64, prev string) ([]byte, error) {
						if want := ""; len(hashes) > 0 {
							want = hashes[len(hashes)-1]
							if prev != want {
								t.Errorf("record %d: prev %q, want %q", seq, prev, want)
							}
						}
						return json.Marshal(rec{Seq: seq, Prev: prev, Note: note})
					})
					if err != nil {
						return err
					}
					if seq != uint64(len(hashes)+1) {
						t.Errorf("got seq %d, want %d", seq, len(hashes)+1)
					}
					hashes = append(hashes, h)
				}
				if tt.tamper != nil {
					return tt.tamper(tx)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			var n int
			err = db.View(func(tx *bolt.Tx) error {
				var err error
				n, err = c.Verify(tx, decode)
				return err
			})
			if tt.tamper == nil {
				if err != nil || n != 3 {
					t.Fatalf("intact: got %d, %v; want 3, nil", n, err)
				}
				return
			}
			if !errors.Is(err, ErrTampered) {
				t.Fatalf("got %v, want ErrTampered", err)
			}
		})
	}
}
