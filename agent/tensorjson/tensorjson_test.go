package tensorjson

import (
	"errors"
	"math"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/tensor"
)

func TestFloatToHalf(t *testing.T) {
	for _, tc := range []struct {
		in   float64
		want uint16
	}{
		{0, 0x0000},
		{math.Copysign(0, -1), 0x8000},
		{1, 0x3c00},
		{-2, 0xc000},
		{0.5, 0x3800},
		{65504, 0x7bff},
		{65519.99, 0x7bff}, // below the halfway point to 65536
		{65520, 0x7c00},    // rounds to infinity
		{math.Inf(1), 0x7c00},
		{math.Inf(-1), 0xfc00},
		{6.103515625e-05, 0x0400},         // smallest normal
		{5.960464477539063e-08, 0x0001},   // smallest subnormal
		{2.98023223876953125e-08, 0x0000}, // half of it: a tie, to even (zero)
		{2.98023223876953126e-08 * 1.0000001, 0x0001},
		{1.0009765625, 0x3c01},  // 1 + 2^-10
		{1.00048828125, 0x3c00}, // 1 + 2^-11: a tie, to even
		{1.00146484375, 0x3c02}, // 1 + 3*2^-11: a tie, to even (up)
		{0.1, 0x2e66},
	} {
		if got := FloatToHalf(tc.in); got != tc.want {
			t.Errorf("FloatToHalf(%v) = %#04x, want %#04x", tc.in, got, tc.want)
		}
	}
	if got := FloatToHalf(math.NaN()); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
		t.Errorf("FloatToHalf(NaN) = %#04x, want a NaN", got)
	}
}

// TestHalfRoundTrip converts every half to float32 and back.
func TestHalfRoundTrip(t *testing.T) {
	for h := range 1 << 16 {
		f := HalfToFloat(uint16(h))
		if f != f {
			continue
		}
		if got := FloatToHalf(float64(f)); got != uint16(h) {
			t.Fatalf("FloatToHalf(HalfToFloat(%#04x) = %v) = %#04x", h, f, got)
		}
	}
}

