package export

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/models/bundle"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/models/tflite"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/stretchr/testify/require"
)

func TestExportVerifies(t *testing.T) {
	k, err := keyring.Init(t.TempDir(), keyring.Options{})
	require.NoError(t, err)
	tests := []struct {
		model   string
		name    string
		version int64
		input   string
		shape   []int
	}{
		{testmodel.FaceShort, "face", 1, "input", []int{1, 128, 128, 3}},
		{testmodel.Hand, "hand", 4, "input_1", []int{1, 224, 224, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "b")
			m, err := Export(k, Options{Name: tt.name, Version: tt.version, Model: testmodel.Path(t, tt.model), Out: out, Expires: time.Hour})
			require.NoError(t, err)
			require.Equal(t, tt.input, m.Inputs[0].Name)
			require.Equal(t, tt.shape, m.Inputs[0].Shape)
			v, err := bundle.Verify(out, k.Root(), bundle.Options{})
			require.NoError(t, err)
			require.Equal(t, m.SHA256, v.Manifest().SHA256)
			_, err = bundle.Verify(out, k.Root(), bundle.Options{Now: time.Now().Add(2 * time.Hour)})
			require.ErrorIs(t, err, trust.ErrExpired, "a bundle must expire")
		})
	}
	refused := []struct {
		name string
		opts Options
		want error
	}{
		{"bad name", Options{Name: "Bad/Name", Version: 1, Model: testmodel.Path(t, testmodel.FaceShort)}, manifest.ErrInvalid},
		{"version zero", Options{Name: "face", Version: 0, Model: testmodel.Path(t, testmodel.FaceShort)}, manifest.ErrInvalid},
		{"no model file", Options{Name: "face", Version: 1, Model: filepath.Join(t.TempDir(), "missing.tflite")}, os.ErrNotExist},
		{"not a model", Options{Name: "face", Version: 1, Model: writeFile(t, []byte("not a flatbuffer"))}, tflite.ErrFormat},
	}
	for _, tt := range refused {
		out := filepath.Join(t.TempDir(), "b")
		_, err = Export(k, Options{Name: tt.opts.Name, Version: tt.opts.Version, Model: tt.opts.Model, Out: out})
		require.ErrorIs(t, err, tt.want, tt.name)
		_, serr := os.Stat(out)
		require.ErrorIs(t, serr, os.ErrNotExist, "%s: a refused export wrote %s", tt.name, out)
	}
	// An output directory in use is refused, and left as it was.
	used := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(used, "keep"), []byte("x"), 0o644))
	_, err = Export(k, Options{Name: "face", Version: 1, Model: testmodel.Path(t, testmodel.FaceShort), Out: used})
	require.ErrorIs(t, err, bundle.ErrNotEmpty)
	ents, err := os.ReadDir(used)
	require.NoError(t, err)
	require.Len(t, ents, 1, "files in the used output directory")
}

func writeFile(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(p, b, 0o644))
	return p
}

// TestExportGolden signs golden vectors into the manifest; the device reads
// them back from the verified release. (The expected outputs here are zeros:
// the fleet has no runtime, so real ones come from whoever trained the model.)
func TestExportGolden(t *testing.T) {
	k, err := keyring.Init(t.TempDir(), keyring.Options{})
	require.NoError(t, err)
	g := manifest.Golden{Tolerance: 1e-3,
		Inputs:  []manifest.Data{{Name: "input", DataType: "FP32", Shape: []int{1, 128, 128, 3}, Data: make([]byte, 4*128*128*3)}},
		Outputs: []manifest.Data{{Name: "classificators", DataType: "FP32", Shape: []int{1, 896, 1}, Data: make([]byte, 4*896)}}}
	out := filepath.Join(t.TempDir(), "b")
	_, err = Export(k, Options{Name: "face", Version: 1, Model: testmodel.Path(t, testmodel.FaceShort), Out: out, Golden: []manifest.Golden{g}})
	require.NoError(t, err)
	v, err := bundle.Verify(out, k.Root(), bundle.Options{})
	require.NoError(t, err)
	require.Len(t, v.Manifest().Golden, 1)
	require.Equal(t, g.Inputs[0].Shape, v.Manifest().Golden[0].Inputs[0].Shape)

	g.Outputs[0].Name = "nope"
	_, err = Export(k, Options{Name: "face", Version: 2, Model: testmodel.Path(t, testmodel.FaceShort), Out: t.TempDir(), Golden: []manifest.Golden{g}})
	require.ErrorIs(t, err, manifest.ErrInvalid)
}
