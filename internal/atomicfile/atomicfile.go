// Package atomicfile replaces files so that readers, and the file system after
// a crash or power loss, see either the old content or the new one in full,
// never a short or mixed file: write a temporary file, fsync it, rename it over
// the destination, fsync the directory.
//
// Any error before the rename (a full disk, a file size limit, a failing
// fsync) removes the temporary file and leaves the destination untouched.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Options says how a file is written. The zero value writes mode 0o644 files
// through a temporary in the destination's directory.
type Options struct {
	// Perm is the mode of the new file (0: 0o644). The umask does not apply.
	Perm os.FileMode
	// TempDir holds the temporary file (empty: the destination's directory).
	// It must be on the destination's file system, or the rename fails.
	TempDir string
	// Synced, if set, is called once the temporary file is complete and
	// synced, before the rename; Renamed after the rename, before the
	// directory is synced. They exist for crash tests.
	Synced, Renamed func()
}

// WriteFile replaces path with b.
func WriteFile(path string, b []byte, opts Options) error {
	return Write(path, opts, func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// Write replaces path with what fill writes. If fill returns an error, path
// is left as it was and the error is returned wrapped.
func Write(path string, opts Options, fill func(io.Writer) error) error {
	perm := opts.Perm
	if perm == 0 {
		perm = 0o644
	}
	dir := opts.TempDir
	if dir == "" {
		dir = filepath.Dir(path)
	}
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return fmt.Errorf("atomicfile: %w", err)
	}
	tmp := f.Name()
	if err := complete(f, perm, fill); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("atomicfile: write %s: %w", filepath.Base(path), err)
	}
	if opts.Synced != nil {
		opts.Synced()
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("atomicfile: %w", err)
	}
	if opts.Renamed != nil {
		opts.Renamed()
	}
	return SyncDir(filepath.Dir(path))
}

// complete fills f, sets its mode, syncs and closes it; f is closed on every
// path and the first error is returned.
func complete(f *os.File, perm os.FileMode, fill func(io.Writer) error) error {
	err := fill(f)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// SyncDir fsyncs a directory, making the renames and creations in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("atomicfile: sync %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("atomicfile: sync %s: %w", dir, err)
	}
	return nil
}
