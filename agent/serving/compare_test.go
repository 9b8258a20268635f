package serving

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/outpost-edge/outpost/agent/tensor"
)

func fp32(vs ...float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

// TestCompareOutputs: agreement in real values (each version's output
// dequantized with its own scale), NaN and infinite elements left out of
// the differences, top-1 per row of a score vector, and outputs that
// cannot be compared (other element counts, BYTES) marked as such.
func TestCompareOutputs(t *testing.T) {
	nan := float32(math.NaN())
	f32 := func(shape ...int) tensor.Info { return tensor.Info{DataType: tensor.FP32, Shape: shape} }
	u8 := func(scale float32, zero int32, shape ...int) tensor.Info {
		return tensor.Info{DataType: tensor.Uint8, Shape: shape, Quantization: &tensor.Quantization{Scale: scale, ZeroPoint: zero}}
	}
	for _, tc := range []struct {
		name string
		bi   tensor.Info
		b    []byte
		ci   tensor.Info
		c    []byte
		want OutputAgreement
	}{
		{"equal", f32(1, 3), fp32(0.1, 0.7, 0.2), f32(1, 3), fp32(0.1, 0.7, 0.2),
			OutputAgreement{Compared: true, Top1Rows: 1, Top1Agree: 1}},
		// The same real values 0, 1, 2 under two quantizations.
		{"quantized, other scales", u8(0.5, 10, 1, 3), []byte{10, 12, 14}, u8(0.25, 0, 1, 3), []byte{0, 4, 8},
			OutputAgreement{Compared: true, Top1Rows: 1, Top1Agree: 1}},
		{"quantized against float", u8(0.5, 10, 1, 2), []byte{10, 13}, f32(1, 2), fp32(0, 2),
			OutputAgreement{Compared: true, MaxAbsDiff: 0.5, MeanAbsDiff: 0.25, Top1Rows: 1, Top1Agree: 1}},
		{"NaN left out", f32(3), fp32(1, nan, 3), f32(3), fp32(1, 2, 5),
			OutputAgreement{Compared: true, MaxAbsDiff: 2, MeanAbsDiff: 1, Top1Rows: 1, Top1Agree: 1}},
		{"top-1 per row", f32(2, 2), fp32(0.1, 0.9, 0.8, 0.2), f32(2, 2), fp32(0.2, 0.7, 0.3, 0.6),
			OutputAgreement{Compared: true, MaxAbsDiff: 0.5, MeanAbsDiff: (0.1 + 0.2 + 0.5 + 0.4) / 4, Top1Rows: 2, Top1Agree: 1}},
		{"other element counts", f32(3), fp32(1, 2, 3), f32(2), fp32(1, 2), OutputAgreement{}},
		{"bytes", tensor.Info{DataType: tensor.Bytes, Shape: []int{1}}, []byte("ab"), tensor.Info{DataType: tensor.Bytes, Shape: []int{1}}, []byte("ab"), OutputAgreement{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got OutputAgreement
			got.compare(tc.bi, tc.b, tc.ci, tc.c, nil, nil)
			if got.Compared != tc.want.Compared || got.Top1Rows != tc.want.Top1Rows || got.Top1Agree != tc.want.Top1Agree ||
				math.Abs(got.MaxAbsDiff-tc.want.MaxAbsDiff) > 1e-6 || math.Abs(got.MeanAbsDiff-tc.want.MeanAbsDiff) > 1e-6 {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
