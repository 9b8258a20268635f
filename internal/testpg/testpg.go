// Package testpg runs a real PostgreSQL server for tests: a cluster made
// by initdb in a temporary directory, started by pg_ctl on a free loopback
// port, stopped and removed at the end. The server refuses to run as root,
// so as root the commands run as the postgres system user (runuser) and
// the directory is handed to it.
//
// A package's tests share one server and get a fresh database each:
//
//	func TestMain(m *testing.M) { os.Exit(testpg.Main(m)) }
//
//	url := testpg.Database(t) // postgres://...; skips without PostgreSQL
//
// Without PostgreSQL installed Database skips the test, or fails it when
// CI=true (CI must run what it claims to run).
package testpg

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/outpost-edge/outpost/internal/freeport"
)

// ErrNotInstalled: no initdb/pg_ctl found.
var ErrNotInstalled = errors.New("testpg: PostgreSQL server binaries not found (Debian package postgresql; make setup installs it)")

// Server is a running test cluster.
type Server struct {
	dir  string // data and socket directory
	bin  string // directory of initdb and pg_ctl
	user string // system user the server runs as ("" for the current one)
	port int
	n    atomic.Int64 // databases created
}

// BinDir finds the directory holding initdb and pg_ctl: $PATH first, then
// Debian's /usr/lib/postgresql/<version>/bin, highest version first.
func BinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("pg_ctl"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	return "", ErrNotInstalled
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Start makes and starts a cluster; Stop stops it and removes its files.
func Start() (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "testpg-")
	if err != nil {
		return nil, fmt.Errorf("testpg: %w", err)
	}
	s := &Server{dir: dir, bin: bin}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testpg: running as root needs the postgres system user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testpg: %w", err)
		}
		s.user = "postgres"
	}
	data := filepath.Join(dir, "data")
	if out, err := s.run("initdb", "-D", data, "-U", "outpost", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testpg: initdb: %w: %s", err, out)
	}
	// A port that was free a moment ago may be taken by the time the server
	// binds it: try a few.
	for range 5 {
		if s.port, err = freeport.Port(); err != nil {
			break
		}
		opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB", s.port, dir)
		var out []byte
		out, err = s.run("pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", filepath.Join(dir, "log"), "-o", opts)
		if err == nil {
			return s, nil
		}
		log, _ := os.ReadFile(filepath.Join(dir, "log"))
		err = fmt.Errorf("testpg: pg_ctl start: %w: %s\n%s", err, out, log)
		if !strings.Contains(string(log), "could not bind") && !strings.Contains(string(log), "Address already in use") {
			break
		}
	}
	os.RemoveAll(dir)
	return nil, err
}

func (s *Server) run(cmd string, args ...string) ([]byte, error) {
	path := filepath.Join(s.bin, cmd)
	var c *exec.Cmd
	if s.user != "" {
		c = exec.Command("runuser", append([]string{"-u", s.user, "--", path}, args...)...)
	} else {
		c = exec.Command(path, args...)
	}
	c.Dir = s.dir
	return c.CombinedOutput()
}

// URL is the connection URL of database db.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://outpost@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// CreateDatabase makes a new, empty database and returns its URL.
func (s *Server) CreateDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("t%d_%d", os.Getpid(), s.n.Add(1))
	db, err := sql.Open("pgx", s.URL("postgres"))
	if err != nil {
		return "", err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("testpg: create database: %w", err)
	}
	return s.URL(name), nil
}

// Stop stops the server (fast shutdown: open sessions are ended) and
// removes its files.
func (s *Server) Stop() error {
	out, err := s.run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", filepath.Join(s.dir, "data"))
	if err != nil {
		err = fmt.Errorf("testpg: pg_ctl stop: %w: %s", err, out)
	}
	return errors.Join(err, os.RemoveAll(s.dir))
}

// The package's shared server, started by the first Database call.
var shared struct {
	mu  sync.Mutex // guards the fields below
	srv *Server
	err error
	ran bool
}

// Main runs the package's tests and stops the shared server, if one was
// started, before returning m.Run's exit code.
func Main(m *testing.M) int {
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.srv != nil {
		if err := shared.srv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
		shared.srv = nil
	}
	return code
}

// Required reports whether a missing PostgreSQL fails tests instead of
// skipping them (CI=true).
func Required() bool { return os.Getenv("CI") == "true" }

// Shared returns the package's shared server, starting it on first use.
// Without PostgreSQL it skips t, or fails it under CI=true. The package
// must stop it through Main.
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.ran {
		shared.ran = true
		shared.srv, shared.err = Start()
	}
	if shared.err != nil {
		if errors.Is(shared.err, ErrNotInstalled) && !Required() {
			t.Skip(shared.err)
		}
		t.Fatal(shared.err)
	}
	return shared.srv
}

// Database returns the URL of a new, empty database on the package's
// shared server (see Shared).
func Database(t testing.TB) string {
	t.Helper()
	s := Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := s.CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
