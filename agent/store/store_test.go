package store

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/crashpoint"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/models/tflite"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/stretchr/testify/require"
)

type model struct {
	m     manifest.Manifest
	bytes []byte
}

func describe(t *testing.T, name string, version int64, file string) model {
	t.Helper()
	b := testmodel.Read(t, file)
	sig, err := tflite.Read(b)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	return model{manifest.Manifest{Name: name, Version: version, SHA256: hex.EncodeToString(sum[:]),
		Length: int64(len(b)), Runtime: manifest.RuntimeTFLite, Inputs: sig.Inputs, Outputs: sig.Outputs}, b}
}

func install(s *Store, md model, serial int64) error {
	_, err := s.Install(InstallRequest{Manifest: md.m, Serial: serial, Release: []byte("{}"), Model: bytes.NewReader(md.bytes)})
	return err
}

func versions(t *testing.T, s *Store, name string) (cur, prev int64) {
	t.Helper()
	c, err := s.Current(name)
	require.NoError(t, err)
	p, err := s.Previous(name)
	if err == nil {
		prev = p.Manifest.Version
	} else {
		require.ErrorIs(t, err, ErrNotFound)
	}
	return c.Manifest.Version, prev
}

// TestInstallSequence runs one device's history step by step; each step
// states the error expected and the current/previous versions after it.
func TestInstallSequence(t *testing.T) {
	v1 := describe(t, "face", 1, testmodel.FaceShort)
	v2 := describe(t, "face", 2, testmodel.FaceFull)
	v3 := describe(t, "face", 3, testmodel.FaceShort)
	back1 := v1
	back1.m.Rollback = true
	otherV3 := describe(t, "face", 3, testmodel.Selfie)
	bad := v3
	bad.bytes = testmodel.Read(t, testmodel.Selfie)

	s, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	steps := []struct {
		name      string
		md        model
		serial    int64
		want      error
		cur, prev int64
	}{
		{"first install", v1, 1, nil, 1, 0},
		{"upgrade", v2, 2, nil, 2, 1},
		{"plain rollback refused", v1, 3, ErrRollback, 2, 1},
		{"signed rollback instruction", back1, 4, nil, 1, 2},
		{"replayed rollback instruction", back1, 4, ErrInstalled, 1, 2},
		{"upgrade after rollback", v3, 5, nil, 3, 1},
		{"old rollback instruction replayed", back1, 4, ErrRollback, 3, 1},
		{"same version other bytes", otherV3, 6, ErrConflict, 3, 1},
		{"bytes not matching the manifest", describe(t, "face", 4, testmodel.FaceShort), 7, nil, 4, 3},
	}
	steps[len(steps)-1].md.bytes = bad.bytes
	steps[len(steps)-1].want = manifest.ErrTooLong
	steps[len(steps)-1].cur, steps[len(steps)-1].prev = 3, 1
	for _, st := range steps {
		err := install(s, st.md, st.serial)
		if !errors.Is(err, st.want) || (st.want == nil) != (err == nil) {
			t.Fatalf("%s: got %v, want %v", st.name, err, st.want)
		}
		cur, prev := versions(t, s, "face")
		if cur != st.cur || prev != st.prev {
			t.Fatalf("%s: got current %d previous %d, want %d %d", st.name, cur, prev, st.cur, st.prev)
		}
		b, e, err := s.Load("face")
		require.NoError(t, err, st.name)
		_, err = tflite.Read(b)
		require.NoError(t, err, st.name)
		require.Equal(t, e.Manifest.Length, int64(len(b)))
	}
	// Only current and previous are kept: v1 and v3 share bytes, v2's are gone.
	blobs, err := os.ReadDir(s.path("blobs", "sha256"))
	require.NoError(t, err)
	require.Len(t, blobs, 1)
	tmp, err := os.ReadDir(s.path("tmp"))
	require.NoError(t, err)
	require.Empty(t, tmp, "failed install left temporary files")
}

func TestRollbackAndNames(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	_, err = s.Rollback("face")
	require.ErrorIs(t, err, ErrNotFound)
	require.NoError(t, install(s, describe(t, "face", 1, testmodel.FaceShort), 1))
	_, err = s.Rollback("face")
	require.ErrorIs(t, err, ErrNotFound, "rollback with no previous")
	require.NoError(t, install(s, describe(t, "face", 2, testmodel.FaceFull), 2))
	require.NoError(t, install(s, describe(t, "hand", 7, testmodel.Hand), 3))
	e, err := s.Rollback("face")
	require.NoError(t, err)
	require.Equal(t, int64(1), e.Manifest.Version)
	cur, prev := versions(t, s, "face")
	require.Equal(t, [2]int64{1, 2}, [2]int64{cur, prev})
	names, err := s.Names()
	require.NoError(t, err)
	require.Equal(t, []string{"face", "hand"}, names)
	_, err = s.Current("../etc")
	require.ErrorIs(t, err, ErrNotFound)
}

