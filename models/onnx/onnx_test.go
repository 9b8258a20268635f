package onnx_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/onnx"
	"github.com/outpost-edge/outpost/models/testmodel"
)

func TestReadSilero(t *testing.T) {
	m, err := onnx.Read(testmodel.Read(t, testmodel.SileroVAD))
	require.NoError(t, err)
	assert.Equal(t, int64(8), m.IRVersion)
	assert.Equal(t, int64(16), m.Opset())
	assert.Equal(t, []onnx.Tensor{
		{Name: "input", DataType: "FP32", Shape: []int{-1, -1}, DimNames: []string{"", ""}},
		{Name: "state", DataType: "FP32", Shape: []int{2, -1, 128}, DimNames: []string{"", "", ""}},
		{Name: "sr", DataType: "INT64", Shape: []int{}, DimNames: []string{}},
	}, m.Inputs)
	assert.Equal(t, []onnx.Tensor{
		{Name: "output", DataType: "FP32", Shape: []int{-1, 1}, DimNames: []string{"", ""}},
		{Name: "stateN", DataType: "FP32", Shape: []int{-1, -1, -1}, DimNames: []string{"", "", ""}},
	}, m.Outputs)
	in, out := m.Manifest()
	mf := manifest.Manifest{Name: "vad", Version: 1, SHA256: "0000000000000000000000000000000000000000000000000000000000000000",
		Length: 1, Runtime: manifest.RuntimeONNX, Inputs: in, Outputs: out}
	assert.NoError(t, mf.Validate(), "a manifest made from the signature is valid")
}

func TestReadTiny(t *testing.T) {
	m, err := onnx.Read(testmodel.TinyONNX(99999))
	require.NoError(t, err)
	assert.Equal(t, int64(99999), m.Opset())
	assert.Equal(t, "outpost-testmodel", m.Producer)
	require.Len(t, m.Inputs, 1)
	assert.Equal(t, []int{1, 4}, m.Inputs[0].Shape)
}

func TestReadBad(t *testing.T) {
	silero := testmodel.Read(t, testmodel.SileroVAD)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"text", []byte("hello")},
		{"tflite", testmodel.Read(t, testmodel.FaceShort)},
		{"truncated", silero[:4096]},
		{"no graph", []byte{0x08, 0x07}},
		{"bad varint", []byte{0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}},
		{"length past the end", []byte{0x08, 0x07, 0x3a, 0x7f, 0x00}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := onnx.Read(tc.data)
			assert.True(t, errors.Is(err, onnx.ErrFormat), "got %v, want ErrFormat", err)
		})
	}
}

// FuzzRead: no input makes Read panic or loop; what it accepts has outputs.
func FuzzRead(f *testing.F) {
	f.Add(testmodel.TinyONNX(13))
	f.Add(testmodel.TinyONNX(99999))
	if b, err := os.ReadFile(filepath.Join(testmodel.Dir(f), testmodel.SileroVAD)); err == nil {
		f.Add(b[:8192])
	}
	f.Add([]byte{0x08, 0x07, 0x3a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := onnx.Read(b)
		if err != nil {
			if !errors.Is(err, onnx.ErrFormat) {
				t.Fatalf("error %v is not ErrFormat", err)
			}
			return
		}
		if len(m.Outputs) == 0 {
			t.Fatal("accepted a model without outputs")
		}
		for _, ts := range [][]onnx.Tensor{m.Inputs, m.Outputs} {
			for _, x := range ts {
				if len(x.Shape) != len(x.DimNames) {
					t.Fatalf("tensor %q: %d dims, %d names", x.Name, len(x.Shape), len(x.DimNames))
				}
			}
		}
	})
}
