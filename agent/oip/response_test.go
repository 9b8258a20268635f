package oip

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
)

// decodedResponse is the response as encoding/json, an independent reader,
// sees it.
type decodedResponse struct {
	ModelName    string            `json:"model_name"`
	ModelVersion string            `json:"model_version"`
	ID           string            `json:"id"`
	Parameters   map[string]string `json:"parameters"`
	Outputs      []struct {
		Name       string          `json:"name"`
		DataType   string          `json:"datatype"`
		Shape      []int           `json:"shape"`
		Data       json.RawMessage `json:"data"`
		Parameters struct {
			BinaryDataSize *int `json:"binary_data_size"`
		} `json:"parameters"`
	} `json:"outputs"`
}

// values reads t's elements into Go values as encoding/json would produce
// them from our output: float32 for floats, int64/uint64, bool, string.
func values(t *testing.T, x tensor.Tensor) []any {
	t.Helper()
	var out []any
	if x.DataType == tensor.Bytes {
		for _, s := range x.Strings {
			out = append(out, string(s))
		}
		return out
	}
	sz := x.DataType.Size()
	for i := 0; i+sz <= len(x.Data); i += sz {
		d := x.Data[i:]
		switch x.DataType {
		case tensor.FP32:
			out = append(out, math.Float32frombits(binary.LittleEndian.Uint32(d)))
		case tensor.FP16:
			out = append(out, tensorjson.HalfToFloat(binary.LittleEndian.Uint16(d)))
		case tensor.FP64:
			out = append(out, math.Float64frombits(binary.LittleEndian.Uint64(d)))
		case tensor.Bool:
			out = append(out, d[0] != 0)
		case tensor.Int8:
			out = append(out, int64(int8(d[0])))
		case tensor.Int16:
			out = append(out, int64(int16(binary.LittleEndian.Uint16(d))))
		case tensor.Int32:
			out = append(out, int64(int32(binary.LittleEndian.Uint32(d))))
		case tensor.Int64:
			out = append(out, int64(binary.LittleEndian.Uint64(d)))
		case tensor.Uint8:
			out = append(out, uint64(d[0]))
		case tensor.Uint16:
			out = append(out, uint64(binary.LittleEndian.Uint16(d)))
		case tensor.Uint32:
			out = append(out, uint64(binary.LittleEndian.Uint32(d)))
		case tensor.Uint64:
			out = append(out, binary.LittleEndian.Uint64(d))
		}
	}
	return out
}

// parseWith decodes a JSON array with encoding/json into the Go type that
// matches dt, returning the elements as values does.
func parseWith(t *testing.T, dt tensor.DataType, raw []byte) []any {
	t.Helper()
	var out []any
	switch dt {
	case tensor.FP32, tensor.FP16:
		var v []float32
		require.NoError(t, json.Unmarshal(raw, &v))
		for _, f := range v {
			out = append(out, f)
		}
	case tensor.FP64:
		var v []float64
		require.NoError(t, json.Unmarshal(raw, &v))
		for _, f := range v {
			out = append(out, f)
		}
	case tensor.Bool:
		var v []bool
		require.NoError(t, json.Unmarshal(raw, &v))
		for _, b := range v {
			out = append(out, b)
		}
	case tensor.Int8, tensor.Int16, tensor.Int32, tensor.Int64:
		var v []int64
		require.NoError(t, json.Unmarshal(raw, &v))
		for _, n := range v {
			out = append(out, n)
		}
	case tensor.Uint8, tensor.Uint16, tensor.Uint32, tensor.Uint64:
		var v []uint64
		require.NoError(t, json.Unmarshal(raw, &v))
		for _, n := range v {
			out = append(out, n)
		}
	case tensor.Bytes:
		var v []string
		require.NoError(t, json.Unmarshal(raw, &v))
		for _, s := range v {
			out = append(out, s)
		}
	}
	return out
}