func TestScannerString(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{`"plain"`, "plain", ""},
		{`"esc \" \\ \/ \b \f \n \r \t"`, "esc \" \\ / \b \f \n \r \t", ""},
		{`"\u00e9\u20ac"`, "é€", ""},
		{`"\ud83d\ude00"`, "😀", ""},
		{`"\ud83d x"`, "\ufffd x", ""},
		{`"raw é"`, "raw é", ""},
		{`"\x"`, "", "invalid escape"},
		{`"\u12"`, "", "invalid \\u escape"},
		{"\"a\nb\"", "", "control character 0x0a"},
		{`"abc`, "", "unterminated string"},
		{`"abc\`, "", "unterminated string"},
	} {
		s := NewScanner([]byte(tc.in))
		got, err := s.String()
		if tc.err != "" {
			if err == nil || !errors.Is(err, ErrSyntax) {
				t.Errorf("String(%s) = %q, %v; want a syntax error %q", tc.in, got, err, tc.err)
			} else {
				assert.Contains(t, err.Error(), tc.err)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("String(%s) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestAppendString(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a", `"a"`},
		{"q\"b\\s\n\r\t\x01", `"q\"b\\s\n\r\t\u0001"`},
		{"é<&>", `"é<&>"`},
		{"bad\xffbyte", `"bad\ufffdbyte"`},
	} {
		if got := string(AppendString(nil, []byte(tc.in))); got != tc.want {
			t.Errorf("AppendString(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestElementsDims(t *testing.T) {
	for _, tc := range []struct {
		in   string
		dims []int
		n    int
		err  string
	}{
		{`5`, []int{}, 1, ""},
		{`[]`, []int{0}, 0, ""},
		{`[[],[]]`, []int{2, 0}, 0, ""},
		{`[[1,2,3],[4,5,6]]`, []int{2, 3}, 6, ""},
		{`[[[1]],[[2]]]`, []int{2, 1, 1}, 2, ""},
		{`[[1],[2,3]]`, nil, 0, "not rectangular"},
		{`[[1],2]`, nil, 0, "not rectangular"},
		{`[1,[2]]`, nil, 0, "not rectangular"},
		{`[[],[1]]`, nil, 0, "not rectangular"},
	} {
		e := Elements{DataType: tensor.Int32}
		err := e.Decode(NewScanner([]byte(tc.in)))
		if tc.err != "" {
			if err == nil || !errors.Is(err, ErrValue) {
				t.Errorf("Decode(%s): got %v, want a value error %q", tc.in, err, tc.err)
			}
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.dims, append([]int{}, e.Dims...), tc.in)
		assert.Equal(t, tc.n, e.N, tc.in)
		assert.Len(t, e.Data, 4*tc.n)
	}
}

// TestEncoderNested checks nesting by shape and the flat fallback.
func TestEncoderNested(t *testing.T) {
	data := []byte{1, 2, 3, 4, 5, 6}
	var enc Encoder
	assert.Equal(t, `[[1,2,3],[4,5,6]]`, string(enc.Append(nil, tensor.Uint8, []int{2, 3}, data, nil)))
	assert.Equal(t, `[[[1],[2]],[[3],[4]],[[5],[6]]]`, string(enc.Append(nil, tensor.Uint8, []int{3, 2, 1}, data, nil)))
	assert.Equal(t, `[1,2,3,4,5,6]`, string(enc.Append(nil, tensor.Uint8, []int{4}, data, nil)), "mismatched shape falls back to flat")
	assert.Equal(t, `[]`, string(enc.Append(nil, tensor.Uint8, []int{0, 3}, nil, nil)))
	assert.Equal(t, `7`, string(enc.Append(nil, tensor.Int8, nil, []byte{7}, nil)))
	assert.Equal(t, `[1,2]`, string(enc.AppendFlat(nil, tensor.Uint8, []byte{1, 2, 3}[:2], nil)))
	assert.Equal(t, `[1]`, string(enc.AppendFlat(nil, tensor.Int16, []byte{1, 0, 9}, nil)), "a trailing partial element is dropped")
}

func TestFloatSpecials(t *testing.T) {
	for _, dt := range []tensor.DataType{tensor.FP16, tensor.FP32, tensor.FP64} {
		e := Elements{DataType: dt}
		require.NoError(t, e.Decode(NewScanner([]byte(`["NaN","Infinity","-Infinity",1]`))), dt)
		out := Encoder{}.AppendFlat(nil, dt, e.Data, nil)
		assert.Equal(t, `["NaN","Infinity","-Infinity",1]`, string(out), dt)
	}
}

func TestIntegerForms(t *testing.T) {
	for _, tc := range []struct {
		dt   tensor.DataType
		in   string
		want string
	}{
		{tensor.Int32, `[-0, 0.0, 1e2, -2.0E1, 2147483647]`, `[0,0,100,-20,2147483647]`},
		{tensor.Int64, `[9007199254740992e0, -9223372036854775808]`, `[9007199254740992,-9223372036854775808]`},
		{tensor.Uint64, `[18446744073709551615, -0]`, `[18446744073709551615,0]`},
		{tensor.Uint16, `[65535, 1e4]`, `[65535,10000]`},
	} {
		e := Elements{DataType: tc.dt}
		require.NoError(t, e.Decode(NewScanner([]byte(tc.in))), tc.in)
		assert.Equal(t, tc.want, string(Encoder{}.AppendFlat(nil, tc.dt, e.Data, nil)), tc.in)
	}
}

func FuzzFloat32(f *testing.F) {
	for _, s := range []string{"0", "1", "-0.5", "3.4028235e38", "1e-45", "123456.789", "1e38", "0.1", "16777217"} {
		v, _ := strconv.ParseFloat(s, 32)
		f.Add(math.Float32bits(float32(v)))
	}
	f.Fuzz(func(t *testing.T, bits uint32) {
		v := math.Float32frombits(bits)
		if v != v || math.IsInf(float64(v), 0) {
			return
		}
		text := appendFloat32(nil, v)
		back, err := strconv.ParseFloat(string(text), 32)
		if err != nil || math.Float32bits(float32(back)) != bits {
			t.Fatalf("appendFloat32(%v) = %s, reads back as %v (%v)", v, text, back, err)
		}
		got, ok := parseFloat32(text)
		if ok && math.Float32bits(got) != bits {
			t.Fatalf("parseFloat32(%s) = %v, want %v", text, got, v)
		}
	})
}