func TestLoadDetectsCorruption(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	md := describe(t, "face", 1, testmodel.FaceShort)
	require.NoError(t, install(s, md, 1))
	e, err := s.Current("face")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(e.Path, 0o644))
	b := append([]byte(nil), md.bytes...)
	b[100] ^= 0xff
	require.NoError(t, os.WriteFile(e.Path, b, 0o444))
	_, _, err = s.Load("face")
	require.ErrorIs(t, err, ErrCorrupt)
}

func TestOpenRecovers(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	require.NoError(t, install(s, describe(t, "face", 1, testmodel.FaceShort), 1))
	// What a crash can leave: a temporary file, an orphan blob, an entry
	// that never became current, and a name whose first install died.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "tmp", "blob-123"), []byte("x"), 0o644))
	orphan := filepath.Join(dir, "blobs", "sha256", "00ff")
	require.NoError(t, os.WriteFile(orphan, []byte("y"), 0o444))
	stray := filepath.Join(dir, "models", "face", "9.json")
	require.NoError(t, os.WriteFile(stray, []byte("{}"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "models", "hand"), 0o755))
	half := filepath.Join(dir, "models", "hand", "1.json")
	require.NoError(t, os.WriteFile(half, []byte("{}"), 0o644))

	s, err = Open(dir, Options{})
	require.NoError(t, err)
	for _, p := range []string{filepath.Join(dir, "tmp", "blob-123"), orphan, stray, half} {
		_, err := os.Stat(p)
		require.ErrorIs(t, err, os.ErrNotExist, p)
	}
	_, _, err = s.Load("face")
	require.NoError(t, err)
	_, err = s.Current("hand")
	require.ErrorIs(t, err, ErrNotFound)
}

func FuzzParseState(f *testing.F) {
	for _, s := range []string{`{"current":2,"previous":1,"serial":5}`, `{"current":1}`, `{"current":0}`, `{"current":1,"previous":1}`, `[`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseState(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if st.Current < 1 || st.Previous == st.Current {
			t.Fatalf("accepted %+v", st)
		}
	})
}

func TestSaveRootNeverGoesBack(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	require.NoError(t, err)
	_, err = s.Root()
	require.ErrorIs(t, err, ErrNotFound)
	roots := testRoots(t, 3)
	require.NoError(t, s.SaveRoot(roots[1]))
	require.NoError(t, s.SaveRoot(roots[1]), "saving the same version again")
	require.ErrorIs(t, s.SaveRoot(roots[0]), ErrRootVersion)
	require.NoError(t, s.SaveRoot(roots[2]))
	b, err := s.Root()
	require.NoError(t, err)
	require.Equal(t, roots[2].Raw, b)
	// Only an operator's ReplaceRoot goes back.
	require.NoError(t, s.ReplaceRoot(roots[0]))
	b, err = s.Root()
	require.NoError(t, err)
	require.Equal(t, roots[0].Raw, b)
}

// testRoots returns root versions 1..n signed with one fixed root key.
func testRoots(t *testing.T, n int) []*trust.Root {
	k := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	id, key := trust.NewKey(k.Public().(ed25519.PublicKey))
	var out []*trust.Root
	for v := 1; v <= n; v++ {
		b, err := trust.SignRoot(trust.RootDoc{Version: int64(v), Expires: time.Now().Add(time.Hour),
			Keys:  map[string]trust.Key{id: key},
			Roles: map[string]trust.Role{trust.RoleRoot: {KeyIDs: []string{id}, Threshold: 1}, trust.RoleTargets: {KeyIDs: []string{id}, Threshold: 1}}}, k)
		require.NoError(t, err)
		r, err := trust.LoadRoot(b)
		require.NoError(t, err)
		out = append(out, r)
	}
	return out
}

// TestRollbackHelper is not a test: TestRollbackCrash runs the test binary
// again with it, so that Rollback can SIGKILL a process of its own.
func TestRollbackHelper(t *testing.T) {
	dir := os.Getenv("OUTPOST_STORE_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestRollbackCrash")
	}
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	_, err = s.Rollback("face")
	require.NoError(t, err)
}

func TestRollbackCrash(t *testing.T) {
	if !crashpoint.Enabled {
		t.Skip("crash points need -tags outposttest (make test passes it)")
	}
	want := map[string]int64{"rollback-synced": 2, "rollback-renamed": 1}
	for _, point := range RollbackCrashPoints {
		t.Run(point, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{})
			require.NoError(t, err)
			require.NoError(t, install(s, describe(t, "face", 1, testmodel.FaceShort), 1))
			require.NoError(t, install(s, describe(t, "face", 2, testmodel.FaceFull), 2))
			cmd := exec.Command(os.Args[0], "-test.run=^TestRollbackHelper$")
			cmd.Env = append(os.Environ(), "OUTPOST_STORE_HELPER_DIR="+dir, "OUTPOST_CRASHPOINT="+point)
			err = cmd.Run()
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee)
			ws, ok := ee.Sys().(syscall.WaitStatus)
			require.True(t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "helper was not killed: %v", err)
			s, err = Open(dir, Options{})
			require.NoError(t, err)
			b, e, err := s.Load("face")
			require.NoError(t, err)
			_, err = tflite.Read(b)
			require.NoError(t, err)
			require.Equal(t, want[point], e.Manifest.Version)
		})
	}
}
