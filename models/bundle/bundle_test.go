package bundle

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/models/tflite"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/stretchr/testify/require"
)

var now = time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)

// fleet is a minimal signer for tests: the real one lives in fleet/keyring,
// which models must not import.
type fleet struct {
	t       testing.TB
	keys    map[string][]ed25519.PrivateKey // by role
	thresh  map[string]int
	roots   [][]byte
	version int64
	serial  int64
}

func newKey(t testing.TB) ed25519.PrivateKey {
	_, k, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	return k
}

func newFleet(t testing.TB, targetsKeys, targetsThreshold int) *fleet {
	f := &fleet{t: t, keys: map[string][]ed25519.PrivateKey{}, thresh: map[string]int{
		trust.RoleRoot: 1, trust.RoleTargets: targetsThreshold}}
	f.keys[trust.RoleRoot] = []ed25519.PrivateKey{newKey(t)}
	for i := 0; i < targetsKeys; i++ {
		f.keys[trust.RoleTargets] = append(f.keys[trust.RoleTargets], newKey(t))
	}
	f.publish(f.keys[trust.RoleRoot], now.Add(365*24*time.Hour))
	return f
}

func (f *fleet) doc(expires time.Time) trust.RootDoc {
	f.version++
	d := trust.RootDoc{Version: f.version, Expires: expires, Keys: map[string]trust.Key{}, Roles: map[string]trust.Role{}}
	for role, keys := range f.keys {
		r := trust.Role{Threshold: f.thresh[role]}
		for _, k := range keys {
			id, key := trust.NewKey(k.Public().(ed25519.PublicKey))
			d.Keys[id] = key
			r.KeyIDs = append(r.KeyIDs, id)
		}
		d.Roles[role] = r
	}
	return d
}

func (f *fleet) publish(signers []ed25519.PrivateKey, expires time.Time) {
	b, err := trust.SignRoot(f.doc(expires), signers...)
	require.NoError(f.t, err)
	f.roots = append(f.roots, b)
}

// rotate replaces the keys of role and publishes the next root signed by the
// old and new root keys.
func (f *fleet) rotate(role string) (old []ed25519.PrivateKey) {
	old = f.keys[role]
	oldRoot := f.keys[trust.RoleRoot]
	f.keys[role] = []ed25519.PrivateKey{newKey(f.t)}
	f.publish(append(append([]ed25519.PrivateKey(nil), oldRoot...), f.keys[trust.RoleRoot]...), now.Add(365*24*time.Hour))
	return old
}

func (f *fleet) anchor(v int) *trust.Root {
	r, err := trust.LoadRoot(f.roots[v-1])
	require.NoError(f.t, err)
	return r
}

func describe(t *testing.T, name string, version int64, model []byte) manifest.Manifest {
	sig, err := tflite.Read(model)
	require.NoError(t, err)
	sum := sha256.Sum256(model)
	return manifest.Manifest{Name: name, Version: version, SHA256: hex.EncodeToString(sum[:]),
		Length: int64(len(model)), Runtime: manifest.RuntimeTFLite, Inputs: sig.Inputs, Outputs: sig.Outputs}
}

func (f *fleet) release(m manifest.Manifest, expires time.Time, signers ...ed25519.PrivateKey) []byte {
	f.serial++
	b, err := trust.SignRelease(trust.Release{Serial: f.serial, Expires: expires, Model: m}, signers...)
	require.NoError(f.t, err)
	return b
}

// editPayload rewrites the signed payload of an envelope, keeping the
// signatures: what an attacker with write access to the bundle can do.
func editPayload(t *testing.T, env []byte, edit func(*trust.Release)) []byte {
	e, err := dsse.Parse(env)
	require.NoError(t, err)
	var rel trust.Release
	require.NoError(t, json.Unmarshal(e.Payload, &rel))
	edit(&rel)
	e.Payload, err = json.Marshal(rel)
	require.NoError(t, err)
	return e.Marshal()
}

func write(t *testing.T, roots [][]byte, release, model []byte) string {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, RootsDir), 0o755))
	for i, r := range roots {
		require.NoError(t, os.WriteFile(filepath.Join(dir, RootsDir, rootName(t, r, i)), r, 0o644))
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, ReleaseFile), release, 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ModelFile), model, 0o644))
	return dir
}

func rootName(t *testing.T, b []byte, i int) string {
	r, err := trust.LoadRoot(b)
	if err != nil { // a forged root: name it by position
		return strconv.Itoa(i+1) + ".json"
	}
	return strconv.FormatInt(r.Doc.Version, 10) + ".json"
}