// roundTripTensors covers every datatype with edge values (no NaN or
// infinities: encoding/json cannot read our strings for them back).
func roundTripTensors() []tensor.Tensor {
	return []tensor.Tensor{
		{Name: "fp32", DataType: tensor.FP32, Shape: []int{2, 3}, Data: le(float32(0.1), float32(-1e-7), float32(3.4028235e38), float32(1.4e-45), float32(1e6), float32(123456.79))},
		{Name: "fp16", DataType: tensor.FP16, Shape: []int{3}, Data: le(uint16(0x3555), uint16(0x7bff), uint16(0x0001))},
		{Name: "fp64", DataType: tensor.FP64, Shape: []int{2}, Data: le(0.1, -1.7976931348623157e308)},
		{Name: "bool", DataType: tensor.Bool, Shape: []int{2}, Data: le(true, false)},
		{Name: "int8", DataType: tensor.Int8, Shape: []int{2}, Data: le(int8(-128), int8(127))},
		{Name: "int16", DataType: tensor.Int16, Shape: []int{2}, Data: le(int16(-32768), int16(32767))},
		{Name: "int32", DataType: tensor.Int32, Shape: []int{2}, Data: le(int32(math.MinInt32), int32(math.MaxInt32))},
		{Name: "int64", DataType: tensor.Int64, Shape: []int{2}, Data: le(int64(math.MinInt64), int64(math.MaxInt64))},
		{Name: "uint8", DataType: tensor.Uint8, Shape: []int{1}, Data: le(uint8(255))},
		{Name: "uint16", DataType: tensor.Uint16, Shape: []int{1}, Data: le(uint16(65535))},
		{Name: "uint32", DataType: tensor.Uint32, Shape: []int{1}, Data: le(uint32(math.MaxUint32))},
		{Name: "uint64", DataType: tensor.Uint64, Shape: []int{1}, Data: le(uint64(math.MaxUint64))},
		{Name: "bytes \"quoted\"", DataType: tensor.Bytes, Shape: []int{3}, Strings: [][]byte{[]byte("a\"b\\c\n\x01"), []byte("é<&>"), {}}},
		{Name: "scalar", DataType: tensor.Int32, Shape: []int{}, Data: le(int32(5))},
	}
}

func TestAppendResponseRoundTrip(t *testing.T) {
	r := &Response{ModelName: "m\"x", ModelVersion: "7", ID: "req-1", ModelDigest: "sha256:abcd"}
	for _, x := range roundTripTensors() {
		r.Outputs = append(r.Outputs, Output{Tensor: x})
	}
	out, headerLen := AppendResponse([]byte("prefix"), r)
	require.Equal(t, -1, headerLen)
	require.True(t, bytes.HasPrefix(out, []byte("prefix")))
	body := out[len("prefix"):]
	var got decodedResponse
	require.NoError(t, json.Unmarshal(body, &got), "%s", body)
	assert.Equal(t, "m\"x", got.ModelName)
	assert.Equal(t, "7", got.ModelVersion)
	assert.Equal(t, "req-1", got.ID)
	assert.Equal(t, map[string]string{"model_digest": "sha256:abcd"}, got.Parameters)
	require.Len(t, got.Outputs, len(r.Outputs))
	for i, o := range got.Outputs {
		want := r.Outputs[i].Tensor
		assert.Equal(t, want.Name, o.Name)
		assert.Equal(t, string(want.DataType), o.DataType)
		assert.Equal(t, len(want.Shape), len(o.Shape))
		assert.Nil(t, o.Parameters.BinaryDataSize)
		assert.Equal(t, values(t, want), parseWith(t, want.DataType, o.Data), "output %q: %s", want.Name, o.Data)
	}
}

// TestAppendResponseThroughDecoder feeds our own output back through
// DecodeRequest (a response's outputs look like a request's inputs), which
// covers NaN and infinities too.
func TestAppendResponseThroughDecoder(t *testing.T) {
	r := &Response{ModelName: "m"}
	tensors := roundTripTensors()
	tensors = append(tensors, tensor.Tensor{Name: "special", DataType: tensor.FP32, Shape: []int{3},
		Data: le(float32(math.Inf(1)), float32(math.Inf(-1)), float32(math.NaN()))})
	for _, x := range tensors {
		r.Outputs = append(r.Outputs, Output{Tensor: x})
	}
	out, _ := AppendResponse(nil, r)
	req := bytes.Replace(out, []byte(`"outputs"`), []byte(`"inputs"`), 1)
	var got Request
	require.NoError(t, DecodeRequest(req, -1, &got), "%s", req)
	require.Len(t, got.Inputs, len(tensors))
	for i, want := range tensors {
		assert.Equal(t, want.Data, got.Inputs[i].Data, "tensor %q", want.Name)
		assert.Equal(t, want.Strings, got.Inputs[i].Strings, "tensor %q", want.Name)
	}
	assert.Contains(t, string(out), `"data":["Infinity","-Infinity","NaN"]`)
}

