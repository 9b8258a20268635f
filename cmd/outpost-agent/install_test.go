package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/models/bundle"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/models/tflite"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/stretchr/testify/require"
)

// bins are the real binaries, built once per test run with the outposttest
// tag: the crash points (internal/crashpoint) and --test-now (testclock_on.go).
type bins struct{ agent, fleet string }

// buildOnce builds the binaries once per test binary, into binDir:
// linking both takes seconds, and some thirty tests ask for them.
var (
	binDir    string
	buildOnce = sync.OnceValues(func() (bins, error) {
		dir, err := os.MkdirTemp("", "outpost-bins-")
		if err != nil {
			return bins{}, err
		}
		binDir = dir
		b := bins{agent: filepath.Join(dir, "outpost-agent"), fleet: filepath.Join(dir, "outpost-fleet")}
		for out, pkg := range map[string]string{b.agent: ".", b.fleet: "../outpost-fleet"} {
			cmd := exec.Command("go", "build", "-tags", "outposttest", "-o", out, pkg)
			if msg, err := cmd.CombinedOutput(); err != nil {
				return bins{}, fmt.Errorf("go build %s: %v\n%s(for cgo: eval \"$(make -s env)\")", pkg, err, msg)
			}
		}
		return b, nil
	})
)

// TestMain removes the binaries built for the run.
func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func build(t *testing.T) bins {
	t.Helper()
	b, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type result struct {
	code           int
	stdout, stderr string
	killed         bool
}

func run(t *testing.T, env []string, bin string, args ...string) result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			r.killed = true
		}
	case err != nil:
		t.Fatalf("%s: %v", bin, err)
	}
	return r
}

// fleetDir makes a keys directory and returns a function exporting bundles.
func fleetDir(t *testing.T, b bins, initArgs ...string) (keys string, export func(name string, version int, model string, extra ...string) string) {
	keys = filepath.Join(t.TempDir(), "keys")
	r := run(t, nil, b.fleet, append([]string{"keys", "init", "--dir", keys}, initArgs...)...)
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "OFFLINE")
	n := 0
	export = func(name string, version int, model string, extra ...string) string {
		n++
		out := filepath.Join(t.TempDir(), "bundle")
		args := append([]string{"models", "export", "--keys", keys, "--name", name, "--version", itoa(version), "--out", out}, extra...)
		r := run(t, nil, b.fleet, append(args, testmodel.Path(t, model))...)
		require.Equal(t, 0, r.code, r.stderr)
		return out
	}
	return keys, export
}

func itoa(n int) string { return strconv.Itoa(n) }

func requireLoadable(t *testing.T, dataDir string, versions ...int64) int64 {
	t.Helper()
	s, err := store.Open(store.DirIn(dataDir), store.Options{})
	require.NoError(t, err)
	b, e, err := s.Load("face")
	require.NoError(t, err, "no loadable current model")
	_, err = tflite.Read(b)
	require.NoError(t, err, "current model does not parse as TFLite")
	require.Contains(t, versions, e.Manifest.Version)
	left, err := os.ReadDir(filepath.Join(store.DirIn(dataDir), "tmp"))
	require.NoError(t, err)
	require.Empty(t, left, "Open left temporary files")
	return e.Manifest.Version
}