// TestAttacks is the threat table of docs/SECURITY.md, one row per attack.
func TestAttacks(t *testing.T) {
	face := testmodel.Read(t, testmodel.FaceShort)
	selfie := testmodel.Read(t, testmodel.Selfie)
	later := now.Add(30 * 24 * time.Hour)

	type attack struct {
		name   string
		anchor *trust.Root
		dir    string
		opts   Options
		want   error // nil: must verify
	}
	var tests []attack
	add := func(name string, anchor *trust.Root, dir string, want error) {
		tests = append(tests, attack{name: name, anchor: anchor, dir: dir, opts: Options{Now: now}, want: want})
	}

	f := newFleet(t, 1, 1)
	tk := f.keys[trust.RoleTargets]
	m := describe(t, "face", 3, face)
	good := f.release(m, later, tk...)
	add("valid bundle", f.anchor(1), write(t, f.roots, good, face), nil)
	add("unsigned release", f.anchor(1), write(t, f.roots, f.release(m, later), face), dsse.ErrThreshold)
	add("untrusted key", f.anchor(1), write(t, f.roots, f.release(m, later, newKey(t)), face), dsse.ErrThreshold)
	add("root key signs release", f.anchor(1), write(t, f.roots, f.release(m, later, f.keys[trust.RoleRoot]...), face), dsse.ErrThreshold)
	flipped := append([]byte(nil), face...)
	flipped[len(flipped)/2] ^= 0x01
	add("one byte changed in model", f.anchor(1), write(t, f.roots, good, flipped), manifest.ErrDigest)
	add("model longer than signed", f.anchor(1), write(t, f.roots, good, append(append([]byte(nil), face...), 0)), manifest.ErrTooLong)
	add("model shorter than signed", f.anchor(1), write(t, f.roots, good, face[:len(face)-1]), manifest.ErrTooShort)
	add("another model's bytes (mix-and-match)", f.anchor(1), write(t, f.roots, good, selfie), manifest.ErrTooLong)
	add("another model's bytes cut to the signed length", f.anchor(1), write(t, f.roots, good, selfie[:len(face)]), manifest.ErrDigest)
	edited := editPayload(t, good, func(r *trust.Release) { r.Model.Version = 99 })
	add("metadata edited after signing", f.anchor(1), write(t, f.roots, edited, face), dsse.ErrThreshold)
	retargeted := editPayload(t, good, func(r *trust.Release) {
		o := describe(t, "face", 3, selfie)
		r.Model.SHA256, r.Model.Length = o.SHA256, o.Length
	})
	add("digest swapped to another model's", f.anchor(1), write(t, f.roots, retargeted, selfie), dsse.ErrThreshold)
	add("release expired (freeze)", f.anchor(1), write(t, f.roots, f.release(m, now.Add(-time.Second), tk...), face), trust.ErrExpired)

	old := newFleet(t, 1, 1)
	old.roots = nil
	old.version = 0
	old.publish(old.keys[trust.RoleRoot], now.Add(-time.Hour))
	add("root expired (freeze)", old.anchor(1), write(t, old.roots, old.release(m, later, old.keys[trust.RoleTargets]...), face), trust.ErrExpired)

	th := newFleet(t, 3, 2)
	thk := th.keys[trust.RoleTargets]
	add("threshold 2 of 3 met", th.anchor(1), write(t, th.roots, th.release(m, later, thk[0], thk[2]), face), nil)
	add("threshold 2 of 3, one signature", th.anchor(1), write(t, th.roots, th.release(m, later, thk[1]), face), dsse.ErrThreshold)
	add("threshold 2 of 3, one key signing twice", th.anchor(1), write(t, th.roots, th.release(m, later, thk[1], thk[1]), face), dsse.ErrThreshold)

	rot := newFleet(t, 1, 1)
	oldTargets := rot.rotate(trust.RoleTargets) // root v2 revokes the old targets key
	rot.rotate(trust.RoleRoot)                  // root v3 has a new root key
	newTargets := rot.keys[trust.RoleTargets]
	add("key rotation through the root chain", rot.anchor(1), write(t, rot.roots, rot.release(m, later, newTargets...), face), nil)
	add("revoked targets key, device at v1, bundle carries chain", rot.anchor(1), write(t, rot.roots, rot.release(m, later, oldTargets...), face), dsse.ErrThreshold)
	add("revoked targets key, device stored v3, bundle carries only v1", rot.anchor(3), write(t, rot.roots[:1], rot.release(m, later, oldTargets...), face), dsse.ErrThreshold)
	add("root chain with a gap", rot.anchor(1), write(t, [][]byte{rot.roots[0], rot.roots[2]}, rot.release(m, later, newTargets...), face), trust.ErrRootVersion)

	// An attacker who stole a targets key forges root v2 trusting only keys
	// he holds; the v1 root keys did not sign it.
	forged := newFleet(t, 1, 1)
	evil := newKey(t)
	forged.keys[trust.RoleRoot] = []ed25519.PrivateKey{evil}
	forged.keys[trust.RoleTargets] = []ed25519.PrivateKey{evil}
	forged.publish([]ed25519.PrivateKey{evil}, later)
	add("root v2 not signed by v1's root keys", forged.anchor(1), write(t, forged.roots, forged.release(m, later, evil), face), dsse.ErrThreshold)

	tooNew := describe(t, "face", 4, face)
	tooNew.MinAgentVersion = "2.0.0"
	tests = append(tests, attack{"agent older than the model needs", f.anchor(1),
		write(t, f.roots, f.release(tooNew, later, tk...), face), Options{Now: now, AgentVersion: "1.9.9"}, ErrAgentTooOld})

	fifo := write(t, f.roots, good, face)
	require.NoError(t, os.Remove(filepath.Join(fifo, ModelFile)))
	require.NoError(t, syscall.Mkfifo(filepath.Join(fifo, ModelFile), 0o644))
	add("model is a FIFO that never ends", f.anchor(1), fifo, errNotRegular)
	zero := write(t, f.roots, good, face)
	require.NoError(t, os.Remove(filepath.Join(zero, ModelFile)))
	require.NoError(t, os.Symlink("/dev/zero", filepath.Join(zero, ModelFile)))
	add("model links to /dev/zero", f.anchor(1), zero, errNotRegular)

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := Verify(tt.dir, tt.anchor, tt.opts)
			if tt.want == nil {
				require.NoError(t, err)
				require.Equal(t, m.SHA256, v.Manifest().SHA256)
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if v != nil {
				t.Fatalf("got a verified bundle with error %v", err)
			}
		})
	}
}

