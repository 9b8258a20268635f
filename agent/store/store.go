// Package store keeps verified models on the device's disk, several model
// names side by side, each with a current and a previous version:
//
//	DIR/root.json                    newest trusted root seen (see SaveRoot)
//	DIR/blobs/sha256/HEX             model bytes, content-addressed, read-only
//	DIR/models/NAME/VERSION.json     the verified manifest and signed release
//	DIR/models/NAME/state.json       {"current": V, "previous": V, "serial": S}
//	DIR/tmp/                         files being written
//
// Every change is written to a temporary file, synced, renamed into place and
// followed by a sync of the directory; the switch of current and previous is
// a single rename of state.json. A crash at any instant therefore leaves the
// old state or the new one, and Open clears what a crash left behind.
//
// The store does not check signatures: callers hand it bytes and a manifest
// they verified (models/bundle). It checks the bytes against the manifest on
// the way in and again on every Load, so nothing reaches a runtime that does
// not match its signed digest and length. Nothing here looks at expiry: a
// device offline for months keeps serving what it has.
//
// Test hook: in a binary built with -tags outposttest, when
// OUTPOST_CRASHPOINT names one of the CrashPoints the process kills itself
// with SIGKILL when it gets there (internal/crashpoint).
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/internal/crashpoint"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
)

// Errors; callers test with errors.Is.
var (
	// ErrNotFound: no such model name, no previous version, or no stored root.
	ErrNotFound = errors.New("store: not found")
	// ErrRollback: the version is older than the installed one and the
	// release is not a signed rollback instruction newer than the last
	// release installed.
	ErrRollback = errors.New("store: refusing rollback to an older version")
	// ErrInstalled: this exact version is already current.
	ErrInstalled = errors.New("store: version already installed")
	// ErrConflict: the same name and version is installed with other bytes.
	ErrConflict = errors.New("store: version installed with a different digest")
	// ErrCorrupt: bytes on disk no longer match their manifest.
	ErrCorrupt = errors.New("store: stored model does not match its manifest")
	// ErrRootVersion: SaveRoot was given a root older than the stored one.
	ErrRootVersion = errors.New("store: root older than the stored one")
)

// CrashPoints are the places where a crash test can kill an Install,
// in the order Install reaches them.
var CrashPoints = []string{
	"blob-synced",   // model bytes in tmp/, synced, not renamed
	"blob-renamed",  // blob renamed into blobs/, directory not synced
	"entry-synced",  // VERSION.json in tmp/, synced, not renamed
	"entry-renamed", // VERSION.json in place, directory not synced
	"state-synced",  // new state.json in tmp/, synced, not renamed
	"state-renamed", // state.json switched, directory not synced
	"gc",            // old entries removed, their blobs not yet
	"done",          // everything written
}

// RootCrashPoints are the crash points of SaveRoot (a device's first install,
// or one whose bundle carries a newer root), and RollbackCrashPoints those of
// Rollback.
var (
	RootCrashPoints     = []string{"root-synced", "root-renamed"}
	RollbackCrashPoints = []string{"rollback-synced", "rollback-renamed"}
)

// Options configure a Store; the zero value works.
type Options struct {
	// Logger receives install and recovery events; nil discards them.
	Logger *slog.Logger
}

// Store is a model store in one directory. Its methods are safe for
// concurrent use; installs in other processes are excluded by a lock file.
type Store struct {
	dir string
	log *slog.Logger

	mu sync.Mutex // serialises Install, Rollback, SaveRoot within the process
}

// Entry is one installed model version.
type Entry struct {
	Manifest manifest.Manifest `json:"manifest"`
	// Serial is the fleet's serial of the release that installed it.
	Serial int64 `json:"serial"`
	// Release is the signed release envelope, kept for audit and re-checks.
	Release   []byte    `json:"release,omitempty"`
	Installed time.Time `json:"installed"`
	// Path is the blob holding the model bytes.
	Path string `json:"-"`
}

type state struct {
	Current  int64 `json:"current"`
	Previous int64 `json:"previous,omitempty"`
	// Serial is the highest release serial installed under this name; a
	// rollback instruction must be newer.
	Serial int64 `json:"serial"`
}

// Open opens or creates the store in dir and recovers from an interrupted
// install: temporary files go, as do entries and blobs nothing points to.
func Open(dir string, opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{dir: dir, log: log.With("component", "store")}
	for _, d := range []string{s.path("blobs", "sha256"), s.path("models"), s.path("tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("store: open: %w", err)
		}
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := s.recover(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.dir}, elem...)...)
}

