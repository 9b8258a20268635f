package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/stretchr/testify/require"
)

// TestOpenDataDir: a data dir's store is DirIn(dataDir), and a data dir
// holding models in the old layout (the store at the data dir itself) is
// refused with ErrOldLayout, while one with only empty leftovers opens.
func TestOpenDataDir(t *testing.T) {
	data := t.TempDir()
	require.Equal(t, filepath.Join(data, "store"), DirIn(data))
	s, err := OpenDataDir(data, Options{})
	require.NoError(t, err)
	require.NoError(t, install(s, describe(t, "face", 1, testmodel.FaceShort), 1))
	again, err := Open(DirIn(data), Options{})
	require.NoError(t, err)
	_, e, err := again.Load("face")
	require.NoError(t, err)
	require.Equal(t, int64(1), e.Manifest.Version)

	old := t.TempDir()
	for _, d := range []string{"models", "blobs"} {
		require.NoError(t, os.Mkdir(filepath.Join(old, d), 0o755)) // what enroll left: empty
	}
	_, err = OpenDataDir(old, Options{})
	require.NoError(t, err)

	old = t.TempDir()
	s, err = Open(old, Options{}) // the old layout: the store at the data dir
	require.NoError(t, err)
	require.NoError(t, install(s, describe(t, "face", 1, testmodel.FaceShort), 1))
	_, err = OpenDataDir(old, Options{})
	if !errors.Is(err, ErrOldLayout) {
		t.Fatalf("got %v, want ErrOldLayout", err)
	}
	require.Contains(t, err.Error(), DirIn(old))
	_, err = os.Stat(DirIn(old))
	require.True(t, os.IsNotExist(err), "a refused open created %s", DirIn(old))
}