// TestOpenRechecks: bytes swapped after Verify are caught while reading.
func TestOpenRechecks(t *testing.T) {
	face := testmodel.Read(t, testmodel.FaceShort)
	f := newFleet(t, 1, 1)
	m := describe(t, "face", 1, face)
	dir := t.TempDir()
	rel := f.release(m, now.Add(time.Hour), f.keys[trust.RoleTargets]...)
	require.NoError(t, Write(dir, f.roots, rel, bytesReader(face)))
	require.ErrorIs(t, Write(dir, f.roots, rel, bytesReader(face)), ErrNotEmpty)
	v, err := Verify(dir, f.anchor(1), Options{Now: now})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, ModelFile), testmodel.Read(t, testmodel.Selfie)[:len(face)], 0o644))
	r, err := v.Open()
	require.NoError(t, err)
	defer r.Close()
	_, err = readAll(r)
	require.ErrorIs(t, err, manifest.ErrDigest)
}

// BenchmarkVerify measures a full offline check (root, signature, expiry,
// sha256 of the model) per model; MB/s is model bytes hashed.
func BenchmarkVerify(b *testing.B) {
	for _, name := range []string{testmodel.FaceShort, testmodel.Hand} {
		b.Run(name, func(b *testing.B) {
			model := testmodel.Read(b, name)
			f := newFleet(b, 1, 1)
			sig, err := tflite.Read(model)
			if err != nil {
				b.Fatal(err)
			}
			sum := sha256.Sum256(model)
			m := manifest.Manifest{Name: "m", Version: 1, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(model)),
				Runtime: manifest.RuntimeTFLite, Inputs: sig.Inputs, Outputs: sig.Outputs}
			dir := b.TempDir()
			if err := Write(dir, f.roots, f.release(m, now.Add(time.Hour), f.keys[trust.RoleTargets]...), bytesReader(model)); err != nil {
				b.Fatal(err)
			}
			anchor := f.anchor(1)
			b.SetBytes(int64(len(model)))
			b.ResetTimer()
			for b.Loop() {
				if _, err := Verify(dir, anchor, Options{Now: now}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
