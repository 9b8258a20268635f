package oip

import (
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
)

// le packs values little-endian, as tensor.Tensor.Data holds them.
func le(vals ...any) []byte {
	var b []byte
	for _, v := range vals {
		switch v := v.(type) {
		case float32:
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		case float64:
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
		case int8:
			b = append(b, byte(v))
		case uint8:
			b = append(b, v)
		case int16:
			b = binary.LittleEndian.AppendUint16(b, uint16(v))
		case uint16:
			b = binary.LittleEndian.AppendUint16(b, v)
		case int32:
			b = binary.LittleEndian.AppendUint32(b, uint32(v))
		case uint32:
			b = binary.LittleEndian.AppendUint32(b, v)
		case int64:
			b = binary.LittleEndian.AppendUint64(b, uint64(v))
		case uint64:
			b = binary.LittleEndian.AppendUint64(b, v)
		case bool:
			if v {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		default:
			panic("le: unsupported type")
		}
	}
	return b
}

func one(name string, dt tensor.DataType, shape []int, data []byte) []tensor.Tensor {
	return []tensor.Tensor{{Name: name, DataType: dt, Shape: shape, Data: data}}
}

func in(dt, shape, data string) string {
	return `{"inputs":[{"name":"x","datatype":"` + dt + `","shape":` + shape + `,"data":` + data + `}]}`
}

// hdr as a headerLen means: the length of body, with bin appended after it.
const hdr = -2

type decodeCase struct {
	name      string
	body      string
	bin       string // binary section, with headerLen hdr
	headerLen int    // -1 without the binary extension
	want      []tensor.Tensor
	wantOut   []RequestedOutput
	wantID    string
	wantBin   bool
	wantErr   string // substring of the error; empty for success
}

var decodeCases = []decodeCase{
	{name: "fp32 flat", body: in("FP32", "[2,2]", "[1, -2.5, 3e2, 1E-3]"), headerLen: -1,
		want: one("x", tensor.FP32, []int{2, 2}, le(float32(1), float32(-2.5), float32(300), float32(0.001)))},
	{name: "fp32 nested", body: in("FP32", "[2,2]", "[[1,2],[3,4]]"), headerLen: -1,
		want: one("x", tensor.FP32, []int{2, 2}, le(float32(1), float32(2), float32(3), float32(4)))},
	{name: "fp32 specials", body: in("FP32", "[3]", `["NaN","Infinity","-Infinity"]`), headerLen: -1,
		want: one("x", tensor.FP32, []int{3}, le(float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))))},
	{name: "fp32 max", body: in("FP32", "[2]", "[3.4028235e38, -0]"), headerLen: -1,
		want: one("x", tensor.FP32, []int{2}, le(float32(math.MaxFloat32), float32(math.Copysign(0, -1))))},
	{name: "fp64", body: in("FP64", "[2]", "[0.1, 1e300]"), headerLen: -1,
		want: one("x", tensor.FP64, []int{2}, le(0.1, 1e300))},
	{name: "fp16", body: in("FP16", "[4]", "[1, 0.5, 65504, -2]"), headerLen: -1,
		want: one("x", tensor.FP16, []int{4}, le(uint16(0x3c00), uint16(0x3800), uint16(0x7bff), uint16(0xc000)))},
	{name: "fp16 rounds", body: in("FP16", "[2]", "[0.1, 5.960464477539063e-08]"), headerLen: -1,
		want: one("x", tensor.FP16, []int{2}, le(uint16(0x2e66), uint16(0x0001)))},
	{name: "int8", body: in("INT8", "[3]", "[-128, 0, 127]"), headerLen: -1,
		want: one("x", tensor.Int8, []int{3}, le(int8(-128), int8(0), int8(127)))},
	{name: "uint8", body: in("UINT8", "[3]", "[0, 255, 2.0]"), headerLen: -1,
		want: one("x", tensor.Uint8, []int{3}, le(uint8(0), uint8(255), uint8(2)))},
	{name: "int16", body: in("INT16", "[2]", "[-32768, 32767]"), headerLen: -1,
		want: one("x", tensor.Int16, []int{2}, le(int16(-32768), int16(32767)))},
	{name: "uint16", body: in("UINT16", "[1]", "[65535]"), headerLen: -1,
		want: one("x", tensor.Uint16, []int{1}, le(uint16(65535)))},
	{name: "int32", body: in("INT32", "[2]", "[-2147483648, 1e3]"), headerLen: -1,
		want: one("x", tensor.Int32, []int{2}, le(int32(-2147483648), int32(1000)))},
	{name: "uint32", body: in("UINT32", "[1]", "[4294967295]"), headerLen: -1,
		want: one("x", tensor.Uint32, []int{1}, le(uint32(4294967295)))},
	{name: "int64 exact", body: in("INT64", "[2]", "[-9223372036854775808, 9223372036854775807]"), headerLen: -1,
		want: one("x", tensor.Int64, []int{2}, le(int64(math.MinInt64), int64(math.MaxInt64)))},
	{name: "uint64 exact", body: in("UINT64", "[2]", "[18446744073709551615, 9007199254740993]"), headerLen: -1,
		want: one("x", tensor.Uint64, []int{2}, le(uint64(math.MaxUint64), uint64(9007199254740993)))},
	{name: "bool", body: in("BOOL", "[1,2]", "[[true, false]]"), headerLen: -1,
		want: one("x", tensor.Bool, []int{1, 2}, le(true, false))},
	{name: "bytes", body: in("BYTES", "[2]", `["a\"\u00e9", ""]`), headerLen: -1,
		want: []tensor.Tensor{{Name: "x", DataType: tensor.Bytes, Shape: []int{2}, Strings: [][]byte{[]byte("a\"é"), {}}}}},
	{name: "lower-case datatype", body: in("fp32", "[1]", "[1]"), headerLen: -1,
		want: one("x", tensor.FP32, []int{1}, le(float32(1)))},
	{name: "scalar", body: in("INT32", "[]", "[7]"), headerLen: -1,
		want: one("x", tensor.Int32, []int{}, le(int32(7)))},
	{name: "empty tensor", body: in("FP32", "[0,3]", "[]"), headerLen: -1,
		want: one("x", tensor.FP32, []int{0, 3}, nil)},
	{name: "data before datatype and shape", body: `{"inputs":[{"data":[[1],[2]],"name":"x","shape":[2,1],"datatype":"INT8"}]}`, headerLen: -1,
		want: one("x", tensor.Int8, []int{2, 1}, le(int8(1), int8(2)))},
	{name: "everything", headerLen: -1,
		body: `{"id":"r1","unknown":{"a":[1,{"b":null}]},"parameters":{"binary_data_output":true,"other":1},
			"inputs":[{"name":"a","datatype":"UINT8","shape":[1],"data":[1],"parameters":{"x":"y"}},{"name":"b","datatype":"BOOL","shape":[1],"data":[true]}],
			"outputs":[{"name":"y","parameters":{"binary_data":true}},{"name":"z"}]}`,
		want:    []tensor.Tensor{{Name: "a", DataType: tensor.Uint8, Shape: []int{1}, Data: []byte{1}}, {Name: "b", DataType: tensor.Bool, Shape: []int{1}, Data: []byte{1}}},
		wantOut: []RequestedOutput{{Name: "y", Binary: true}, {Name: "z"}}, wantID: "r1", wantBin: true},

	// Errors.
	{name: "uint8 out of range", body: in("UINT8", "[3]", "[1, 2, 300]"), headerLen: -1, wantErr: `input "x": element 2: 300 is out of range for UINT8`},
	{name: "uint8 negative", body: in("UINT8", "[1]", "[-1]"), headerLen: -1, wantErr: `-1 is out of range for UINT8`},
	{name: "int8 out of range", body: in("INT8", "[1]", "[-129]"), headerLen: -1, wantErr: `-129 is out of range for INT8`},
	{name: "int32 fraction", body: in("INT32", "[1]", "[1.5]"), headerLen: -1, wantErr: `1.5 is not an integer (INT32)`},
	{name: "int64 overflow", body: in("INT64", "[1]", "[9223372036854775808]"), headerLen: -1, wantErr: `out of range for INT64`},
	{name: "uint64 overflow", body: in("UINT64", "[1]", "[18446744073709551616]"), headerLen: -1, wantErr: `out of range for UINT64`},
	{name: "int64 inexact exponent", body: in("INT64", "[1]", "[1e19]"), headerLen: -1, wantErr: `is not exact`},
	{name: "fp32 overflow", body: in("FP32", "[1]", "[1e39]"), headerLen: -1, wantErr: `1e39 is out of range for FP32`},
	{name: "fp16 overflow", body: in("FP16", "[1]", "[65520]"), headerLen: -1, wantErr: `65520 is out of range for FP16`},
	{name: "fp32 string", body: in("FP32", "[1]", `["1.0"]`), headerLen: -1, wantErr: `string "1.0" is not a FP32 value`},
	{name: "fp32 null", body: in("FP32", "[1]", `[null]`), headerLen: -1, wantErr: `null is not a FP32 value`},
	{name: "bool number", body: in("BOOL", "[1]", `[1]`), headerLen: -1, wantErr: `number is not a BOOL value`},
	{name: "bytes number", body: in("BYTES", "[1]", `[1]`), headerLen: -1, wantErr: `number is not a BYTES value`},
	{name: "int string", body: in("INT32", "[1]", `["1"]`), headerLen: -1, wantErr: `string is not a INT32 value`},
	{name: "count mismatch", body: `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"data":[1,2,3,4,5,6,7,8,9,10,11,12]}]}`, headerLen: -1,
		wantErr: `input "input": data has 12 elements, shape [1 128 128 3] needs 49152`},
	{name: "nesting mismatch", body: in("FP32", "[3,2]", "[[1,2,3],[4,5,6]]"), headerLen: -1, wantErr: `input "x": data is nested as [2 3], shape is [3 2]`},
	{name: "ragged", body: in("FP32", "[2,2]", "[[1,2],[3]]"), headerLen: -1, wantErr: `not rectangular`},
	{name: "mixed depth", body: in("FP32", "[2,2]", "[[1,2],3]"), headerLen: -1, wantErr: `not rectangular`},
	{name: "unknown datatype", body: in("FLOAT", "[1]", "[1]"), headerLen: -1, wantErr: `input "x": unknown datatype "FLOAT"`},
	{name: "negative dimension", body: in("FP32", "[-1]", "[1]"), headerLen: -1, wantErr: `input "x": shape has dimension -1`},
	{name: "huge shape", body: in("FP32", "[1099511627776,1099511627776]", "[1]"), headerLen: -1, wantErr: `has too many elements`},
	{name: "no name", body: `{"inputs":[{"datatype":"FP32","shape":[1],"data":[1]}]}`, headerLen: -1, wantErr: `input #0 has no name`},
	{name: "no datatype", body: `{"inputs":[{"name":"x","shape":[1],"data":[1]}]}`, headerLen: -1, wantErr: `input "x" has no datatype`},
	{name: "no shape", body: `{"inputs":[{"name":"x","datatype":"FP32","data":[1]}]}`, headerLen: -1, wantErr: `input "x" has no shape`},
	{name: "no data", body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[1]}]}`, headerLen: -1, wantErr: `input "x" has no data and no parameters.binary_data_size`},
	{name: "duplicate input", body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]},{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}`, headerLen: -1, wantErr: `input "x" appears twice`},
	{name: "no inputs", body: `{"id":"a"}`, headerLen: -1, wantErr: `request has no inputs`},
	{name: "empty inputs", body: `{"inputs":[]}`, headerLen: -1, wantErr: `request has no inputs`},
	{name: "inputs not array", body: `{"inputs":{}}`, headerLen: -1, wantErr: `inputs must be an array, not object`},
	{name: "id not string", body: `{"id":1,"inputs":[]}`, headerLen: -1, wantErr: `id must be a string, not number`},
	{name: "output without name", body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"outputs":[{}]}`, headerLen: -1, wantErr: `output #0 has no name`},
	{name: "output twice", body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"outputs":[{"name":"a"},{"name":"a"}]}`, headerLen: -1, wantErr: `output "a" is requested twice`},
	{name: "binary_data not bool", body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}],"outputs":[{"name":"a","parameters":{"binary_data":1}}]}`, headerLen: -1, wantErr: `parameters.binary_data must be a boolean`},
	{name: "trailing comma", body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1,]}]}`, headerLen: -1, wantErr: `input "x": malformed JSON at offset 63: expected value, found ']'`},
	{name: "trailing garbage", body: in("FP32", "[1]", "[1]") + "x", headerLen: -1, wantErr: `unexpected 'x' after the top-level value`},
	{name: "not an object", body: `[1]`, headerLen: -1, wantErr: `malformed JSON at offset 0: expected the request object, found array`},
	{name: "empty body", body: ``, headerLen: -1, wantErr: `malformed JSON at offset 0`},
	{name: "bad number", body: in("FP32", "[1]", "[01]"), headerLen: -1, wantErr: `malformed JSON`},
	{name: "hex number", body: in("FP32", "[1]", "[0x1p3]"), headerLen: -1, wantErr: `malformed JSON`},
	{name: "bare Infinity", body: in("FP32", "[1]", "[Infinity]"), headerLen: -1, wantErr: `malformed JSON`},
	{name: "unterminated string", body: `{"id":"abc`, headerLen: -1, wantErr: `unterminated string`},
	{name: "bad escape", body: `{"id":"\x"}`, headerLen: -1, wantErr: `invalid escape`},
	{name: "deep nesting", body: `{"a":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, headerLen: -1, wantErr: `nested deeper than 64 levels`},
	{name: "deep data", body: in("FP32", "[1]", strings.Repeat("[", 100)+"1"+strings.Repeat("]", 100)), headerLen: -1, wantErr: `nested deeper than 64 levels`},
	{name: "header length too long", body: `{}`, headerLen: 3, wantErr: `Inference-Header-Content-Length 3 is longer than the 2-byte body`},
}

// Binary extension cases: the JSON, then the binary section.
var binaryCases = []decodeCase{
	{name: "binary fp32", headerLen: hdr,
		body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}`, bin: string(le(float32(1.5), float32(-2))),
		want: one("x", tensor.FP32, []int{2}, le(float32(1.5), float32(-2)))},
	{name: "binary and json mixed", headerLen: hdr,
		body: `{"inputs":[{"name":"a","datatype":"INT16","shape":[1],"parameters":{"binary_data_size":2}},{"name":"b","datatype":"INT8","shape":[1],"data":[5]},` +
			`{"name":"c","datatype":"UINT8","shape":[3],"parameters":{"binary_data_size":3}}]}`, bin: string(le(int16(-3))) + "\x01\x02\x03",
		want: []tensor.Tensor{{Name: "a", DataType: tensor.Int16, Shape: []int{1}, Data: le(int16(-3))}, {Name: "b", DataType: tensor.Int8, Shape: []int{1}, Data: []byte{5}},
			{Name: "c", DataType: tensor.Uint8, Shape: []int{3}, Data: []byte{1, 2, 3}}}},
	{name: "binary bytes", headerLen: hdr,
		body: `{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":11}}]}`, bin: "\x03\x00\x00\x00abc\x00\x00\x00\x00",
		want: []tensor.Tensor{{Name: "s", DataType: tensor.Bytes, Shape: []int{2}, Strings: [][]byte{[]byte("abc"), {}}}}},
	{name: "header length without binary", headerLen: hdr, body: in("FP32", "[1]", "[1]"),
		want: one("x", tensor.FP32, []int{1}, le(float32(1)))},
	{name: "binary size too small", headerLen: hdr, wantErr: `input "x": binary_data_size is 4, shape [2] of FP32 needs 8 bytes`,
		body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":4}}]}`, bin: string(le(float32(1.5), float32(-2)))},
	{name: "binary size past end", headerLen: hdr, wantErr: `input "x": binary_data_size 9 runs past the end of the 8-byte binary section`,
		body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":9}}]}`, bin: string(le(float32(1.5), float32(-2)))},
	{name: "binary extra bytes", headerLen: hdr, wantErr: `the binary section has 9 bytes, the inputs' binary_data_size add up to 8`,
		body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}`, bin: string(le(float32(1.5), float32(-2))) + "z"},
	{name: "binary without header", headerLen: -1, wantErr: `input "x" has parameters.binary_data_size but the request has no Inference-Header-Content-Length header`,
		body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}`},
	{name: "binary and data", headerLen: hdr, wantErr: `input "x" has both data and parameters.binary_data_size`,
		body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[1,2],"parameters":{"binary_data_size":8}}]}`, bin: string(le(float32(1.5), float32(-2)))},
	{name: "binary size negative", headerLen: hdr, wantErr: `parameters.binary_data_size must be a non-negative integer`,
		body: `{"inputs":[{"name":"x","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":-8}}]}`, bin: string(le(float32(1.5), float32(-2)))},
	{name: "binary bytes bad length", headerLen: hdr, wantErr: `input "s": element 0: length 4 runs past the end of its binary data`,
		body: `{"inputs":[{"name":"s","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":7}}]}`, bin: "\x04\x00\x00\x00abc"},
	{name: "binary bytes short prefix", headerLen: hdr, wantErr: `input "s": element 1: binary BYTES data ends inside a length prefix`,
		body: `{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":6}}]}`, bin: "\x01\x00\x00\x00ab"},
	{name: "binary bytes count", headerLen: hdr, wantErr: `input "s": binary data has 1 elements, shape [2] needs 2`,
		body: `{"inputs":[{"name":"s","datatype":"BYTES","shape":[2],"parameters":{"binary_data_size":5}}]}`, bin: "\x01\x00\x00\x00a"},
}

