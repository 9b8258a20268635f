package grpcapi

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	pb "github.com/outpost-edge/outpost/agent/grpcapi/inferencepb"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
)

func in(name, dt string, shape []int64, c *pb.InferTensorContents) *pb.ModelInferRequest_InferInputTensor {
	return &pb.ModelInferRequest_InferInputTensor{Name: name, Datatype: dt, Shape: shape, Contents: c}
}

// Typed contents pack into the little-endian bytes raw contents carry.
func TestDecodeTyped(t *testing.T) {
	le := binary.LittleEndian
	for _, tc := range []struct {
		dt   string
		c    *pb.InferTensorContents
		want []byte
	}{
		{"BOOL", &pb.InferTensorContents{BoolContents: []bool{true, false}}, []byte{1, 0}},
		{"INT8", &pb.InferTensorContents{IntContents: []int32{-128, 127}}, []byte{0x80, 0x7f}},
		{"INT16", &pb.InferTensorContents{IntContents: []int32{-2, 258}}, le.AppendUint16(le.AppendUint16(nil, 0xfffe), 258)},
		{"INT32", &pb.InferTensorContents{IntContents: []int32{-1, 1 << 20}}, le.AppendUint32(le.AppendUint32(nil, math.MaxUint32), 1<<20)},
		{"INT64", &pb.InferTensorContents{Int64Contents: []int64{-1, 5}}, le.AppendUint64(le.AppendUint64(nil, math.MaxUint64), 5)},
		{"UINT8", &pb.InferTensorContents{UintContents: []uint32{0, 255}}, []byte{0, 255}},
		{"UINT16", &pb.InferTensorContents{UintContents: []uint32{1, 65535}}, le.AppendUint16(le.AppendUint16(nil, 1), 65535)},
		{"UINT32", &pb.InferTensorContents{UintContents: []uint32{7, math.MaxUint32}}, le.AppendUint32(le.AppendUint32(nil, 7), math.MaxUint32)},
		{"UINT64", &pb.InferTensorContents{Uint64Contents: []uint64{math.MaxUint64, 2}}, le.AppendUint64(le.AppendUint64(nil, math.MaxUint64), 2)},
		{"FP32", &pb.InferTensorContents{Fp32Contents: []float32{1.5, -2}}, le.AppendUint32(le.AppendUint32(nil, math.Float32bits(1.5)), math.Float32bits(-2))},
		{"FP64", &pb.InferTensorContents{Fp64Contents: []float64{0.25, 3}}, le.AppendUint64(le.AppendUint64(nil, math.Float64bits(0.25)), math.Float64bits(3))},
	} {
		ts, err := decodeInputs(&pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", tc.dt, []int64{2}, tc.c)}})
		require.NoError(t, err, tc.dt)
		require.Len(t, ts, 1)
		assert.Equal(t, tensor.DataType(tc.dt), ts[0].DataType)
		assert.Equal(t, []int{2}, ts[0].Shape)
		assert.Equal(t, tc.want, ts[0].Data, "%s: got %x, want %x", tc.dt, ts[0].Data, tc.want)
	}
	ts, err := decodeInputs(&pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{
		in("s", "BYTES", []int64{2}, &pb.InferTensorContents{BytesContents: [][]byte{[]byte("a"), []byte("bc")}}),
		in("empty", "FP32", []int64{0, 3}, nil),
	}})
	require.NoError(t, err)
	assert.Equal(t, [][]byte{[]byte("a"), []byte("bc")}, ts[0].Strings)
	assert.Empty(t, ts[1].Data)
}

// Raw contents are aliased, not copied.
func TestDecodeRaw(t *testing.T) {
	raw := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	ts, err := decodeInputs(&pb.ModelInferRequest{
		Inputs:           []*pb.ModelInferRequest_InferInputTensor{in("a", "FP16", []int64{2, 2}, nil)},
		RawInputContents: [][]byte{raw},
	})
	require.NoError(t, err)
	assert.Equal(t, []int{2, 2}, ts[0].Shape)
	assert.Same(t, &raw[0], &ts[0].Data[0])
}

