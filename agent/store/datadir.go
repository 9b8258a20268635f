package store

import (
	"fmt"
	"path/filepath"
)

// DirIn returns the store's directory inside an agent's data directory.
// Every command that opens the store of a data dir (serve, install,
// enroll, batch) goes through here, so they all mean the same store.
func DirIn(dataDir string) string { return filepath.Join(dataDir, "store") }

// OpenDataDir opens the store of the agent whose data directory is dataDir
// (DirIn). It refuses, with ErrOldLayout, a data dir holding models directly
// in DATA_DIR/models: older install and enroll commands wrote the store
// there, and the agent never served it. It moves nothing itself: the
// operator decides what the device serves (docs/CONFIG.md says how).
func OpenDataDir(dataDir string, opts Options) (*Store, error) {
	if old, _ := filepath.Glob(filepath.Join(dataDir, "models", "*", "state.json")); len(old) > 0 {
		return nil, fmt.Errorf("%w: %s holds installed models in %s, which the agent does not read; "+
			"it reads %s: stop the agent, then move blobs/ and models/ into it, "+
			"or install the bundles again with --data-dir %s and remove %s (docs/CONFIG.md, the data dir)",
			ErrOldLayout, dataDir, filepath.Join(dataDir, "models"), DirIn(dataDir), dataDir, filepath.Join(dataDir, "models"))
	}
	return Open(DirIn(dataDir), opts)
}
