package tensorjson

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// Elements decodes the elements of one tensor from JSON: a single scalar, or
// arrays nested to any depth that must be rectangular. Numbers are parsed
// straight into Data as packed little-endian values of DataType; BYTES
// elements (JSON strings) go to Strings.
//
// Accepted values per datatype:
//   - integers: integer numbers within the type's range; a number written
//     with a fraction or exponent is accepted when its value is a whole
//     number no larger than 2^53 in magnitude ("2.0", "1e3").
//   - FP16, FP32, FP64: any number within range (rounded to nearest), and
//     the strings "NaN", "Infinity" and "-Infinity".
//   - BOOL: true and false.
//   - BYTES: strings; with B64 set, also {"b64": "<standard base64>"}.
type Elements struct {
	DataType tensor.DataType
	// B64 accepts {"b64": "..."} objects as BYTES elements (TF Serving).
	B64 bool
	// Data and Strings are appended to; set them to reuse buffers.
	Data    []byte
	Strings [][]byte
	// Dims is the nesting the last Decode found, one entry per array level
	// (empty for a scalar); N counts the elements it decoded.
	Dims []int
	N    int

	leaf int // nesting level of scalars, -1 while unknown
}

// Decode reads one value from s, appending its elements. Its errors wrap
// ErrSyntax or ErrValue; value errors name the element's flat index.
func (e *Elements) Decode(s *Scanner) error {
	if !e.DataType.Valid() {
		return valueErrorf("unknown datatype %q", e.DataType)
	}
	e.Dims = e.Dims[:0]
	e.N = 0
	e.leaf = -1
	return e.value(s, 0)
}

func (e *Elements) value(s *Scanner, level int) error {
	if s.Peek() == '[' {
		return e.array(s, level)
	}
	if e.leaf < 0 {
		e.leaf = level
	} else if e.leaf != level {
		return e.raggedErr()
	}
	return e.scalar(s)
}

func (e *Elements) raggedErr() error {
	return valueErrorf("element %d: data is not rectangular (values at different nesting depths)", e.N)
}

func (e *Elements) array(s *Scanner, level int) error {
	if e.leaf >= 0 && level >= e.leaf {
		return e.raggedErr()
	}
	if err := s.enter(); err != nil {
		return err
	}
	if level == len(e.Dims) {
		e.Dims = append(e.Dims, -1)
	}
	s.pos++
	n := 0
	if s.Peek() == ']' {
		s.pos++
	} else {
		for {
			var err error
			// Scalars are decoded here rather than through value, which
			// keeps the common flat and innermost arrays tight.
			if c := s.Peek(); c == '[' {
				err = e.array(s, level+1)
			} else {
				if e.leaf != level+1 {
					if e.leaf >= 0 {
						return e.raggedErr()
					}
					e.leaf = level + 1
				}
				err = e.scalar(s)
			}
			if err != nil {
				return err
			}
			n++
			c := s.Peek()
			if c == ',' {
				s.pos++
				continue
			}
			if c == ']' {
				s.pos++
				break
			}
			return s.Errorf("expected ',' or ']' in array, found %s", s.describe())
		}
	}
	s.depth--
	if e.Dims[level] < 0 {
		e.Dims[level] = n
	} else if e.Dims[level] != n {
		return valueErrorf("element %d: data is not rectangular (an array at depth %d has %d entries, an earlier one %d)",
			e.N, level+1, n, e.Dims[level])
	}
	return nil
}

func (e *Elements) valueErr(format string, args ...any) error {
	return valueErrorf("element %d: %s", e.N, fmt.Sprintf(format, args...))
}

// scalar decodes one element at the scanner's position.
func (e *Elements) scalar(s *Scanner) error {
	dt := e.DataType
	c := s.Peek()
	switch dt {
	case tensor.FP32:
		if c == '"' {
			f, err := e.special(s)
			if err != nil {
				return err
			}
			e.Data = binary.LittleEndian.AppendUint32(e.Data, math.Float32bits(float32(f)))
			break
		}
		num, err := e.number(s)
		if err != nil {
			return err
		}
		f, ok := parseFloat32(num)
		if !ok {
			f64, err := strconv.ParseFloat(unsafeString(num), 32)
			if err != nil {
				return e.valueErr("%s is out of range for FP32", num)
			}
			f = float32(f64)
		}
		e.Data = binary.LittleEndian.AppendUint32(e.Data, math.Float32bits(f))
	case tensor.FP64, tensor.FP16:
		var f float64
		if c == '"' {
			var err error
			if f, err = e.special(s); err != nil {
				return err
			}
		} else {
			num, err := e.number(s)
			if err != nil {
				return err
			}
			if f, err = strconv.ParseFloat(unsafeString(num), 64); err != nil {
				return e.valueErr("%s is out of range for %s", num, dt)
			}
			if dt == tensor.FP16 && math.Abs(f) >= fp16Overflow {
				return e.valueErr("%s is out of range for FP16", num)
			}
		}
		if dt == tensor.FP64 {
			e.Data = binary.LittleEndian.AppendUint64(e.Data, math.Float64bits(f))
		} else {
			e.Data = binary.LittleEndian.AppendUint16(e.Data, FloatToHalf(f))
		}
	case tensor.Bool:
		v, err := s.Bool()
		if err != nil {
			return e.kindErr(s)
		}
		b := byte(0)
		if v {
			b = 1
		}
		e.Data = append(e.Data, b)
	case tensor.Bytes:
		var v []byte
		var err error
		switch {
		case c == '"':
			v, err = s.String()
		case c == '{' && e.B64:
			v, err = e.b64(s)
		default:
			return e.kindErr(s)
		}
		if err != nil {
			return err
		}
		e.Strings = append(e.Strings, v)
	default:
		if err := e.integer(s); err != nil {
			return err
		}
	}
	e.N++
	return nil
}

