package tflite

import (
	"errors"
	"testing"

	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func fp32(name string, shape ...int) manifest.Tensor {
	return manifest.Tensor{Name: name, DataType: "FP32", Shape: shape}
}

func TestReadTestModels(t *testing.T) {
	tests := []struct {
		model   string
		inputs  []manifest.Tensor
		outputs []manifest.Tensor
	}{
		{testmodel.FaceShort,
			[]manifest.Tensor{fp32("input", 1, 128, 128, 3)},
			[]manifest.Tensor{fp32("regressors", 1, 896, 16), fp32("classificators", 1, 896, 1)}},
		{testmodel.FaceFull,
			[]manifest.Tensor{fp32("input", 1, 192, 192, 3)},
			[]manifest.Tensor{fp32("reshaped_regressor_face_4", 1, 2304, 16), fp32("reshaped_classifier_face_4", 1, 2304, 1)}},
		{testmodel.Hand,
			[]manifest.Tensor{fp32("input_1", 1, 224, 224, 3)},
			[]manifest.Tensor{fp32("Identity", 1, 63), fp32("Identity_1", 1, 1), fp32("Identity_2", 1, 1), fp32("Identity_3", 1, 63)}},
		{testmodel.Selfie,
			[]manifest.Tensor{fp32("input_1", 1, 256, 256, 3)},
			[]manifest.Tensor{fp32("activation_10", 1, 256, 256, 1)}},
	}
	for _, tt := range tests {
		t.Run(tt.model, func(t *testing.T) {
			m, err := Read(testmodel.Read(t, tt.model))
			require.NoError(t, err)
			assert.Equal(t, uint32(3), m.SchemaVersion)
			assert.Equal(t, tt.inputs, m.Inputs)
			assert.Equal(t, tt.outputs, m.Outputs)
		})
	}
}

func TestReadRefusesDamage(t *testing.T) {
	good := testmodel.Read(t, testmodel.FaceShort)
	badRoot := append([]byte(nil), good...)
	badRoot[0], badRoot[1], badRoot[2], badRoot[3] = 0xff, 0xff, 0xff, 0x7f
	tests := []struct {
		name string
		b    []byte
	}{
		{"empty", nil},
		{"short", good[:7]},
		{"no identifier", append([]byte{0, 0, 0, 0, 'X', 'X', 'X', 'X'}, good[8:]...)},
		{"root offset out of range", badRoot},
		{"truncated to header", good[:64]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Read(tt.b)
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("got %v, want ErrFormat", err)
			}
		})
	}
}

// FuzzRead checks that no input makes the reader panic or hang, and that
// whatever it accepts describes tensors a manifest would accept.
func FuzzRead(f *testing.F) {
	good := testmodel.Read(f, testmodel.FaceShort)
	f.Add(smallModel())
	f.Add(good[:64])
	f.Add(good[:4096])
	f.Add([]byte("\x10\x00\x00\x00TFL3"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Read(b)
		if err != nil {
			return
		}
		for _, ts := range append(append([]manifest.Tensor(nil), m.Inputs...), m.Outputs...) {
			if ts.DataType == "" {
				t.Fatalf("tensor %q without datatype", ts.Name)
			}
			if len(ts.Shape) > 16 {
				t.Fatalf("tensor %q has %d dims", ts.Name, len(ts.Shape))
			}
		}
	})
}
