package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
)

// Backup writes a consistent copy of the embedded store file (SQLite)
// to out, while controllers keep writing to it: SQLite's VACUUM INTO reads
// one snapshot of the database (a read transaction in WAL mode, which
// never blocks the writer) and writes it compacted to a new file. The copy
// is written beside out, synced and renamed, so out is either the whole
// copy or absent; an existing out is an error. PostgreSQL stores are
// backed up with pg_dump (ErrNotEmbedded here). Restore: stop the
// controller, put the copy in the data directory as fleet.db (removing
// fleet.db-wal and fleet.db-shm), start it.
func Backup(ctx context.Context, store, out string) error {
	if isPostgres(store) {
		return fmt.Errorf("%w: back PostgreSQL up with pg_dump", ErrNotEmbedded)
	}
	file := sqliteFile(store)
	if _, err := os.Stat(file); err != nil {
		return fmt.Errorf("registry: backup: %w", err)
	}
	if _, err := os.Stat(out); err == nil {
		return fmt.Errorf("registry: backup: %s exists", out)
	}
	tmp := filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".tmp")
	_ = os.Remove(tmp) // a leftover of an interrupted backup
	q := url.Values{"_pragma": {"busy_timeout(10000)"}}
	db, err := sql.Open("sqlite", "file:"+file+"?"+q.Encode())
	if err != nil {
		return fmt.Errorf("registry: backup: %w", err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, `VACUUM INTO ?`, tmp); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("registry: backup %s: %w", file, err)
	}
	if err := syncRename(tmp, out); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("registry: backup: %w", err)
	}
	return nil
}

// syncRename syncs tmp, renames it to dst and syncs the directory.
func syncRename(tmp, dst string) error {
	f, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = errors.Join(f.Sync(), f.Close())
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(dst))
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// Backup writes a consistent copy of this embedded store to out (see the
// package function Backup).
func (r *Registry) Backup(ctx context.Context, out string) error {
	if r.file == "" {
		return fmt.Errorf("%w: back PostgreSQL up with pg_dump", ErrNotEmbedded)
	}
	return Backup(ctx, r.file, out)
}