func (s *Store) blobPath(sha string) string { return s.path("blobs", "sha256", sha) }

// lock takes the store's exclusive file lock.
func (s *Store) lock() (func(), error) {
	f, err := os.OpenFile(s.path(".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("store: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("store: lock: %w", err)
	}
	return func() { f.Close() }, nil
}

func (s *Store) crashAt(point string) { crashpoint.At(point) }

// Names lists the model names with a current version.
func (s *Store) Names() ([]string, error) {
	ents, err := os.ReadDir(s.path("models"))
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var out []string
	for _, e := range ents {
		if _, err := s.readState(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

func (s *Store) readState(name string) (state, error) {
	var st state
	if !manifest.ValidName(name) {
		return st, fmt.Errorf("%w: model %q", ErrNotFound, name)
	}
	b, err := os.ReadFile(s.path("models", name, "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return st, fmt.Errorf("%w: model %q", ErrNotFound, name)
	}
	if err != nil {
		return st, fmt.Errorf("store: %w", err)
	}
	st, err = parseState(b)
	if err != nil {
		return st, fmt.Errorf("store: %s: %w", name, err)
	}
	return st, nil
}

func parseState(b []byte) (state, error) {
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%w: state: %v", ErrCorrupt, err)
	}
	if st.Current < 1 || st.Previous < 0 || st.Previous == st.Current {
		return st, fmt.Errorf("%w: state %+v", ErrCorrupt, st)
	}
	return st, nil
}

func (s *Store) readEntry(name string, version int64) (Entry, error) {
	var e Entry
	b, err := os.ReadFile(s.path("models", name, strconv.FormatInt(version, 10)+".json"))
	if err != nil {
		return e, fmt.Errorf("%w: %s v%d: %v", ErrCorrupt, name, version, err)
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("%w: %s v%d: %v", ErrCorrupt, name, version, err)
	}
	if err := e.Manifest.Validate(); err != nil || e.Manifest.Name != name || e.Manifest.Version != version {
		return e, fmt.Errorf("%w: %s v%d: entry does not match its place", ErrCorrupt, name, version)
	}
	e.Path = s.blobPath(e.Manifest.SHA256)
	return e, nil
}

// Current returns the current version of name, or ErrNotFound.
func (s *Store) Current(name string) (Entry, error) {
	st, err := s.readState(name)
	if err != nil {
		return Entry{}, err
	}
	return s.readEntry(name, st.Current)
}

// Previous returns the version before the current one, or ErrNotFound.
func (s *Store) Previous(name string) (Entry, error) {
	st, err := s.readState(name)
	if err != nil {
		return Entry{}, err
	}
	if st.Previous == 0 {
		return Entry{}, fmt.Errorf("%w: %s has no previous version", ErrNotFound, name)
	}
	return s.readEntry(name, st.Previous)
}

// Load returns the bytes of the current version of name after checking them
// against its manifest (ErrCorrupt if they no longer match).
// Readers take no lock: an install in another process may replace current
// between reading state.json and the blob, so one failed read is retried.
func (s *Store) Load(name string) ([]byte, Entry, error) {
	var (
		b   []byte
		e   Entry
		err error
	)
	for range 2 {
		if e, err = s.Current(name); err != nil {
			return nil, e, err
		}
		if b, err = e.read(); err == nil {
			return b, e, nil
		}
	}
	return nil, e, err
}

func (e Entry) read() ([]byte, error) {
	f, err := os.Open(e.Path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s v%d: %v", ErrCorrupt, e.Manifest.Name, e.Manifest.Version, err)
	}
	defer f.Close()
	b, err := io.ReadAll(e.Manifest.Bytes(f))
	if err != nil {
		return nil, fmt.Errorf("%w: %s v%d: %v", ErrCorrupt, e.Manifest.Name, e.Manifest.Version, err)
	}
	return b, nil
}

// InstallRequest is a verified release to install.
type InstallRequest struct {
	Manifest manifest.Manifest
	Serial   int64
	Release  []byte
	// Model yields the model bytes; they are checked against Manifest.
	Model io.Reader
}

// Install writes a verified model version and makes it current, the old
// current becoming previous. It refuses an older version (ErrRollback) unless
// the release is a rollback instruction with a serial above every release
// installed under the name, and reports ErrInstalled when the version is
// already current.
func (s *Store) Install(req InstallRequest) (Entry, error) {
	m := req.Manifest
	if err := m.Validate(); err != nil {
		return Entry{}, fmt.Errorf("store: install: %w", err)
	}
	if req.Serial < 1 {
		return Entry{}, fmt.Errorf("store: install: serial %d", req.Serial)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := s.lock()
	if err != nil {
		return Entry{}, err
	}
	defer unlock()

	st, err := s.readState(m.Name)
	fresh := errors.Is(err, ErrNotFound)
	if err != nil && !fresh {
		return Entry{}, err
	}
	next := state{Current: m.Version, Serial: max(st.Serial, req.Serial)}
	if !fresh {
		cur, err := s.readEntry(m.Name, st.Current)
		if err != nil {
			return Entry{}, err
		}
		switch {
		case m.Version == st.Current && m.SHA256 == cur.Manifest.SHA256:
			return cur, fmt.Errorf("%w: %s v%d", ErrInstalled, m.Name, m.Version)
		case m.Version == st.Current:
			return Entry{}, fmt.Errorf("%w: %s v%d", ErrConflict, m.Name, m.Version)
		case m.Version < st.Current && !(m.Rollback && req.Serial > st.Serial):
			return Entry{}, fmt.Errorf("%w: %s v%d is installed, release offers v%d", ErrRollback, m.Name, st.Current, m.Version)
		}
		next.Previous = st.Current
	}

	if err := s.writeBlob(m, req.Model); err != nil {
		return Entry{}, err
	}
	e := Entry{Manifest: m, Serial: req.Serial, Release: req.Release, Installed: time.Now().UTC(), Path: s.blobPath(m.SHA256)}
	eb, err := json.Marshal(e)
	if err != nil {
		return Entry{}, fmt.Errorf("store: install: %w", err)
	}
	dir := s.path("models", m.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Entry{}, fmt.Errorf("store: install: %w", err)
	}
	if err := s.writeAtomic(filepath.Join(dir, strconv.FormatInt(m.Version, 10)+".json"), eb, "entry"); err != nil {
		return Entry{}, err
	}
	sb, _ := json.Marshal(next)
	if err := s.writeAtomic(filepath.Join(dir, "state.json"), sb, "state"); err != nil {
		return Entry{}, err
	}
	s.log.Info("installed", "model", m.Name, "version", m.Version, "previous", next.Previous, "sha256", m.SHA256)
	keep, err := s.gcEntries()
	if err == nil {
		s.crashAt("gc")
		err = s.gcBlobs(keep)
	}
	if err != nil {
		s.log.Warn("cleanup after install", "err", err)
	}
	s.crashAt("done")
	return e, nil
}

// Rollback makes the previous version of name current again (and the current
// one previous). It is the device's own decision after a failed probation,
// so it needs no signature: both versions were verified when installed.
func (s *Store) Rollback(name string) (Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := s.lock()
	if err != nil {
		return Entry{}, err
	}
	defer unlock()
	st, err := s.readState(name)
	if err != nil {
		return Entry{}, err
	}
	if st.Previous == 0 {
		return Entry{}, fmt.Errorf("%w: %s has no previous version", ErrNotFound, name)
	}
	prev, err := s.readEntry(name, st.Previous)
	if err != nil {
		return Entry{}, err
	}
	if _, err := prev.read(); err != nil {
		return Entry{}, err
	}
	sb, _ := json.Marshal(state{Current: st.Previous, Previous: st.Current, Serial: st.Serial})
	if err := s.writeAtomic(s.path("models", name, "state.json"), sb, "rollback"); err != nil {
		return Entry{}, err
	}
	s.log.Info("rolled back", "model", name, "version", st.Previous, "from", st.Current)
	return prev, nil
}

// Root returns the newest trusted root saved, or ErrNotFound.
func (s *Store) Root() ([]byte, error) {
	b, err := os.ReadFile(s.path("root.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no stored root", ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	return b, nil
}

// SaveRoot stores r as the device's trust anchor unless the stored root is
// newer (ErrRootVersion). Once a device has seen root N it never again
// trusts keys that root N revoked.
func (s *Store) SaveRoot(r *trust.Root) error { return s.saveRoot(r, false) }

// ReplaceRoot stores r as the trust anchor whatever the stored root is, an
// older version included: only for an operator moving the device to another
// fleet (outpost-agent enroll --force). Updates go through SaveRoot.
func (s *Store) ReplaceRoot(r *trust.Root) error { return s.saveRoot(r, true) }

func (s *Store) saveRoot(r *trust.Root, replace bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if b, err := s.Root(); err == nil && !replace {
		if old, err := trust.LoadRoot(b); err == nil {
			if old.Doc.Version > r.Doc.Version {
				return fmt.Errorf("%w: v%d stored, v%d given", ErrRootVersion, old.Doc.Version, r.Doc.Version)
			}
			if old.Doc.Version == r.Doc.Version {
				return nil
			}
		}
	}
	return s.writeAtomic(s.path("root.json"), r.Raw, "root")
}

// writeBlob copies the checked model bytes to blobs/sha256/HEX.
func (s *Store) writeBlob(m manifest.Manifest, r io.Reader) error {
	err := atomicfile.Write(s.blobPath(m.SHA256), s.atomicOptions("blob", 0o444), func(w io.Writer) error {
		_, err := io.Copy(w, m.Bytes(r))
		return err
	})
	if err != nil {
		return fmt.Errorf("store: install %s v%d: %w", m.Name, m.Version, err)
	}
	return nil
}

// writeAtomic replaces path with b: temp file, sync, rename, sync directory.
// point names the crash points "<point>-synced" and "<point>-renamed".
func (s *Store) writeAtomic(path string, b []byte, point string) error {
	if err := atomicfile.WriteFile(path, b, s.atomicOptions(point, 0o644)); err != nil {
		return fmt.Errorf("store: write %s: %w", point, err)
	}
	return nil
}

// atomicOptions writes through tmp/ (emptied by recover) with the crash
// points "<point>-synced" and "<point>-renamed".
func (s *Store) atomicOptions(point string, perm os.FileMode) atomicfile.Options {
	return atomicfile.Options{
		Perm:    perm,
		TempDir: s.path("tmp"),
		Synced:  func() { s.crashAt(point + "-synced") },
		Renamed: func() { s.crashAt(point + "-renamed") },
	}
}

// recover removes what an interrupted install left: temporary files, then
// whatever gc finds unreferenced.
func (s *Store) recover() error {
	ents, err := os.ReadDir(s.path("tmp"))
	if err != nil {
		return fmt.Errorf("store: recover: %w", err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(s.path("tmp", e.Name())); err != nil {
			return fmt.Errorf("store: recover: %w", err)
		}
		s.log.Info("removed leftover", "file", e.Name())
	}
	keep, err := s.gcEntries()
	if err != nil {
		return err
	}
	return s.gcBlobs(keep)
}

// gcEntries keeps, for every name, the current and previous entries and
// removes other entries. A name whose state is missing (a crash before its
// first install completed) loses all its entries. It returns the digests
// still referenced, or nil when something could not be read: then no blob
// may be removed. Callers hold the lock.
func (s *Store) gcEntries() (map[string]bool, error) {
	names, err := os.ReadDir(s.path("models"))
	if err != nil {
		return nil, fmt.Errorf("store: gc: %w", err)
	}
	keep := map[string]bool{}
	for _, n := range names {
		name := n.Name()
		st, err := s.readState(name)
		if err != nil && !errors.Is(err, ErrNotFound) {
			// Leave a name we cannot read alone, and its blobs with it.
			s.log.Error("unreadable model state", "model", name, "err", err)
			return nil, nil
		}
		files, err := os.ReadDir(s.path("models", name))
		if err != nil {
			return nil, fmt.Errorf("store: gc: %w", err)
		}
		for _, f := range files {
			v, err := strconv.ParseInt(strings.TrimSuffix(f.Name(), ".json"), 10, 64)
			if err != nil || !strings.HasSuffix(f.Name(), ".json") {
				continue // state.json and anything we do not own
			}
			if v == st.Current || (v == st.Previous && v != 0) {
				e, err := s.readEntry(name, v)
				if err != nil {
					s.log.Error("unreadable entry", "model", name, "version", v, "err", err)
					return nil, nil
				}
				keep[e.Manifest.SHA256] = true
				continue
			}
			if err := os.Remove(s.path("models", name, f.Name())); err != nil {
				return nil, fmt.Errorf("store: gc: %w", err)
			}
			s.log.Info("removed old entry", "model", name, "version", v)
		}
	}
	return keep, nil
}

// gcBlobs removes blobs whose digest is not in keep (nil keep: none).
func (s *Store) gcBlobs(keep map[string]bool) error {
	if keep == nil {
		return nil
	}
	blobs, err := os.ReadDir(s.path("blobs", "sha256"))
	if err != nil {
		return fmt.Errorf("store: gc: %w", err)
	}
	for _, b := range blobs {
		if keep[b.Name()] {
			continue
		}
		if err := os.Remove(s.blobPath(b.Name())); err != nil {
			return fmt.Errorf("store: gc: %w", err)
		}
		s.log.Info("removed unreferenced blob", "sha256", b.Name())
	}
	if err := atomicfile.SyncDir(s.path("blobs", "sha256")); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}
