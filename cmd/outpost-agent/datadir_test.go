package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// dataDirConfig writes an agent config with only data_dir and returns its
// path.
func dataDirConfig(t *testing.T, data string) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, "data_dir: %s\n", data), 0o644))
	return cfg
}

// TestInstallThenServe: what install --data-dir D installs is what serve
// with data_dir: D serves (the README's two steps).
func TestInstallThenServe(t *testing.T) {
	b := build(t)
	keys, export := fleetDir(t, b)
	data := t.TempDir()
	// In version order: v2 then v1 would be a refused rollback.
	for v, model := range []string{1: testmodel.FaceShort, 2: testmodel.FaceFull} {
		if model == "" {
			continue
		}
		r := run(t, nil, b.agent, "install", "--root", filepath.Join(keys, "root.json"), "--data-dir", data, export("face", v, model))
		require.Equal(t, 0, r.code, r.stderr)
	}
	s := startServeWait(t, b.agent, nil, "/v2/models/face/ready", "--config", dataDirConfig(t, data))
	v, _ := served(t, s, "face")
	assert.Equal(t, "2", v)
}

// TestOldLayoutRefused: a data dir where an older install put the store at
// DATA_DIR itself is refused by serve and install with a message naming
// the fix, and the fix docs/CONFIG.md gives (move blobs/ and models/ into
// DATA_DIR/store) makes serve serve the model.
func TestOldLayoutRefused(t *testing.T) {
	b := build(t)
	keys, export := fleetDir(t, b)
	root := filepath.Join(keys, "root.json")
	staging := t.TempDir()
	r := run(t, nil, b.agent, "install", "--root", root, "--data-dir", staging, export("face", 1, testmodel.FaceShort))
	require.Equal(t, 0, r.code, r.stderr)
	data := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.Rename(store.DirIn(staging), data)) // the old layout: models/ right under the data dir
	cfg := dataDirConfig(t, data)

	r = run(t, nil, b.agent, "install", "--data-dir", data, export("face", 2, testmodel.FaceFull))
	assert.Equal(t, 1, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stderr, "old layout")
	assert.Contains(t, r.stderr, store.DirIn(data))
	_, err := os.Stat(store.DirIn(data))
	assert.True(t, os.IsNotExist(err), "a refused install created %s", store.DirIn(data))

	r = run(t, nil, b.agent, "serve", "--listen", "127.0.0.1:0", "--config", cfg)
	assert.NotEqual(t, 0, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stderr, "old layout")

	require.NoError(t, os.Mkdir(store.DirIn(data), 0o755))
	for _, d := range []string{"blobs", "models"} {
		require.NoError(t, os.Rename(filepath.Join(data, d), filepath.Join(store.DirIn(data), d)))
	}
	s := startServeWait(t, b.agent, nil, "/v2/models/face/ready", "--config", cfg)
	v, _ := served(t, s, "face")
	assert.Equal(t, "1", v)
}

// TestEnrollForceReplacesStoredRoot: a data dir whose store already holds
// another fleet's root (saved by an install or an update) is refused by
// enroll, and enroll --force makes the device trust the new fleet: its
// bundles install without --root, the old fleet's are refused.
func TestEnrollForceReplacesStoredRoot(t *testing.T) {
	b := build(t)
	keysA, exportA := fleetDir(t, b)
	keysB, exportB := fleetDir(t, b)
	data := filepath.Join(t.TempDir(), "data")
	r := run(t, nil, b.agent, "install", "--root", filepath.Join(keysA, "root.json"), "--data-dir", data, exportA("face", 1, testmodel.FaceShort))
	require.Equal(t, 0, r.code, r.stderr)

	rootB, err := os.ReadFile(filepath.Join(keysB, "root.json"))
	require.NoError(t, err)
	bundle := testBundle(t, rootB, "gw-1")
	r = run(t, nil, b.agent, "enroll", bundle, "--data-dir", data)
	assert.Equal(t, 1, r.code, r.stdout+r.stderr)
	assert.Contains(t, r.stderr, "another root")
	r = run(t, nil, b.agent, "enroll", bundle, "--data-dir", data, "--force")
	require.Equal(t, 0, r.code, r.stdout+r.stderr)

	for _, p := range []string{filepath.Join(store.DirIn(data), "root.json"), filepath.Join(data, "root.json")} {
		got, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.Equal(t, rootB, got, p)
	}
	r = run(t, nil, b.agent, "install", "--data-dir", data, exportA("face", 2, testmodel.FaceFull))
	assert.NotEqual(t, 0, r.code, "the old fleet's bundle installed after enroll --force: %s", r.stdout)
	r = run(t, nil, b.agent, "install", "--data-dir", data, exportB("face", 3, testmodel.FaceFull))
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, int64(3), requireLoadable(t, data, 3))
}
