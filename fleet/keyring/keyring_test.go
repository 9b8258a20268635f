package keyring

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/stretchr/testify/require"
)

func model(v int64) manifest.Manifest {
	return manifest.Manifest{Name: "m", Version: v, SHA256: strings.Repeat("1", 64), Length: 1, Runtime: "tflite",
		Inputs:  []manifest.Tensor{{Name: "i", DataType: "FP32", Shape: []int{1}}},
		Outputs: []manifest.Tensor{{Name: "o", DataType: "FP32", Shape: []int{1}}}}
}

func TestInitOpenSign(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	k, err := Init(dir, Options{TargetsKeys: 3, TargetsThreshold: 2})
	require.NoError(t, err)
	_, err = Init(dir, Options{})
	require.ErrorIs(t, err, ErrExists)
	for _, f := range append(k.KeyFiles(trust.RoleRoot), k.KeyFiles(trust.RoleTargets)...) {
		st, err := os.Stat(f)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), f)
	}
	require.Len(t, k.KeyFiles(trust.RoleTargets), 3)

	k, err = Open(dir, Options{})
	require.NoError(t, err)
	now := time.Now()
	var serials []int64
	for v := int64(1); v <= 2; v++ {
		b, err := k.SignRelease(model(v), time.Hour)
		require.NoError(t, err)
		rel, err := k.Root().VerifyRelease(b, now)
		require.NoError(t, err)
		serials = append(serials, rel.Serial)
	}
	require.Equal(t, []int64{1, 2}, serials, "serials must grow across releases")
}

func TestRotateRevokes(t *testing.T) {
	dir := t.TempDir()
	k, err := Init(dir, Options{})
	require.NoError(t, err)
	v1 := k.Root()
	old, err := k.SignRelease(model(1), time.Hour)
	require.NoError(t, err)
	_, err = k.Rotate(trust.RoleTargets)
	require.NoError(t, err)
	_, err = k.Rotate(trust.RoleRoot)
	require.NoError(t, err)
	roots, err := k.Roots()
	require.NoError(t, err)
	require.Len(t, roots, 3)
	v3, err := v1.Chain(roots)
	require.NoError(t, err)
	require.Equal(t, int64(3), v3.Doc.Version)
	_, err = v3.VerifyRelease(old, time.Now())
	require.ErrorIs(t, err, dsse.ErrThreshold, "a release signed by the rotated-out key")
	fresh, err := k.SignRelease(model(2), time.Hour)
	require.NoError(t, err)
	_, err = v3.VerifyRelease(fresh, time.Now())
	require.NoError(t, err)
}

func TestRotateNeedsOfflineRootKey(t *testing.T) {
	dir := t.TempDir()
	k, err := Init(dir, Options{})
	require.NoError(t, err)
	for _, f := range k.KeyFiles(trust.RoleRoot) {
		require.NoError(t, os.Remove(f)) // moved offline, as keys init advises
	}
	k, err = Open(dir, Options{})
	require.NoError(t, err)
	_, err = k.SignRelease(model(1), time.Hour)
	require.NoError(t, err, "releases need only the targets key")
	_, err = k.Rotate(trust.RoleTargets)
	if !errors.Is(err, ErrMissingKey) {
		t.Fatalf("got %v, want ErrMissingKey", err)
	}
}

func TestSigners(t *testing.T) {
	k, err := Init(t.TempDir(), Options{TargetsKeys: 2, TargetsThreshold: 2})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := k.Signers(trust.RoleTargets)
	if err != nil || len(keys) != 2 {
		t.Fatalf("Signers(targets) = %d keys, %v; want 2", len(keys), err)
	}
	if _, err := k.Signers("commands"); !errors.Is(err, ErrMissingKey) {
		t.Fatalf("Signers(commands) on a root without the role: got %v, want ErrMissingKey", err)
	}
}
