package registry

import (
	"os"
	"testing"

	"github.com/outpost-edge/outpost/internal/testpg"
)

func TestMain(m *testing.M) { os.Exit(testpg.Main(m)) }

// target is one store that a test opens (and opens again): a data
// directory and the options naming the engine.
type target struct {
	dir  string
	opts Options
}

func (g target) open(t *testing.T) *Registry {
	t.Helper()
	r, err := Open(g.dir, g.opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// eachEngine is the contract suite's driver: it runs fn as the subtests
// "sqlite" and "postgres", with newTarget making a fresh, empty store of
// that engine (on PostgreSQL a new database on the package's test
// server; skipped without PostgreSQL unless CI=true).
func eachEngine(t *testing.T, fn func(t *testing.T, newTarget func(*testing.T) target)) {
	t.Run("sqlite", func(t *testing.T) {
		fn(t, func(t *testing.T) target { return target{dir: t.TempDir()} })
	})
	t.Run("postgres", func(t *testing.T) {
		fn(t, func(t *testing.T) target {
			return target{dir: t.TempDir(), opts: Options{Store: testpg.Database(t)}}
		})
	})
}