// TestCommands drives the real binaries through the attacks a bundle on a
// USB stick can carry; each refusal must be one line on stderr.
func TestCommands(t *testing.T) {
	b := build(t)
	keys, export := fleetDir(t, b)
	root := filepath.Join(keys, "root.json")
	v1 := export("face", 1, testmodel.FaceShort)
	v2 := export("face", 2, testmodel.FaceFull)
	copyDir := func(src string) string {
		dst := filepath.Join(t.TempDir(), "copy")
		require.NoError(t, os.CopyFS(dst, os.DirFS(src)))
		return dst
	}
	flipped := copyDir(v2)
	mb, err := os.ReadFile(filepath.Join(flipped, bundle.ModelFile))
	require.NoError(t, err)
	mb[len(mb)/3] ^= 1
	require.NoError(t, os.WriteFile(filepath.Join(flipped, bundle.ModelFile), mb, 0o644))
	mixed := copyDir(v2)
	m1, _ := os.ReadFile(filepath.Join(v1, bundle.ModelFile))
	require.NoError(t, os.WriteFile(filepath.Join(mixed, bundle.ModelFile), m1, 0o644))
	_, otherExport := fleetDir(t, b)
	foreign := otherExport("face", 3, testmodel.FaceShort)

	data := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		want string // in stdout for 0, in stderr otherwise
	}{
		{"verify valid", []string{"verify", "--root", root, v1}, 0, "ok: face v1"},
		{"verify changed byte", []string{"verify", "--root", root, flipped}, 1, "refused: model bytes do not match the signed digest"},
		{"verify mix-and-match", []string{"verify", "--root", root, mixed}, 1, "refused: model"},
		{"verify other fleet's bundle", []string{"verify", "--root", root, foreign}, 1, "refused: not signed by enough trusted keys"},
		{"verify without root", []string{"verify", v1}, 2, "--root"},
		{"install v2", []string{"install", "--root", root, "--data-dir", data, v2}, 0, "installed: face v2"},
		{"install v1 is a rollback", []string{"install", "--root", root, "--data-dir", data, v1}, 1, "refused: rollback to an older version"},
		{"install changed byte", []string{"install", "--root", root, "--data-dir", data, flipped}, 1, "refused: model bytes do not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := run(t, nil, b.agent, tt.args...)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", r.code, tt.code, r.stdout, r.stderr)
			}
			out := r.stdout
			if tt.code != 0 {
				out = r.stderr
				if tt.code == 1 && strings.Count(strings.TrimSpace(out), "\n") != 0 {
					t.Fatalf("want one line on stderr, got:\n%s", out)
				}
			}
			require.Contains(t, out, tt.want)
		})
	}
	require.Equal(t, int64(2), requireLoadable(t, data, 2))

	// Freeze: once the release expired it cannot be installed, but the model
	// already installed keeps being served. The agent's clock is moved past
	// the expiry (--test-now, test builds only) instead of waiting for it.
	expiring := export("face", 3, testmodel.FaceShort, "--expires", "1h")
	r := run(t, nil, b.agent, "install", "--root", root, "--data-dir", data, expiring)
	require.Equal(t, 0, r.code, r.stderr)
	r = run(t, nil, b.agent, "verify", "--root", root, expiring)
	require.Equal(t, 0, r.code, "valid until it expires: %s", r.stderr)
	later := time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339)
	r = run(t, nil, b.agent, "verify", "--root", root, "--test-now", later, expiring)
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "refused: signed metadata expired")
	data2 := t.TempDir()
	r = run(t, nil, b.agent, "install", "--root", root, "--data-dir", data2, "--test-now", later, expiring)
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "refused: signed metadata expired")
	require.Equal(t, int64(3), requireLoadable(t, data, 3), "an expired release must not stop serving")
}

