package registry

import (
	"context"
	"database/sql"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BoltFile is the bbolt registry of versions before the SQL store, in the
// data directory. Open imports it once and renames it to BoltFile +
// ".imported" (never deletes it).
const BoltFile = "registry.db"

const metaImported = "bbolt_import"

// importBolt imports dir's bbolt registry into an empty store in one
// transaction, marks the store imported and renames the file aside. A
// store that already holds the marker only has the file renamed (a crash
// came between the commit and the rename). A store that holds data but
// no marker is never overwritten: that is an error for a person to look
// at.
func (r *Registry) importBolt(ctx context.Context) error {
	path := filepath.Join(r.dir, BoltFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("registry: import: %w", err)
	}
	var marker []byte
	err := r.w.QueryRowContext(ctx, r.q(`SELECT value FROM meta WHERE key = ?`), metaImported).Scan(&marker)
	switch {
	case err == nil:
		r.log.Warn("bbolt registry was imported before; moving it aside again", "file", path)
		return r.moveBoltAside(path)
	case !errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("registry: import: %w", err)
	}
	// Read-only and with a timeout: an older controller still running on
	// the file holds its lock.
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 2 * time.Second})
	if err != nil {
		return fmt.Errorf("registry: import %s (is an older outpost-fleet still running?): %w", path, err)
	}
	defer db.Close()
	var counts importCounts
	err = r.write(func(tx *sql.Tx) error {
		counts = importCounts{}
		var n int
		if err := tx.QueryRow(`SELECT (SELECT count(*) FROM models) + (SELECT count(*) FROM devices) + (SELECT count(*) FROM rollouts) + (SELECT count(*) FROM tokens)`).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("the store already holds data; move %s aside by hand if it is obsolete", path)
		}
		if err := db.View(func(btx *bolt.Tx) error { return r.importTx(tx, btx, &counts) }); err != nil {
			return err
		}
		return r.putMeta(tx, metaImported, map[string]any{"file": path, "time": time.Now().UTC(), "counts": counts})
	})
	if err != nil {
		return fmt.Errorf("registry: import %s: %w", path, err)
	}
	db.Close()
	r.log.Info("bbolt registry imported", "file", path, "models", counts.Models, "devices", counts.Devices,
		"rollouts", counts.Rollouts, "assignments", counts.Assignments, "credentials", counts.Credentials,
		"tokens", counts.Tokens, "audit", counts.Audit)
	return r.moveBoltAside(path)
}

type importCounts struct {
	Models      int `json:"models"`
	Devices     int `json:"devices"`
	Rollouts    int `json:"rollouts"`
	Assignments int `json:"assignments"`
	Credentials int `json:"credentials"`
	Tokens      int `json:"tokens"`
	Audit       int `json:"audit"`
}

// moveBoltAside renames the imported file to registry.db.imported (or
// .imported-<unix time> when that is taken), never deleting anything.
func (r *Registry) moveBoltAside(path string) error {
	dst := path + ".imported"
	if _, err := os.Stat(dst); err == nil {
		dst = fmt.Sprintf("%s.imported-%d", path, time.Now().Unix())
	}
	if err := os.Rename(path, dst); err != nil {
		return fmt.Errorf("registry: import: move aside: %w", err)
	}
	if d, err := os.Open(r.dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// eachJSON decodes every value of a bbolt bucket (missing: none) into a
// fresh T and hands it to fn.
func eachJSON[T any](btx *bolt.Tx, bucket string, fn func(k []byte, v *T) error) error {
	b := btx.Bucket([]byte(bucket))
	if b == nil {
		return nil
	}
	return b.ForEach(func(k, p []byte) error {
		var v T
		if err := json.Unmarshal(p, &v); err != nil {
			return fmt.Errorf("%s %q: %w", bucket, k, err)
		}
		return fn(k, &v)
	})
}

// importTx copies the buckets of the bbolt registry (JSON values, the
// types of this package) into the store.
func (r *Registry) importTx(tx *sql.Tx, btx *bolt.Tx, c *importCounts) error {
	steps := []func() error{
		func() error {
			return eachJSON(btx, "models", func(_ []byte, m *ModelVersion) error { c.Models++; return r.putModel(tx, m) })
		},
		func() error {
			return eachJSON(btx, "devices", func(_ []byte, d *Device) error {
				c.Devices++
				if _, err := r.lockDevice(tx, d.ID); err != nil {
					return err
				}
				return r.saveDevice(tx, d)
			})
		},
		func() error {
			return eachJSON(btx, "rollouts", func(_ []byte, ro *Rollout) error { c.Rollouts++; return r.putRollout(tx, ro) })
		},
		func() error {
			return eachJSON(btx, "assignments", func(_ []byte, a *Assignment) error { c.Assignments++; return r.putAssignment(tx, a) })
		},
		func() error {
			return eachJSON(btx, "credentials", func(_ []byte, cr *Credential) error { c.Credentials++; return r.putCredential(tx, cr) })
		},
		func() error {
			return eachJSON(btx, "tokens", func(_ []byte, t *Token) error { c.Tokens++; return r.insertToken(tx, t) })
		},
		func() error { return r.importAudit(tx, btx, c) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// importAudit copies the audit chain's stored bytes as they are (their
// hashes are the chain) and its head.
func (r *Registry) importAudit(tx *sql.Tx, btx *bolt.Tx, c *importCounts) error {
	if b := btx.Bucket([]byte("audit")); b != nil {
		err := b.ForEach(func(k, doc []byte) error {
			if len(k) != 8 {
				return fmt.Errorf("audit key %x: want 8 bytes", k)
			}
			var rec AuditRecord
			if err := json.Unmarshal(doc, &rec); err != nil {
				return fmt.Errorf("audit %d: %w", binary.BigEndian.Uint64(k), err)
			}
			c.Audit++
			_, err := r.exec(tx, `INSERT INTO audit (seq, time, doc) VALUES (?, ?, ?)`, int64(binary.BigEndian.Uint64(k)), ts(rec.Time), doc)
			return err
		})
		if err != nil {
			return err
		}
	}
	if m := btx.Bucket([]byte("audit-meta")); m != nil {
		if h := m.Get([]byte("head")); h != nil {
			if _, err := r.exec(tx, `UPDATE meta SET value = ? WHERE key = ?`, h, metaAuditHead); err != nil {
				return err
			}
		}
	}
	return nil
}