func TestAppendResponseBinary(t *testing.T) {
	r := &Response{ModelName: "m", ModelVersion: "1", Outputs: []Output{
		{Tensor: tensor.Tensor{Name: "a", DataType: tensor.FP32, Shape: []int{2}, Data: le(float32(1), float32(2))}, Binary: true},
		{Tensor: tensor.Tensor{Name: "b", DataType: tensor.Int8, Shape: []int{1}, Data: le(int8(-1))}},
		{Tensor: tensor.Tensor{Name: "c", DataType: tensor.Bytes, Shape: []int{2}, Strings: [][]byte{[]byte("hi"), {0xff}}}, Binary: true},
	}}
	out, headerLen := AppendResponse(nil, r)
	require.Positive(t, headerLen)
	var got decodedResponse
	require.NoError(t, json.Unmarshal(out[:headerLen], &got))
	require.Len(t, got.Outputs, 3)
	require.NotNil(t, got.Outputs[0].Parameters.BinaryDataSize)
	assert.Equal(t, 8, *got.Outputs[0].Parameters.BinaryDataSize)
	assert.Nil(t, got.Outputs[0].Data)
	assert.Nil(t, got.Outputs[1].Parameters.BinaryDataSize)
	assert.JSONEq(t, "[-1]", string(got.Outputs[1].Data))
	require.NotNil(t, got.Outputs[2].Parameters.BinaryDataSize)
	assert.Equal(t, 4+2+4+1, *got.Outputs[2].Parameters.BinaryDataSize)
	want := append(le(float32(1), float32(2)), "\x02\x00\x00\x00hi\x01\x00\x00\x00\xff"...)
	assert.Equal(t, want, out[headerLen:])

	// The same body read back as a request with the binary extension.
	// "inputs" plus a space keeps the JSON's length, so headerLen holds.
	req := bytes.Replace(out, []byte(`"outputs"`), []byte(`"inputs" `), 1)
	var dec Request
	require.NoError(t, DecodeRequest(req, headerLen, &dec))
	assert.Equal(t, r.Outputs[0].Tensor.Data, dec.Inputs[0].Data)
	assert.Equal(t, r.Outputs[2].Tensor.Strings, dec.Inputs[2].Strings)

	// AppendResponseHeader is that JSON part alone.
	assert.Equal(t, out[:headerLen], AppendResponseHeader([]byte{}, r))
	assert.Equal(t, []byte("x"+string(out[:headerLen])), AppendResponseHeader([]byte("x"), r))
}

// TestAppendResponseFloat32Exact checks that every float32 we write reads
// back to the same bits through strconv, for random bit patterns.
func TestAppendResponseFloat32Exact(t *testing.T) {
	var data []byte
	for i := uint32(0); i < 1<<32-1<<20; i += 1<<20 + 12345 {
		f := math.Float32frombits(i)
		if f != f || math.IsInf(float64(f), 0) {
			continue
		}
		data = binary.LittleEndian.AppendUint32(data, i)
	}
	n := len(data) / 4
	r := &Response{ModelName: "m", Outputs: []Output{{Tensor: tensor.Tensor{Name: "x", DataType: tensor.FP32, Shape: []int{n}, Data: data}}}}
	out, _ := AppendResponse(nil, r)
	var got decodedResponse
	require.NoError(t, json.Unmarshal(out, &got))
	var raw []json.Number
	require.NoError(t, json.Unmarshal(got.Outputs[0].Data, &raw))
	require.Len(t, raw, n)
	for i, s := range raw {
		f, err := strconv.ParseFloat(string(s), 32)
		require.NoError(t, err)
		want := binary.LittleEndian.Uint32(data[4*i:])
		if math.Float32bits(float32(f)) != want {
			t.Fatalf("element %d: %s reads back as %08x, want %08x", i, s, math.Float32bits(float32(f)), want)
		}
	}
}

func TestResponseReset(t *testing.T) {
	r := &Response{ModelName: "m", ID: "x", Outputs: make([]Output, 2, 8)}
	r.Reset()
	assert.Equal(t, "", r.ModelName)
	assert.Equal(t, "", r.ID)
	assert.Len(t, r.Outputs, 0)
	assert.Equal(t, 8, cap(r.Outputs))
}