// number consumes a number, or fails naming the JSON kind found instead.
func (e *Elements) number(s *Scanner) ([]byte, error) {
	c := s.Peek()
	if c != '-' && (c < '0' || c > '9') {
		return nil, e.kindErr(s)
	}
	return s.Number()
}

func (e *Elements) kindErr(s *Scanner) error {
	k := s.Kind()
	if k == "invalid value" {
		return s.Errorf("expected value, found %s", s.describe())
	}
	if k == "object" && e.B64 {
		return e.valueErr("{\"b64\": ...} is only accepted for BYTES, not %s", e.DataType)
	}
	if k == "string" && e.DataType != tensor.Bytes {
		return e.valueErr("string is not a %s value", e.DataType)
	}
	return e.valueErr("%s is not a %s value", k, e.DataType)
}

// special reads the strings that stand for float values JSON numbers
// cannot hold.
func (e *Elements) special(s *Scanner) (float64, error) {
	v, err := s.String()
	if err != nil {
		return 0, err
	}
	switch string(v) {
	case "NaN":
		return math.NaN(), nil
	case "Infinity":
		return math.Inf(1), nil
	case "-Infinity":
		return math.Inf(-1), nil
	}
	return 0, e.valueErr("string %q is not a %s value (only \"NaN\", \"Infinity\" and \"-Infinity\" are)", truncate(v), e.DataType)
}

func truncate(v []byte) string {
	if len(v) > 32 {
		return string(v[:32]) + "..."
	}
	return string(v)
}

// b64 reads {"b64": "..."}.
func (e *Elements) b64(s *Scanner) ([]byte, error) {
	var out []byte
	seen := false
	err := s.Object(func(key []byte) error {
		if string(key) != "b64" || seen {
			return e.valueErr("object with key %q is not a BYTES value (want {\"b64\": \"...\"})", truncate(key))
		}
		seen = true
		start := s.Offset()
		v, err := s.String()
		if err != nil {
			return err
		}
		out = make([]byte, base64.StdEncoding.DecodedLen(len(v)))
		n, err := base64.StdEncoding.Decode(out, v)
		if err != nil {
			return e.valueErr("b64 string at offset %d: %v", start, err)
		}
		out = out[:n]
		return nil
	})
	if err == nil && !seen {
		err = e.valueErr("empty object is not a BYTES value (want {\"b64\": \"...\"})")
	}
	return out, err
}

// intRange is the inclusive range of each integer datatype.
var intRange = map[tensor.DataType]struct{ min, max int64 }{
	tensor.Int8:   {math.MinInt8, math.MaxInt8},
	tensor.Int16:  {math.MinInt16, math.MaxInt16},
	tensor.Int32:  {math.MinInt32, math.MaxInt32},
	tensor.Int64:  {math.MinInt64, math.MaxInt64},
	tensor.Uint8:  {0, math.MaxUint8},
	tensor.Uint16: {0, math.MaxUint16},
	tensor.Uint32: {0, math.MaxUint32},
	tensor.Uint64: {0, math.MaxInt64}, // larger values take the unsigned path
}

func (e *Elements) integer(s *Scanner) error {
	dt := e.DataType
	num, err := e.number(s)
	if err != nil {
		return err
	}
	neg, mag, plain, overflow := parseDigits(num)
	if overflow {
		return e.valueErr("%s is out of range for %s", num, dt)
	}
	if !plain {
		f, err := strconv.ParseFloat(unsafeString(num), 64)
		if err != nil || f != math.Trunc(f) {
			return e.valueErr("%s is not an integer (%s)", num, dt)
		}
		if math.Abs(f) > 1<<53 {
			return e.valueErr("%s is not exact; write integers beyond 2^53 without fraction or exponent", num)
		}
		neg, mag = f < 0, uint64(math.Abs(f))
	}
	if mag == 0 {
		neg = false
	}
	if dt == tensor.Uint64 {
		if neg && mag != 0 {
			return e.valueErr("%s is out of range for UINT64", num)
		}
		e.Data = binary.LittleEndian.AppendUint64(e.Data, mag)
		return nil
	}
	r := intRange[dt]
	var v int64
	switch {
	case !neg && mag <= uint64(r.max):
		v = int64(mag)
	case neg && mag <= uint64(-(r.min+1))+1:
		v = -int64(mag-1) - 1
	default:
		return e.valueErr("%s is out of range for %s", num, dt)
	}
	switch dt.Size() {
	case 1:
		e.Data = append(e.Data, byte(v))
	case 2:
		e.Data = binary.LittleEndian.AppendUint16(e.Data, uint16(v))
	case 4:
		e.Data = binary.LittleEndian.AppendUint32(e.Data, uint32(v))
	default:
		e.Data = binary.LittleEndian.AppendUint64(e.Data, uint64(v))
	}
	return nil
}

// parseDigits reads a number that is an optional minus and digits. plain is
// false when it has a fraction or exponent; overflow is true when the
// magnitude does not fit in a uint64.
func parseDigits(num []byte) (neg bool, mag uint64, plain, overflow bool) {
	i := 0
	if num[0] == '-' {
		neg, i = true, 1
	}
	for ; i < len(num); i++ {
		c := num[i]
		if c < '0' || c > '9' {
			return neg, 0, false, false
		}
		d := uint64(c - '0')
		if mag > (math.MaxUint64-d)/10 {
			overflow = true
		}
		mag = mag*10 + d
	}
	return neg, mag, true, overflow
}
