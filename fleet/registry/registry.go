// Package registry is the fleet controller's durable state: model versions
// (signed release and a blob file per artifact), devices (labels, models,
// update state, telemetry counters), telemetry records, rollouts and each
// rollout's per-device assignments, the devices' broker credentials
// (hashes only, see credentials.go), admin API tokens (hashes only,
// tokens.go), the hash-chained audit log of admin changes (audit.go) and
// the leases that elect one replica to run the rollout engine (lease.go).
//
// One contract, two engines (engine.go): SQLite through the pure-Go
// modernc.org/sqlite, embedded, the default; PostgreSQL through pgx, for
// several controller replicas on one database. The same SQL serves both;
// the schema is versioned (schema/<engine>/NNNN_*.sql, embedded) and
// migrated on Open.
//
//	DATA/fleet.db, fleet.db-wal, fleet.db-shm   the SQLite store (default)
//	DATA/blobs/<sha256>                         model artifacts, written once, verified;
//	                                            on PostgreSQL also in the database (blobs.go)
//	DATA/registry.db                            a bbolt store of an older version: imported
//	                                            on Open, then renamed registry.db.imported
//
// Every write is one transaction, synced (SQLite: WAL, synchronous=FULL);
// a crash loses nothing that a method returned for. Read-modify-write
// methods (UpdateDevice, UpdateRollout, UpdateAssignment, RecordBatch,
// AppendAudit) read and write in one transaction that holds the rows it
// changes: SQLite's write transactions are exclusive (BEGIN IMMEDIATE, one
// writer connection), PostgreSQL's lock them (SELECT ... FOR UPDATE, the
// row inserted first when it may be new), so two replicas never lose each
// other's updates. Their callbacks may run more than once (a PostgreSQL
// transaction that lost a race is run again) and must only change the
// value they are given.
//
// Crash points:
//   - during a migration: each schema step commits with its version row, so
//     a crash leaves the store at the previous version and the next Open
//     applies the step again;
//   - during the bbolt import: the import is one transaction that also
//     writes the import marker; a crash before it commits leaves the store
//     empty and registry.db in place, so the next Open imports again;
//   - after the import commits, before registry.db is renamed: the marker
//     is found and the file is only renamed;
//   - writing a blob: atomicfile (temporary file, fsync, rename), and the
//     model row is written after the blob, so a row never names a missing
//     blob.
package registry

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// Errors; callers test with errors.Is.
var (
	// ErrNotFound: no such model version, device, rollout, assignment,
	// credential or token.
	ErrNotFound = errors.New("registry: not found")
	// ErrExists: a model version is already stored with other bytes, or a
	// token id is taken.
	ErrExists = errors.New("registry: already exists")
	// ErrSchemaTooNew: the store was migrated by a newer build.
	ErrSchemaTooNew = errors.New("registry: store schema newer than this build")
	// ErrSchemaTooOld: Options.NoMigrate found a store that this build
	// would migrate.
	ErrSchemaTooOld = errors.New("registry: store schema older than this build")
	// ErrNotEmbedded: the operation needs the embedded (SQLite) store.
	ErrNotEmbedded = errors.New("registry: not the embedded store")
	// ErrInvalidQuery: a query is malformed (a metrics step that is not
	// whole minutes, a range that ends before it starts or has too many
	// steps, a list's cursor not made by this store).
	ErrInvalidQuery = errors.New("registry: invalid query")
)

// StoreFile is the embedded store's file name inside the data directory.
const StoreFile = "fleet.db"

// Options for Open; the zero value works.
type Options struct {
	// Store selects the engine: a postgres:// (or postgresql://) URL, or a
	// SQLite file path; empty means DATA/fleet.db.
	Store  string
	Logger *slog.Logger
	// MaxSamples and MaxSampleBytes bound the sample records kept for
	// export (samples.go); 0 means DefaultMaxSamples and
	// DefaultMaxSampleBytes.
	MaxSamples     int
	MaxSampleBytes int64
	// OnAuditChainBroken, if set, is told of every break of a device's
	// audit chain found at ingest (deviceaudit.go), after the transaction
	// that stored the record committed, in the caller's goroutine: it must
	// not block. The break is stored and counted either way.
	OnAuditChainBroken func(ChainBreak)
	// AuditBreakAlerts, if set, gives the webhook deliveries of a break:
	// they are stored in the transaction that stores the broken record, so
	// a controller killed the next instant still sends them (the outbox
	// delivers them; OnAuditChainBroken then only wakes it).
	AuditBreakAlerts func(ChainBreak) []AlertDelivery
	// FineStep, when it divides a minute (1 to 30 s), keeps buckets of that
	// many seconds too, per device and fleet-wide: drift detection's
	// windows under a minute (tests, demos) read them. Prune keeps them
	// an hour.
	FineStep int64
	// NoMigrate opens a store only if it is already at this build's schema
	// (ErrSchemaTooOld otherwise), and writes nothing while opening it: for
	// tools that read a store beside a running serve, which may be of an
	// older version and must not have its schema changed under it.
	NoMigrate bool
}

// monitoring is what ingest needs besides the store, shared with Fenced
// views.
type monitoring struct {
	maxSamples     int64
	maxSampleBytes int64
	onBreak        func(ChainBreak)
	breakAlerts    func(ChainBreak) []AlertDelivery
	fineStep       int64 // Options.FineStep, or 0
	samplesDropped atomic.Uint64
	// stmts are ingest's statements, prepared in Open (parsing one costs
	// SQLite about as much as running it).
	stmts map[string]*sql.Stmt
	// rawOnly stores the raw rows and counters only, as before ingest kept
	// anything: the benchmark's baseline.
	rawOnly bool
}

