package registry

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	"modernc.org/sqlite"               // the "sqlite" database/sql driver, pure Go
)

// engine is what differs between SQLite and PostgreSQL; the SQL itself is
// the same, written with ? placeholders.
type engine struct {
	name string // "sqlite" or "postgres"
	// forUpdate ends a SELECT whose rows a write transaction will change:
	// PostgreSQL locks them (several replicas write); SQLite's write
	// transactions are already exclusive (BEGIN IMMEDIATE).
	forUpdate string
	rebind    func(string) string
}

var (
	sqliteEngine   = engine{name: "sqlite", rebind: func(q string) string { return q }}
	postgresEngine = engine{name: "postgres", forUpdate: " FOR UPDATE", rebind: dollarParams}
)

// dollarParams turns ? placeholders into $1, $2... (our SQL has no ? in
// literals).
func dollarParams(q string) string {
	if !strings.Contains(q, "?") {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

//go:embed schema
var schemaFS embed.FS

// migration is one numbered schema step of an engine.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations lists the engine's schema steps in order; the file names are
// NNNN_what.sql and every engine has the same numbers.
func migrations(eng string) ([]migration, error) {
	dir := path.Join("schema", eng)
	ents, err := fs.ReadDir(schemaFS, dir)
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range ents {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("registry: schema file %s: want NNNN_name.sql", e.Name())
		}
		b, err := fs.ReadFile(schemaFS, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), sql: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("registry: schema %s: version %d, want %d", m.name, m.version, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the schema version this build migrates stores to.
func SchemaVersion() int {
	ms, err := migrations("sqlite")
	if err != nil {
		panic(err) // embedded at build time; TestMigrations covers it
	}
	return len(ms)
}

// migrationLock is the PostgreSQL advisory lock key that serialises
// replicas migrating the same database at start ("outpost" in ASCII).
const migrationLock = 0x6f7574706f7374

// migrate applies the engine's schema steps above the store's version, up
// to target (-1: all), each in its own transaction together with its row in
// schema_migrations. A store newer than this build is an error: an older
// binary must not write to a schema it does not know.
//
// A store already at target is only read: no write transaction, so a tool
// that opens the store beside a running serve (samples export) does not
// wait for the writer's lock, which a busy SQLite writer in another process
// can hold past busy_timeout.
func migrate(ctx context.Context, db *sql.DB, eng engine, target int) error {
	ms, err := migrations(eng.name)
	if err != nil {
		return err
	}
	if target < 0 {
		target = len(ms)
	}
	if v, err := schemaVersion(ctx, db); err == nil && v >= target {
		return tooNew(v, len(ms))
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT NOT NULL PRIMARY KEY, applied BIGINT NOT NULL)`); err != nil {
		return fmt.Errorf("registry: migrate: %w", err)
	}
	for _, m := range ms[:target] {
		err := inTx(ctx, db, func(tx *sql.Tx) error {
			if eng.name == "postgres" {
				if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
					return err
				}
			}
			var n int
			if err := tx.QueryRowContext(ctx, eng.rebind(`SELECT count(*) FROM schema_migrations WHERE version = ?`), m.version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				return nil
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, eng.rebind(`INSERT INTO schema_migrations (version, applied) VALUES (?, ?)`), m.version, time.Now().UnixNano())
			return err
		})
		if err != nil {
			return fmt.Errorf("registry: migrate %s %s: %w", eng.name, m.name, err)
		}
	}
	v, err := schemaVersion(ctx, db)
	if err != nil {
		return err
	}
	return tooNew(v, len(ms))
}

// tooNew is ErrSchemaTooNew for a store at schema v when this build knows
// known steps, nil when it knows them all.
func tooNew(v, known int) error {
	if v > known {
		return fmt.Errorf("%w: store at schema %d, this build knows %d", ErrSchemaTooNew, v, known)
	}
	return nil
}

// checkSchema fails unless the store is at this build's schema, writing
// nothing (Options.NoMigrate).
func checkSchema(ctx context.Context, db *sql.DB, eng engine) error {
	ms, err := migrations(eng.name)
	if err != nil {
		return err
	}
	v, err := schemaVersion(ctx, db)
	switch {
	case err != nil:
		return fmt.Errorf("%w: %v (a store serve has never opened?)", ErrSchemaTooOld, err)
	case v < len(ms):
		return fmt.Errorf("%w: store at schema %d, this build's is %d: use the outpost-fleet that serve runs, or start serve of this version once to migrate it", ErrSchemaTooOld, v, len(ms))
	}
	return tooNew(v, len(ms))
}

func schemaVersion(ctx context.Context, db *sql.DB) (int, error) {
	var v sql.NullInt64
	if err := db.QueryRowContext(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("registry: schema version: %w", err)
	}
	return int(v.Int64), nil
}

func inTx(ctx context.Context, db *sql.DB, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// isPostgres reports whether a store selector names PostgreSQL.
func isPostgres(store string) bool {
	return strings.HasPrefix(store, "postgres://") || strings.HasPrefix(store, "postgresql://")
}

// sqliteFile is the file of an embedded store selector (PATH or sqlite:PATH).
func sqliteFile(store string) string { return strings.TrimPrefix(store, "sqlite:") }

// openEngine opens the store named by store: a postgres:// or
// postgresql:// URL, or a SQLite file path (sqlite:PATH also works). It
// returns the pool writes go through and the pool reads go through (the
// same one on PostgreSQL).
func openEngine(store string) (eng engine, w, r *sql.DB, err error) {
	if isPostgres(store) {
		db, err := sql.Open("pgx", store)
		if err != nil {
			return eng, nil, nil, fmt.Errorf("registry: open postgres: %w", err)
		}
		db.SetMaxOpenConns(16)
		db.SetMaxIdleConns(16)
		db.SetConnMaxIdleTime(5 * time.Minute)
		return postgresEngine, db, db, nil
	}
	file := sqliteFile(store)
	// WAL: readers never wait for the writer; synchronous FULL: a returned
	// write survives a power cut, not only a crash of the process.
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	wq := url.Values{"_txlock": {"immediate"}}
	for k, v := range q {
		wq[k] = v
	}
	// One writer connection: SQLite has one writer at a time anyway, and
	// waiting here instead of in busy_timeout keeps the order fair.
	if w, err = sql.Open("sqlite", "file:"+file+"?"+wq.Encode()); err != nil {
		return eng, nil, nil, fmt.Errorf("registry: open sqlite: %w", err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxIdleTime(0)
	w.SetConnMaxLifetime(0)
	// The write connection first, so WAL mode is set before readers open.
	if err := w.Ping(); err != nil {
		w.Close()
		return eng, nil, nil, fmt.Errorf("registry: open sqlite %s: %w", file, err)
	}
	q.Add("_pragma", "query_only(1)")
	if r, err = sql.Open("sqlite", "file:"+file+"?"+q.Encode()); err != nil {
		w.Close()
		return eng, nil, nil, fmt.Errorf("registry: open sqlite: %w", err)
	}
	r.SetMaxOpenConns(8)
	r.SetMaxIdleConns(8)
	return sqliteEngine, w, r, nil
}

// retryable reports whether a transaction failed only because another one
// won a race and may simply run again: on PostgreSQL a serialization
// failure or deadlock; on SQLite a writer that stayed busy past
// busy_timeout (another process holding the file's write lock: SQLite's
// busy wait is not fair, and one process's writer can starve another's).
func retryable(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "40001" || pe.Code == "40P01"
	}
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code()&0xff == sqliteBusy
}

// sqliteBusy is SQLITE_BUSY, the primary result code of a lock not taken.
const sqliteBusy = 5

// queryCache keeps rebound queries so the ? to $n rewrite runs once each.
type queryCache struct {
	eng engine
	m   sync.Map // string -> string
}

func (c *queryCache) q(query string) string {
	if c.eng.name != "postgres" {
		return query
	}
	if v, ok := c.m.Load(query); ok {
		return v.(string)
	}
	v := c.eng.rebind(query)
	c.m.Store(query, v)
	return v
}