// Every refusal is a client error that names the input and says what is
// wrong.
func TestDecodeRefuses(t *testing.T) {
	fp := &pb.InferTensorContents{Fp32Contents: []float32{1, 2}}
	for _, tc := range []struct {
		name string
		req  *pb.ModelInferRequest
		msg  string
	}{
		{"no name", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("", "FP32", []int64{2}, fp)}},
			"inputs[0]: name is required"},
		{"no datatype", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "", []int64{2}, fp)}},
			`input "x": datatype is required`},
		{"unknown datatype", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FLOAT32", []int64{2}, fp)}},
			`input "x": unknown datatype "FLOAT32"`},
		{"negative dim", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{-1, 2}, fp)}},
			"dimension -1 is out of range"},
		{"huge shape", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{1 << 30, 1 << 30}, fp)}},
			"too many elements"},
		{"no data", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{2}, nil)}},
			`input "x" has no data: set contents.fp32_contents or raw_input_contents`},
		{"two fields", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{2},
			&pb.InferTensorContents{Fp32Contents: []float32{1, 2}, IntContents: []int32{1, 2}})}}, "more than one field set"},
		{"wrong field", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "INT64", []int64{2},
			&pb.InferTensorContents{IntContents: []int32{1, 2}})}}, "datatype INT64 takes contents.int64_contents, not int_contents"},
		{"fp16 typed", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP16", []int64{2}, fp)}},
			"FP16 has no typed contents: send it in raw_input_contents"},
		{"count", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{3}, fp)}},
			"2 values in contents.fp32_contents, shape [3] needs 3"},
		{"int8 range", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "INT8", []int64{1},
			&pb.InferTensorContents{IntContents: []int32{128}})}}, "value 128 at 0 is out of range for INT8"},
		{"uint16 range", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "UINT16", []int64{2},
			&pb.InferTensorContents{UintContents: []uint32{1, 70000}})}}, "value 70000 at 1 is out of range for UINT16"},
		{"raw count", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{1}, nil)},
			RawInputContents: [][]byte{{0, 0, 0, 0}, {1}}}, "raw_input_contents has 2 entries for 1 inputs"},
		{"raw size", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{2}, nil)},
			RawInputContents: [][]byte{{0, 0, 0, 0}}}, `input "x": raw_input_contents[0] holds 4 bytes, shape [2] of FP32 needs 8`},
		{"raw and typed", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{2}, fp)},
			RawInputContents: [][]byte{make([]byte, 8)}}, "both contents and raw_input_contents are set"},
		{"raw bytes", &pb.ModelInferRequest{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "BYTES", []int64{1}, nil)},
			RawInputContents: [][]byte{{1}}}, "BYTES in raw_input_contents are not supported"},
	} {
		_, err := decodeInputs(tc.req)
		require.Error(t, err, tc.name)
		assert.True(t, errors.Is(err, tensorjson.ErrBadRequest), "%s: %v is not a bad request", tc.name, err)
		assert.ErrorContains(t, err, tc.msg, tc.name)
		assert.Regexp(t, `^grpc: `, err.Error(), tc.name)
	}
}

// FuzzDecodeInputs feeds arbitrary ModelInferRequest messages to the
// decoder: it never panics, refuses only with client errors, and what it
// accepts is consistent (data exactly fills each input's shape).
func FuzzDecodeInputs(f *testing.F) {
	seeds := []*pb.ModelInferRequest{
		{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{2}, &pb.InferTensorContents{Fp32Contents: []float32{1, 2}})}},
		{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "UINT8", []int64{1, 3}, nil)}, RawInputContents: [][]byte{{1, 2, 3}}},
		{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "INT16", []int64{2}, &pb.InferTensorContents{IntContents: []int32{-1, 40000}})}},
		{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("s", "BYTES", []int64{1}, &pb.InferTensorContents{BytesContents: [][]byte{[]byte("a")}})}},
		{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("a", "FP16", []int64{1}, nil), in("b", "BOOL", []int64{2}, nil)}, RawInputContents: [][]byte{{0, 0}, {1, 0}}},
		{Inputs: []*pb.ModelInferRequest_InferInputTensor{in("x", "FP32", []int64{1 << 40, 1 << 40}, nil)}, RawInputContents: [][]byte{{}}},
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.ModelInferRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		ts, err := decodeInputs(&req)
		if err != nil {
			if !errors.Is(err, tensorjson.ErrBadRequest) {
				t.Fatalf("not a client error: %v", err)
			}
			return
		}
		if len(ts) != len(req.Inputs) {
			t.Fatalf("%d tensors for %d inputs", len(ts), len(req.Inputs))
		}
		for i, x := range ts {
			n, err := tensor.NumElements(x.Shape)
			if err != nil {
				t.Fatalf("input %d: accepted shape %v: %v", i, x.Shape, err)
			}
			if x.DataType == tensor.Bytes {
				if len(x.Strings) != n {
					t.Fatalf("input %d: %d strings for %d elements", i, len(x.Strings), n)
				}
				continue
			}
			if len(x.Data) != n*x.DataType.Size() {
				t.Fatalf("input %d: %d bytes for %d elements of %s", i, len(x.Data), n, x.DataType)
			}
		}
	})
}
