package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// The helper process: OUTPOST_ATOMICFILE_HELPER=<mode> runs one write of
// OUTPOST_ATOMICFILE_SIZE bytes to OUTPOST_ATOMICFILE_PATH and exits.
//
//	fsize  the file size limit is set below the write; prints the error
//	kill   SIGKILL right after WriteFile returned
func TestMain(m *testing.M) {
	if mode := os.Getenv("OUTPOST_ATOMICFILE_HELPER"); mode != "" {
		os.Exit(helper(mode))
	}
	os.Exit(m.Run())
}

func helper(mode string) int {
	path := os.Getenv("OUTPOST_ATOMICFILE_PATH")
	size, _ := strconv.Atoi(os.Getenv("OUTPOST_ATOMICFILE_SIZE"))
	b := bytes.Repeat([]byte{'n'}, size)
	switch mode {
	case "fsize":
		// Without the signal ignored the kernel kills the process at the
		// limit; ignored, write returns EFBIG.
		signal.Ignore(syscall.SIGXFSZ)
		lim := syscall.Rlimit{Cur: uint64(size / 2), Max: uint64(size / 2)}
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			fmt.Println("setrlimit:", err)
			return 2
		}
		err := WriteFile(path, b, Options{})
		fmt.Println(errors.Is(err, syscall.EFBIG), err)
		return 0
	case "kill":
		if err := WriteFile(path, b, Options{Perm: 0o600}); err != nil {
			fmt.Println(err)
			return 2
		}
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	return 2
}

func runHelper(t *testing.T, mode, path string, size int) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "OUTPOST_ATOMICFILE_HELPER="+mode, "OUTPOST_ATOMICFILE_PATH="+path,
		"OUTPOST_ATOMICFILE_SIZE="+strconv.Itoa(size))
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err
}

// requireOnly checks that dir holds exactly the named file with content want:
// no temporary is left behind.
func requireOnly(t *testing.T, dir, name string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(dir, name))
	require.NoError(t, err)
	require.True(t, bytes.Equal(got, want), "got %d bytes %.20q, want %d bytes %.20q", len(got), got, len(want), want)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	require.Equal(t, []string{name}, names, "files in the directory")
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	require.NoError(t, WriteFile(path, []byte("one"), Options{}))
	requireOnly(t, dir, "state.json", []byte("one"))
	require.NoError(t, WriteFile(path, []byte("two"), Options{Perm: 0o600}))
	requireOnly(t, dir, "state.json", []byte("two"))
	st, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
}

func TestWriteHooksAndTempDir(t *testing.T) {
	dir, tmp := t.TempDir(), t.TempDir()
	path := filepath.Join(dir, "blob")
	var seen []string
	opts := Options{
		TempDir: tmp,
		Perm:    0o444,
		Synced: func() {
			seen = append(seen, "synced")
			_, err := os.Stat(path)
			require.ErrorIs(t, err, os.ErrNotExist, "destination before the rename")
		},
		Renamed: func() { seen = append(seen, "renamed") },
	}
	err := Write(path, opts, func(w io.Writer) error {
		_, err := io.Copy(w, strings.NewReader("model bytes"))
		return err
	})
	require.NoError(t, err)
	require.Equal(t, []string{"synced", "renamed"}, seen)
	requireOnly(t, dir, "blob", []byte("model bytes"))
	ents, err := os.ReadDir(tmp)
	require.NoError(t, err)
	require.Empty(t, ents, "temporary directory")
}

func TestFillErrorKeepsDestination(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "root.json")
	require.NoError(t, WriteFile(path, []byte("old"), Options{}))
	boom := errors.New("reader broke")
	err := Write(path, Options{Synced: func() { t.Error("Synced called after a failed fill") }}, func(w io.Writer) error {
		if _, err := w.Write([]byte("half")); err != nil {
			return err
		}
		return boom
	})
	require.ErrorIs(t, err, boom)
	requireOnly(t, dir, "root.json", []byte("old"))
}

func TestMissingDirectory(t *testing.T) {
	err := WriteFile(filepath.Join(t.TempDir(), "no", "such"), []byte("x"), Options{})
	require.ErrorIs(t, err, os.ErrNotExist)
}

// TestFileSizeLimit: a write cut short by RLIMIT_FSIZE (what a short write on
// a full disk looks like to us) fails and never replaces the destination.
func TestFileSizeLimit(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "private.key")
	old := []byte("old key")
	require.NoError(t, WriteFile(path, old, Options{}))
	out, err := runHelper(t, "fsize", path, 64<<10)
	require.NoError(t, err, "helper: %s", out)
	require.True(t, strings.HasPrefix(out, "true "), "helper's error is not EFBIG: %s", out)
	requireOnly(t, dir, "private.key", old)
}

// TestSurvivesKill: once WriteFile returned, a SIGKILL of the writer does not
// take the new content back.
func TestSurvivesKill(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	require.NoError(t, WriteFile(path, []byte("old"), Options{}))
	out, err := runHelper(t, "kill", path, 10000)
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "helper: %s", out)
	require.Equal(t, syscall.SIGKILL, ee.Sys().(syscall.WaitStatus).Signal(), "helper: %s", out)
	requireOnly(t, dir, "state.json", bytes.Repeat([]byte{'n'}, 10000))
}

// TestFullDisk fills a small tmpfs: the write that does not fit fails with
// ENOSPC and the destination keeps its old content; once there is room the
// same write succeeds.
func TestFullDisk(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v); TestFileSizeLimit covers short writes", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	path := filepath.Join(dir, "root.json")
	old := []byte("old root")
	require.NoError(t, WriteFile(path, old, Options{}))
	// 48k of the 64k taken: the next 32k write starts and cannot finish.
	filler := filepath.Join(dir, "filler")
	require.NoError(t, os.WriteFile(filler, make([]byte, 48<<10), 0o644))

	newRoot := bytes.Repeat([]byte{'r'}, 32<<10)
	err := WriteFile(path, newRoot, Options{})
	require.ErrorIs(t, err, syscall.ENOSPC)
	got, rerr := os.ReadFile(path)
	require.NoError(t, rerr)
	require.Equal(t, old, got, "destination after the failed write")

	require.NoError(t, os.Remove(filler))
	require.NoError(t, WriteFile(path, newRoot, Options{}))
	requireOnly(t, dir, "root.json", newRoot)
}
