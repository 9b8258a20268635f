package tensor

import (
	"encoding/binary"
	"math"
)

// Each calls fn with every element of data (little-endian, as tensors hold
// it) as a float64, for the numeric datatypes with a fixed size other than
// FP16. It returns false, calling nothing, for BYTES, FP16, unknown types and
// data that is not a whole number of elements.
func Each(dt DataType, data []byte, fn func(float64)) bool {
	n := dt.Size()
	if n == 0 || dt == FP16 || len(data)%n != 0 {
		return false
	}
	le := binary.LittleEndian
	switch dt {
	case FP32:
		for i := 0; i+4 <= len(data); i += 4 {
			fn(float64(math.Float32frombits(le.Uint32(data[i:]))))
		}
	case FP64:
		for i := 0; i+8 <= len(data); i += 8 {
			fn(math.Float64frombits(le.Uint64(data[i:])))
		}
	case Uint8, Bool:
		for _, b := range data {
			fn(float64(b))
		}
	case Int8:
		for _, b := range data {
			fn(float64(int8(b)))
		}
	case Uint16:
		for i := 0; i+2 <= len(data); i += 2 {
			fn(float64(le.Uint16(data[i:])))
		}
	case Int16:
		for i := 0; i+2 <= len(data); i += 2 {
			fn(float64(int16(le.Uint16(data[i:]))))
		}
	case Uint32:
		for i := 0; i+4 <= len(data); i += 4 {
			fn(float64(le.Uint32(data[i:])))
		}
	case Int32:
		for i := 0; i+4 <= len(data); i += 4 {
			fn(float64(int32(le.Uint32(data[i:]))))
		}
	case Uint64:
		for i := 0; i+8 <= len(data); i += 8 {
			fn(float64(le.Uint64(data[i:])))
		}
	case Int64:
		for i := 0; i+8 <= len(data); i += 8 {
			fn(float64(int64(le.Uint64(data[i:]))))
		}
	default:
		return false
	}
	return true
}
