// Package bundle reads and writes offline model bundles: a directory holding
// everything a device needs to verify and install one model version without a
// network (the USB-stick path):
//
//	roots/1.json ... roots/N.json   the root chain, DSSE envelopes
//	release.json                    the signed release (manifest, serial, expiry)
//	model.tflite                    the model bytes
//
// Verify checks all of it against a device's trust anchor before any model
// byte is handed on.
package bundle

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
)

// File names inside a bundle.
const (
	RootsDir    = "roots"
	ReleaseFile = "release.json"
	ModelFile   = "model.tflite"
)

// maxRoots bounds the chain a bundle may carry.
const maxRoots = 1000

// Errors; callers test with errors.Is. Verify also returns the trust, dsse
// and manifest sentinels of what it checks.
var (
	// ErrAgentTooOld: the release needs a newer agent than the one verifying.
	ErrAgentTooOld = errors.New("bundle: agent too old for this model")
	errNotRegular  = errors.New("bundle: not a regular file")
)

// Options tune Verify; the zero value checks expiry against time.Now.
type Options struct {
	// Now is the reference time for expiry; zero means time.Now().
	Now time.Time
	// AgentVersion is checked against the manifest's minimum agent version;
	// empty skips the check.
	AgentVersion string
}

// Verified is a bundle whose metadata and model bytes were checked.
type Verified struct {
	Dir string
	// Root is the newest root reached through the bundle's chain; a device
	// stores it so that revoked keys stay revoked.
	Root    *trust.Root
	Release *trust.Release
	// Raw is the release envelope exactly as verified.
	Raw []byte
}

// Manifest is the verified manifest.
func (v *Verified) Manifest() *manifest.Manifest { return &v.Release.Model }

// Verify checks the bundle in dir against the trust anchor.
func Verify(dir string, anchor *trust.Root, opts Options) (*Verified, error) {
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	roots, err := readRoots(filepath.Join(dir, RootsDir))
	if err != nil {
		return nil, err
	}
	root, err := anchor.Chain(roots)
	if err != nil {
		return nil, fmt.Errorf("bundle: root chain: %w", err)
	}
	b, err := readLimited(filepath.Join(dir, ReleaseFile), 8<<20)
	if err != nil {
		return nil, err
	}
	rel, err := root.VerifyRelease(b, opts.Now)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if opts.AgentVersion != "" && !rel.Model.AgentSupported(opts.AgentVersion) {
		return nil, fmt.Errorf("%w: %s needs agent %s, this is %s", ErrAgentTooOld, rel.Model.Name, rel.Model.MinAgentVersion, opts.AgentVersion)
	}
	v := &Verified{Dir: dir, Root: root, Release: rel, Raw: b}
	r, err := v.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("bundle: %s: %w", ModelFile, err)
	}
	return v, nil
}

// Open returns the model bytes, checked against the manifest as they are read
// (see manifest.Bytes): read to io.EOF without error, they are the signed
// bytes even if the file changed after Verify.
func (v *Verified) Open() (io.ReadCloser, error) {
	f, err := openRegular(filepath.Join(v.Dir, ModelFile))
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{v.Release.Model.Bytes(f), f}, nil
}

// readRoots returns the root files in ascending version order.
func readRoots(dir string) ([][]byte, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	var vers []int
	for _, e := range ents {
		n, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".json"))
		if err != nil || n < 1 || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		vers = append(vers, n)
	}
	if len(vers) > maxRoots {
		return nil, fmt.Errorf("bundle: %d roots is over the limit of %d", len(vers), maxRoots)
	}
	sort.Ints(vers)
	var out [][]byte
	for _, n := range vers {
		b, err := readLimited(filepath.Join(dir, strconv.Itoa(n)+".json"), 1<<20)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// openRegular opens path and refuses anything but a regular file, so that a
// bundle cannot point the reader at a FIFO or a device that never ends.
func openRegular(path string) (*os.File, error) {
	// O_NONBLOCK keeps open(2) from waiting for a FIFO's writer; it changes
	// nothing for regular files.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("bundle: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: %s", errNotRegular, filepath.Base(path))
	}
	return f, nil
}

func readLimited(path string, max int64) ([]byte, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("bundle: %s: %w", filepath.Base(path), err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("bundle: %s is over %d bytes", filepath.Base(path), max)
	}
	return b, nil
}

// ErrNotEmpty: Write was pointed at a directory that already holds files.
var ErrNotEmpty = errors.New("bundle: output directory is not empty")

// Write creates a bundle in dir, which must be missing or empty (so no stale
// root or model from another bundle is mixed in), from the root chain, a
// signed release and the model bytes.
func Write(dir string, roots [][]byte, release []byte, model io.Reader) error {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return fmt.Errorf("%w: %s", ErrNotEmpty, dir)
	}
	if err := os.MkdirAll(filepath.Join(dir, RootsDir), 0o755); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	for _, b := range roots {
		r, err := trust.LoadRoot(b) // self-signed check; the version names the file
		if err != nil {
			return fmt.Errorf("bundle: write: %w", err)
		}
		name := strconv.FormatInt(r.Doc.Version, 10) + ".json"
		if err := writeFile(filepath.Join(dir, RootsDir, name), b); err != nil {
			return err
		}
	}
	if err := writeFile(filepath.Join(dir, ReleaseFile), release); err != nil {
		return err
	}
	err := atomicfile.Write(filepath.Join(dir, ModelFile), atomicfile.Options{}, func(w io.Writer) error {
		_, err := io.Copy(w, model)
		return err
	})
	if err != nil {
		return fmt.Errorf("bundle: write model: %w", err)
	}
	return nil
}

func writeFile(path string, b []byte) error {
	if err := atomicfile.WriteFile(path, b, atomicfile.Options{}); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	return nil
}