func runDecodeCase(t *testing.T, r *Request, tc decodeCase) {
	t.Helper()
	r.Reset()
	body, headerLen := tc.body, tc.headerLen
	if headerLen == hdr {
		body, headerLen = tc.body+tc.bin, len(tc.body)
	}
	err := DecodeRequest([]byte(body), headerLen, r)
	if tc.wantErr != "" {
		require.Error(t, err, "got no error, want %q", tc.wantErr)
		assert.Contains(t, err.Error(), tc.wantErr)
		assert.True(t, errors.Is(err, ErrBadRequest), "got %v, want it to match ErrBadRequest", err)
		assert.True(t, strings.HasPrefix(err.Error(), "oip: "), "got %q, want an oip: prefix", err)
		return
	}
	require.NoError(t, err)
	require.Len(t, r.Inputs, len(tc.want))
	for i, w := range tc.want {
		g := r.Inputs[i]
		assert.Equal(t, w.Name, g.Name)
		assert.Equal(t, w.DataType, g.DataType)
		if len(w.Shape) > 0 || len(g.Shape) > 0 {
			assert.Equal(t, w.Shape, g.Shape, "input %q shape", w.Name)
		}
		if w.DataType == tensor.Bytes {
			assert.Equal(t, w.Strings, g.Strings, "input %q strings", w.Name)
			assert.Empty(t, g.Data)
		} else {
			assert.Equal(t, string(w.Data), string(g.Data), "input %q data: got % x, want % x", w.Name, g.Data, w.Data)
			assert.Empty(t, g.Strings)
		}
	}
	assert.Equal(t, tc.wantID, r.ID)
	assert.Equal(t, tc.wantBin, r.BinaryOutput)
	if len(tc.wantOut) > 0 || len(r.Outputs) > 0 {
		assert.Equal(t, tc.wantOut, r.Outputs)
	}
}

