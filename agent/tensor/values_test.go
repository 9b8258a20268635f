package tensor

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestEach(t *testing.T) {
	le := binary.LittleEndian
	f32 := le.AppendUint32(le.AppendUint32(nil, math.Float32bits(1.5)), math.Float32bits(-2))
	i16 := le.AppendUint16(le.AppendUint16(nil, uint16(0xffff)), 7)
	i64 := le.AppendUint64(nil, uint64(math.MaxUint64)) // -1 as INT64
	for _, tc := range []struct {
		dt   DataType
		data []byte
		want []float64
		ok   bool
	}{
		{FP32, f32, []float64{1.5, -2}, true},
		{Int16, i16, []float64{-1, 7}, true},
		{Uint16, i16, []float64{65535, 7}, true},
		{Int8, []byte{0xff, 1}, []float64{-1, 1}, true},
		{Uint8, []byte{0xff, 1}, []float64{255, 1}, true},
		{Int64, i64, []float64{-1}, true},
		{FP32, f32[:7], nil, false},         // not whole elements
		{FP16, []byte{0, 0x3c}, nil, false}, // not supported
		{Bytes, []byte("abc"), nil, false},
		{"FP8", []byte{1}, nil, false},
	} {
		var got []float64
		ok := Each(tc.dt, tc.data, func(v float64) { got = append(got, v) })
		assert.Equal(t, tc.ok, ok, tc.dt)
		assert.Equal(t, tc.want, got, tc.dt)
	}
}
