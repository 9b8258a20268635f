package tensorjson

import (
	"encoding/binary"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// Encoder writes tensor elements as JSON. The zero value is ready to use.
type Encoder struct {
	// B64 writes BYTES elements that are not valid UTF-8 as
	// {"b64": "<standard base64>"} (TF Serving). Without it they are written
	// as strings with each invalid byte replaced by U+FFFD.
	B64 bool
}

// Append writes the elements of a tensor as JSON: arrays nested as shape
// says, or a bare value for a scalar (empty shape). data holds the packed
// little-endian elements, strs the BYTES elements.
//
// Floats are written in the shortest form that reads back to the same
// value (FP16 and FP32 via float32); NaN and infinities, which JSON numbers
// cannot express, are written as the strings "NaN", "Infinity" and
// "-Infinity", which Elements.Decode reads back.
//
// When data (or strs) does not hold exactly the elements shape needs, which
// is a bug in the caller, Append writes the whole elements it holds as a
// flat array rather than panic.
func (enc Encoder) Append(dst []byte, dt tensor.DataType, shape []int, data []byte, strs [][]byte) []byte {
	n, err := tensor.NumElements(shape)
	have := len(strs)
	if dt != tensor.Bytes {
		have = 0
		if sz := dt.Size(); sz > 0 {
			have = len(data) / sz
		}
	}
	if err != nil || n != have {
		return enc.appendFlat(dst, dt, data, strs, 0, have)
	}
	if dt == tensor.FP32 || dt == tensor.FP16 {
		// Reserve for the whole tensor at once: the numbers, and brackets
		// and commas around the innermost rows.
		rows := 1
		if len(shape) > 0 && shape[len(shape)-1] > 0 {
			rows = n / shape[len(shape)-1]
		}
		dst = slices.Grow(dst, n*float32Estimate+rows*3+2*len(shape))
	}
	if len(shape) == 0 {
		return enc.appendRun(dst, dt, data, strs, 0, 1)
	}
	dst, _ = enc.appendNested(dst, dt, shape, data, strs, 0)
	return dst
}

// AppendFlat writes the elements as one flat array, whatever the shape.
func (enc Encoder) AppendFlat(dst []byte, dt tensor.DataType, data []byte, strs [][]byte) []byte {
	have := len(strs)
	if dt != tensor.Bytes {
		have = 0
		if sz := dt.Size(); sz > 0 {
			have = len(data) / sz
		}
	}
	return enc.appendFlat(dst, dt, data, strs, 0, have)
}

func (enc Encoder) appendFlat(dst []byte, dt tensor.DataType, data []byte, strs [][]byte, i, n int) []byte {
	dst = append(dst, '[')
	dst = enc.appendRun(dst, dt, data, strs, i, n)
	return append(dst, ']')
}

// appendNested writes elements from index i on as arrays nested per shape
// and returns the index after them.
func (enc Encoder) appendNested(dst []byte, dt tensor.DataType, shape []int, data []byte, strs [][]byte, i int) ([]byte, int) {
	if len(shape) == 1 {
		return enc.appendFlat(dst, dt, data, strs, i, shape[0]), i + shape[0]
	}
	dst = append(dst, '[')
	for k := range shape[0] {
		if k > 0 {
			dst = append(dst, ',')
		}
		dst, i = enc.appendNested(dst, dt, shape[1:], data, strs, i)
	}
	return append(dst, ']'), i
}

// appendRun writes n elements from index i, separated by commas.
func (enc Encoder) appendRun(dst []byte, dt tensor.DataType, data []byte, strs [][]byte, i, n int) []byte {
	switch dt {
	case tensor.FP32:
		return appendFloats(dst, data[i*4:(i+n)*4], false)
	case tensor.FP16:
		return appendFloats(dst, data[i*2:(i+n)*2], true)
	case tensor.Bytes:
		for k, s := range strs[i : i+n] {
			if k > 0 {
				dst = append(dst, ',')
			}
			if enc.B64 && !utf8.Valid(s) {
				dst = append(dst, `{"b64":"`...)
				dst = AppendBase64(dst, s)
				dst = append(dst, `"}`...)
				continue
			}
			dst = AppendString(dst, s)
		}
		return dst
	}
	sz := dt.Size()
	d := data[i*sz : (i+n)*sz]
	for k := 0; k < len(d); k += sz {
		if k > 0 {
			dst = append(dst, ',')
		}
		switch dt {
		case tensor.FP64:
			f := math.Float64frombits(binary.LittleEndian.Uint64(d[k:]))
			if math.IsNaN(f) || math.IsInf(f, 0) {
				dst = appendSpecial(dst, f)
			} else {
				dst = strconv.AppendFloat(dst, f, 'g', -1, 64)
			}
		case tensor.Bool:
			if d[k] != 0 {
				dst = append(dst, "true"...)
			} else {
				dst = append(dst, "false"...)
			}
		case tensor.Int8:
			dst = strconv.AppendInt(dst, int64(int8(d[k])), 10)
		case tensor.Uint8:
			dst = strconv.AppendUint(dst, uint64(d[k]), 10)
		case tensor.Int16:
			dst = strconv.AppendInt(dst, int64(int16(binary.LittleEndian.Uint16(d[k:]))), 10)
		case tensor.Uint16:
			dst = strconv.AppendUint(dst, uint64(binary.LittleEndian.Uint16(d[k:])), 10)
		case tensor.Int32:
			dst = strconv.AppendInt(dst, int64(int32(binary.LittleEndian.Uint32(d[k:]))), 10)
		case tensor.Uint32:
			dst = strconv.AppendUint(dst, uint64(binary.LittleEndian.Uint32(d[k:])), 10)
		case tensor.Int64:
			dst = strconv.AppendInt(dst, int64(binary.LittleEndian.Uint64(d[k:])), 10)
		case tensor.Uint64:
			dst = strconv.AppendUint(dst, binary.LittleEndian.Uint64(d[k:]), 10)
		}
	}
	return dst
}

// float32Estimate is the bytes a float32 element typically takes with its
// comma, "-0.12345678,": what is reserved per element up front.
const float32Estimate = 12

// appendFloats writes the packed little-endian float32s (or halves) in d,
// separated by commas. It writes straight into dst's spare capacity,
// reserving room for the rest by the estimate whenever that runs short of
// one element's worst case: a reused buffer is not grown, a new one rarely
// more than once.
func appendFloats(dst []byte, d []byte, half bool) []byte {
	size := 4
	if half {
		size = 2
	}
	sep := 0
	for k := 0; k+size <= len(d); k += size {
		l := len(dst)
		if cap(dst)-l <= maxFloat32Len {
			dst = slices.Grow(dst, (len(d)-k)/size*float32Estimate+maxFloat32Len+1)
		}
		b := dst[l : l+maxFloat32Len+1]
		b[0] = ','
		var u uint32
		if half {
			u = math.Float32bits(HalfToFloat(binary.LittleEndian.Uint16(d[k:])))
		} else {
			u = binary.LittleEndian.Uint32(d[k:])
		}
		w := putFloat32(b[sep:], u)
		dst = dst[:l+sep+w]
		sep = 1
	}
	return dst
}

func appendSpecial(dst []byte, f float64) []byte {
	switch {
	case math.IsNaN(f):
		return append(dst, `"NaN"`...)
	case f > 0:
		return append(dst, `"Infinity"`...)
	}
	return append(dst, `"-Infinity"`...)
}

// AppendString writes s as a JSON string. Invalid UTF-8 bytes become U+FFFD;
// <, > and & are left alone (the output is not HTML).
func AppendString(dst []byte, s []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"