func TestDecodeRequest(t *testing.T) {
	for _, tc := range append(append([]decodeCase(nil), decodeCases...), binaryCases...) {
		t.Run(tc.name, func(t *testing.T) {
			var r Request
			runDecodeCase(t, &r, tc)
		})
	}
}

// TestDecodeRequestReuse decodes every case with one Request, so that
// leftovers from an earlier request (buffers, shapes, outputs) would show.
func TestDecodeRequestReuse(t *testing.T) {
	var r Request
	all := append(append([]decodeCase(nil), decodeCases...), binaryCases...)
	for range 2 {
		for _, tc := range all {
			runDecodeCase(t, &r, tc)
		}
	}
}

// TestDecodeRequestReuseKeepsBuffers checks that a reused Request does not
// allocate new tensor buffers for a request of the same size.
func TestDecodeRequestReuseKeepsBuffers(t *testing.T) {
	body := benchRequestBody(t)
	var r Request
	require.NoError(t, DecodeRequest(body, -1, &r))
	first := &r.Inputs[0].Data[0]
	r.Reset()
	require.NoError(t, DecodeRequest(body, -1, &r))
	assert.Same(t, first, &r.Inputs[0].Data[0], "got a new data buffer, want the first request's reused")
	allocs := testing.AllocsPerRun(5, func() {
		r.Reset()
		if err := DecodeRequest(body, -1, &r); err != nil {
			t.Fatal(err)
		}
	})
	// The id and the input name are strings; nothing else should allocate.
	assert.LessOrEqual(t, allocs, 4.0)
}

// TestBinaryAliasesBody documents that binary tensors are not copied.
func TestBinaryAliasesBody(t *testing.T) {
	tc := binaryCases[0]
	body := []byte(tc.body + tc.bin)
	var r Request
	require.NoError(t, DecodeRequest(body, len(tc.body), &r))
	assert.Same(t, &body[len(tc.body)], &r.Inputs[0].Data[0])
}

func TestErrorsMatchCauses(t *testing.T) {
	var r Request
	err := DecodeRequest([]byte(in("UINT8", "[1]", "[300]")), -1, &r)
	assert.ErrorIs(t, err, tensorjson.ErrValue)
	assert.ErrorIs(t, err, ErrBadRequest)
	r.Reset()
	err = DecodeRequest([]byte(`{"inputs":[`), -1, &r)
	assert.ErrorIs(t, err, tensorjson.ErrSyntax)
	assert.ErrorIs(t, err, ErrBadRequest)
}