// Registry is an open store. It is safe for concurrent use.
type Registry struct {
	dir  string
	file string // the SQLite file; "" on PostgreSQL
	eng  engine
	w    *sql.DB // writes (SQLite: one connection)
	r    *sql.DB // reads (the same pool on PostgreSQL)
	qc   *queryCache
	log  *slog.Logger
	// fence, when set, makes every write check a lease token (Fenced).
	fence *Lease
	// telStmt is insertTelemetry's full chunk, prepared in Open (not
	// later: inside a transaction SQLite's one write connection is taken).
	telStmt *sql.Stmt
	ingest  *ingestQueue
	mon     *monitoring
	// view is set on a Fenced copy: it shares the pools and must not
	// close them.
	view bool
}

// Open opens the store selected by opts.Store, migrating its schema to
// this build's and importing dir's bbolt registry.db on the first start;
// blobs live in dir/blobs whatever the engine.
func Open(dir string, opts Options) (*Registry, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	store := opts.Store
	if store == "" {
		store = filepath.Join(dir, StoreFile)
	}
	if opts.NoMigrate && !isPostgres(store) {
		// Nothing is created for a store that is not there.
		if _, err := os.Stat(sqliteFile(store)); err != nil {
			return nil, fmt.Errorf("registry: no store: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o750); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	eng, w, rd, err := openEngine(store)
	if err != nil {
		return nil, err
	}
	r := &Registry{dir: dir, eng: eng, w: w, r: rd, qc: &queryCache{eng: eng}, log: opts.Logger,
		ingest: &ingestQueue{}, mon: &monitoring{maxSamples: int64(opts.MaxSamples), maxSampleBytes: opts.MaxSampleBytes,
			onBreak: opts.OnAuditChainBroken, breakAlerts: opts.AuditBreakAlerts}}
	if opts.FineStep > 0 && opts.FineStep < MinuteBucket && MinuteBucket%opts.FineStep == 0 {
		r.mon.fineStep = opts.FineStep
	}
	if r.mon.maxSamples <= 0 {
		r.mon.maxSamples = DefaultMaxSamples
	}
	if r.mon.maxSampleBytes <= 0 {
		r.mon.maxSampleBytes = DefaultMaxSampleBytes
	}
	if eng.name == "sqlite" {
		r.file = store
	}
	ctx := context.Background()
	if opts.NoMigrate {
		err = checkSchema(ctx, w, eng)
	} else {
		err = migrate(ctx, w, eng, -1)
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	if r.telStmt, err = w.PrepareContext(ctx, eng.rebind(telemetryInsert(telemetryRows))); err != nil {
		r.Close()
		return nil, fmt.Errorf("registry: prepare: %w", err)
	}
	if err := r.prepareIngest(ctx); err != nil {
		r.Close()
		return nil, fmt.Errorf("registry: prepare: %w", err)
	}
	if opts.NoMigrate {
		return r, nil // the import is serve's, as migrations are
	}
	if err := r.importBolt(ctx); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Close closes the store.
func (r *Registry) Close() error {
	if r.view {
		return nil
	}
	if r.telStmt != nil {
		r.telStmt.Close()
	}
	for _, st := range r.mon.stmts {
		st.Close()
	}
	err := r.w.Close()
	if r.r != r.w {
		err = errors.Join(err, r.r.Close())
	}
	return err
}

// Engine names the store's engine: "sqlite" or "postgres".
func (r *Registry) Engine() string { return r.eng.name }

// q rewrites a query written with ? for the engine.
func (r *Registry) q(query string) string { return r.qc.q(query) }

// write runs fn in a write transaction, again if it lost a race (at most 5
// times; see retryable).
func (r *Registry) write(fn func(tx *sql.Tx) error) error {
	var err error
	for range 5 {
		err = inTx(context.Background(), r.w, func(tx *sql.Tx) error {
			if r.fence != nil {
				if err := r.checkFence(tx, *r.fence); err != nil {
					return err
				}
			}
			return fn(tx)
		})
		if !retryable(err) {
			return err
		}
	}
	return err
}

func (r *Registry) exec(tx *sql.Tx, query string, args ...any) (sql.Result, error) {
	return tx.Exec(r.q(query), args...)
}

// NewID returns prefix and 32 random hex digits: command and rollout ids.
func NewID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails on Linux (Go 1.24+ crashes instead)
	return prefix + hex.EncodeToString(b[:])
}

// Columns: times are unix nanoseconds, 0 for none; unsigned counters are
// stored as their int64 bit pattern; nested values as JSON text.

func ts(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromTS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func tsPtr(t *time.Time) int64 {
	if t == nil {
		return 0
	}
	return ts(*t)
}

func fromTSPtr(n int64) *time.Time {
	if n == 0 {
		return nil
	}
	t := fromTS(n)
	return &t
}

func js(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own plain types go here; none can fail to encode.
		panic(fmt.Sprintf("registry: encode %T: %v", v, err))
	}
	return string(b)
}

func unjs(b []byte, v any) error {
	if len(b) == 0 {
		return nil
	}
	return json.Unmarshal(b, v)
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

func notFound(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	return err
}