// TestKeyRotationAndRevocation rotates the targets key through the CLI: the
// device follows the chain from its provisioned root, stores the new root,
// and from then on refuses what the revoked key signs.
func TestKeyRotationAndRevocation(t *testing.T) {
	b := build(t)
	keys, export := fleetDir(t, b)
	provisioned := filepath.Join(t.TempDir(), "root.json")
	rb, err := os.ReadFile(filepath.Join(keys, "root.json"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(provisioned, rb, 0o644))
	oldKeys, err := filepath.Glob(filepath.Join(keys, "private", "targets-*.key"))
	require.NoError(t, err)
	stolen := filepath.Join(t.TempDir(), "stolen.key")
	kb, _ := os.ReadFile(oldKeys[0])
	require.NoError(t, os.WriteFile(stolen, kb, 0o600))

	r := run(t, nil, b.fleet, "keys", "rotate", "--dir", keys, "--role", "targets")
	require.Equal(t, 0, r.code, r.stderr)
	r = run(t, nil, b.fleet, "keys", "rotate", "--dir", keys, "--role", "root")
	require.Equal(t, 0, r.code, r.stderr)
	data := t.TempDir()
	v1 := export("face", 1, testmodel.FaceShort)
	r = run(t, nil, b.agent, "install", "--root", provisioned, "--data-dir", data, v1)
	require.Equal(t, 0, r.code, r.stderr)

	// The attacker signs with the stolen (revoked) key, using a keys dir
	// that still believes in root v1, and ships only root v1.
	evil := filepath.Join(t.TempDir(), "evil")
	require.NoError(t, os.MkdirAll(filepath.Join(evil, "roots"), 0o700))
	require.NoError(t, os.MkdirAll(filepath.Join(evil, "private"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(evil, "root.json"), rb, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(evil, "roots", "1.json"), rb, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(evil, "private", filepath.Base(oldKeys[0])), kb, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(evil, "state.json"), []byte(`{"serial":100}`), 0o600))
	out := filepath.Join(t.TempDir(), "evil-bundle")
	r = run(t, nil, b.fleet, "models", "export", "--keys", evil, "--name", "face", "--version", "9", "--out", out, testmodel.Path(t, testmodel.Selfie))
	require.Equal(t, 0, r.code, r.stderr)
	// A fresh device provisioned with root v1 cannot tell...
	r = run(t, nil, b.agent, "verify", "--root", provisioned, out)
	require.Equal(t, 0, r.code, "root v1 alone still trusts the old key: %s", r.stderr)
	// ...but one that installed anything since the rotation can, even when
	// told to trust the provisioned root.
	r = run(t, nil, b.agent, "install", "--root", provisioned, "--data-dir", data, out)
	require.Equal(t, 1, r.code, r.stdout)
	require.Contains(t, r.stderr, "refused: not signed by enough trusted keys")
	require.Equal(t, int64(1), requireLoadable(t, data, 1))
}

// TestInstallCrash kills install with SIGKILL at every crash point of the
// store and checks that exactly one loadable current model remains, then
// that a second attempt completes.
func TestInstallCrash(t *testing.T) {
	b := build(t)
	keys, export := fleetDir(t, b)
	root := filepath.Join(keys, "root.json")
	v1 := export("face", 1, testmodel.FaceShort)
	v2 := export("face", 2, testmodel.FaceFull)
	switched := false // the state.json rename is the moment v2 becomes current
	for _, point := range store.CrashPoints {
		switched = switched || point == "state-renamed"
		want := int64(1)
		if switched {
			want = 2
		}
		t.Run(point, func(t *testing.T) {
			data := t.TempDir()
			r := run(t, nil, b.agent, "install", "--root", root, "--data-dir", data, v1)
			require.Equal(t, 0, r.code, r.stderr)
			r = run(t, []string{"OUTPOST_CRASHPOINT=" + point}, b.agent, "install", "--root", root, "--data-dir", data, v2)
			require.True(t, r.killed, "crash point %s not reached: exit %d %s", point, r.code, r.stderr)
			require.Equal(t, want, requireLoadable(t, data, 1, 2))
			r = run(t, nil, b.agent, "install", "--root", root, "--data-dir", data, v2)
			require.Equal(t, 0, r.code, r.stderr)
			require.Equal(t, int64(2), requireLoadable(t, data, 2))
			s, err := store.Open(store.DirIn(data), store.Options{})
			require.NoError(t, err)
			p, err := s.Previous("face")
			require.NoError(t, err)
			require.Equal(t, int64(1), p.Manifest.Version)
			blobs, err := os.ReadDir(filepath.Join(store.DirIn(data), "blobs", "sha256"))
			require.NoError(t, err)
			require.Len(t, blobs, 2, "orphan blobs after recovery")
		})
	}
	// A crash during the very first install leaves no model or a whole one,
	// and no root or a whole one; installing again then completes.
	for _, point := range append(append([]string(nil), store.RootCrashPoints...), store.CrashPoints...) {
		data := t.TempDir()
		r := run(t, []string{"OUTPOST_CRASHPOINT=" + point}, b.agent, "install", "--root", root, "--data-dir", data, v1)
		require.True(t, r.killed, point)
		s, err := store.Open(store.DirIn(data), store.Options{})
		require.NoError(t, err)
		if _, _, err := s.Load("face"); err != nil && !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("first install killed at %s: %v", point, err)
		}
		if b, err := s.Root(); err == nil {
			_, err = trust.LoadRoot(b)
			require.NoError(t, err, "stored root after a crash at %s", point)
		} else {
			require.ErrorIs(t, err, store.ErrNotFound)
		}
		r = run(t, nil, b.agent, "install", "--root", root, "--data-dir", data, v1)
		require.Equal(t, 0, r.code, "install after a crash at %s: %s", point, r.stderr)
		require.Equal(t, int64(1), requireLoadable(t, data, 1))
	}
}
