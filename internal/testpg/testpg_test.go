package testpg

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"testing"
	"time"
)

// TestStartStop starts a cluster, writes and reads through a fresh
// database, stops it, and finds its directory gone and its port closed.
func TestStartStop(t *testing.T) {
	s, err := Start()
	if errors.Is(err, ErrNotInstalled) && !Required() {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url, err := s.CreateDatabase(ctx)
	if err != nil {
		s.Stop()
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", url)
	if err != nil {
		s.Stop()
		t.Fatal(err)
	}
	var got int
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (n int); INSERT INTO t VALUES (42)`); err != nil {
		t.Error(err)
	} else if err := db.QueryRowContext(ctx, `SELECT n FROM t`).Scan(&got); err != nil || got != 42 {
		t.Errorf("got %d, %v; want 42", got, err)
	}
	db.Close()
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cluster directory after Stop: %v", err)
	}
	db, _ = sql.Open("pgx", url)
	defer db.Close()
	if err := db.PingContext(ctx); err == nil {
		t.Error("the server still answers after Stop")
	}
}
