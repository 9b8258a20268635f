package tfserving

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/tensor"
)

func f32(vals ...float32) []byte {
	var b []byte
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

var (
	sigImage = []tensor.Info{{Name: "image", DataType: tensor.FP32, Shape: []int{-1, 2, 2}}}
	sigFixed = []tensor.Info{{Name: "x", DataType: tensor.FP32, Shape: []int{1, 3}}}
	sigTwo   = []tensor.Info{
		{Name: "a", DataType: tensor.Int32, Shape: []int{-1, 2}},
		{Name: "b", DataType: tensor.Bytes, Shape: []int{-1}},
	}
	sigBytes = []tensor.Info{{Name: "s", DataType: tensor.Bytes, Shape: []int{-1}}}
	sigU8    = []tensor.Info{{Name: "u", DataType: tensor.Uint8, Shape: []int{-1, 3}}}
	sigVec   = []tensor.Info{{Name: "v", DataType: tensor.FP32, Shape: []int{-1}}}
	sigScal  = []tensor.Info{{Name: "k", DataType: tensor.Int64, Shape: []int{}}}
)

func le32(vals ...int32) []byte {
	var b []byte
	for _, v := range vals {
		b = binary.LittleEndian.AppendUint32(b, uint32(v))
	}
	return b
}

type predictCase struct {
	name    string
	sig     []tensor.Info
	body    string
	want    []tensor.Tensor
	wantRow bool
	wantErr string
}

var predictCases = []predictCase{
	{name: "row one input nested", sig: sigImage, body: `{"instances": [[[1,2],[3,4]], [[5,6],[7,8]]]}`, wantRow: true,
		want: []tensor.Tensor{{Name: "image", DataType: tensor.FP32, Shape: []int{2, 2, 2}, Data: f32(1, 2, 3, 4, 5, 6, 7, 8)}}},
	{name: "row one input flat per instance", sig: sigImage, body: `{"signature_name":"serving_default","instances": [[1,2,3,4]]}`, wantRow: true,
		want: []tensor.Tensor{{Name: "image", DataType: tensor.FP32, Shape: []int{1, 2, 2}, Data: f32(1, 2, 3, 4)}}},
	{name: "row one input named", sig: sigImage, body: `{"instances": [{"image": [[1,2],[3,4]]}]}`, wantRow: true,
		want: []tensor.Tensor{{Name: "image", DataType: tensor.FP32, Shape: []int{1, 2, 2}, Data: f32(1, 2, 3, 4)}}},
	{name: "row scalars per instance", sig: sigVec, body: `{"instances": [1.5, "NaN", 3]}`, wantRow: true,
		want: []tensor.Tensor{{Name: "v", DataType: tensor.FP32, Shape: []int{3}, Data: f32(1.5, float32(math.NaN()), 3)}}},
	{name: "row fixed batch", sig: sigFixed, body: `{"instances": [[1,2,3]]}`, wantRow: true,
		want: []tensor.Tensor{{Name: "x", DataType: tensor.FP32, Shape: []int{1, 3}, Data: f32(1, 2, 3)}}},
	{name: "row two inputs", sig: sigTwo, body: `{"instances": [{"b": "x", "a": [1,2]}, {"a": [3,4], "b": {"b64": "AP8="}}]}`, wantRow: true,
		want: []tensor.Tensor{
			{Name: "a", DataType: tensor.Int32, Shape: []int{2, 2}, Data: le32(1, 2, 3, 4)},
			{Name: "b", DataType: tensor.Bytes, Shape: []int{2}, Strings: [][]byte{[]byte("x"), {0x00, 0xff}}},
		}},
	{name: "row bytes b64", sig: sigBytes, body: `{"instances": [{"b64": "aGk="}, "plain"]}`, wantRow: true,
		want: []tensor.Tensor{{Name: "s", DataType: tensor.Bytes, Shape: []int{2}, Strings: [][]byte{[]byte("hi"), []byte("plain")}}}},
	{name: "row uint8", sig: sigU8, body: `{"instances": [[0, 128, 255]]}`, wantRow: true,
		want: []tensor.Tensor{{Name: "u", DataType: tensor.Uint8, Shape: []int{1, 3}, Data: []byte{0, 128, 255}}}},
	{name: "columnar one input", sig: sigImage, body: `{"inputs": [[[1,2],[3,4]]]}`,
		want: []tensor.Tensor{{Name: "image", DataType: tensor.FP32, Shape: []int{1, 2, 2}, Data: f32(1, 2, 3, 4)}}},
	{name: "columnar one input named", sig: sigFixed, body: `{"inputs": {"x": [[1,2,3]]}}`,
		want: []tensor.Tensor{{Name: "x", DataType: tensor.FP32, Shape: []int{1, 3}, Data: f32(1, 2, 3)}}},
	{name: "columnar flat with fixed shape", sig: sigFixed, body: `{"inputs": [1,2,3]}`,
		want: []tensor.Tensor{{Name: "x", DataType: tensor.FP32, Shape: []int{1, 3}, Data: f32(1, 2, 3)}}},
	{name: "columnar two inputs", sig: sigTwo, body: `{"inputs": {"a": [[1,2]], "b": ["z"]}, "extra": 1}`,
		want: []tensor.Tensor{
			{Name: "a", DataType: tensor.Int32, Shape: []int{1, 2}, Data: le32(1, 2)},
			{Name: "b", DataType: tensor.Bytes, Shape: []int{1}, Strings: [][]byte{[]byte("z")}},
		}},
	{name: "columnar scalar", sig: sigScal, body: `{"inputs": 42}`,
		want: []tensor.Tensor{{Name: "k", DataType: tensor.Int64, Shape: []int{}, Data: []byte{42, 0, 0, 0, 0, 0, 0, 0}}}},
	{name: "columnar bytes b64 value", sig: sigBytes, body: `{"inputs": [{"b64": "aGk="}]}`,
		want: []tensor.Tensor{{Name: "s", DataType: tensor.Bytes, Shape: []int{1}, Strings: [][]byte{[]byte("hi")}}}},

	// Errors.
	{name: "no instances or inputs", sig: sigImage, body: `{"signature_name": "x"}`, wantErr: `request has neither "instances" (row format) nor "inputs" (columnar format)`},
	{name: "both formats", sig: sigImage, body: `{"instances": [[[1,2],[3,4]]], "inputs": []}`, wantErr: `request has both "instances" and "inputs"`},
	{name: "batch mismatch", sig: sigFixed, body: `{"instances": [[1,2,3],[4,5,6]]}`, wantErr: `input "x": batch of 2, the signature's first dimension is 1`},
	{name: "shape mismatch", sig: sigImage, body: `{"instances": [[1,2,3]]}`, wantErr: `input "image": data is nested as [1 3] (3 elements), the signature's shape is [-1 2 2]`},
	{name: "ragged instances", sig: sigImage, body: `{"instances": [[[1,2],[3,4]], [[5,6]]]}`, wantErr: `input "image": element 6: data is not rectangular`},
	{name: "empty instances", sig: sigImage, body: `{"instances": []}`, wantErr: `instances is empty`},
	{name: "uint8 range", sig: sigU8, body: `{"instances": [[0, 128, 256]]}`, wantErr: `input "u": element 2: 256 is out of range for UINT8`},
	{name: "b64 for uint8", sig: sigU8, body: `{"instances": [{"b64": "AAEC"}]}`, wantErr: `unknown input "b64"`},
	{name: "b64 for uint8 nested", sig: sigU8, body: `{"inputs": [[{"b64": "AAEC"}]]}`, wantErr: `{"b64": ...} is only accepted for BYTES, not UINT8`},
	{name: "bad base64", sig: sigBytes, body: `{"instances": [{"b64": "!!"}]}`, wantErr: `b64 string at offset`},
	{name: "b64 with other key", sig: sigBytes, body: `{"inputs": [{"b64": "aGk=", "x": 1}]}`, wantErr: `object with key "x" is not a BYTES value`},
	{name: "unknown input", sig: sigTwo, body: `{"instances": [{"a": [1,2], "c": "x"}]}`, wantErr: `instance 0: unknown input "c" (the model's inputs are "a", "b")`},
	{name: "missing input", sig: sigTwo, body: `{"instances": [{"a": [1,2]}]}`, wantErr: `instance 0 has no input "b"`},
	{name: "instance not object", sig: sigTwo, body: `{"instances": [[1,2]]}`, wantErr: `instance 0 must be an object keyed by input name, not array`},
	{name: "instances differ", sig: sigTwo, body: `{"instances": [{"a": [1,2], "b": "x"}, {"a": [1,2,3], "b": "y"}]}`, wantErr: `instance 1: input "a" is nested as [3], instance 0 as [2]`},
	{name: "input twice", sig: sigTwo, body: `{"inputs": {"a": [[1,2]], "a": [[1,2]], "b": ["z"]}}`, wantErr: `input "a" appears twice`},
	{name: "columnar missing input", sig: sigTwo, body: `{"inputs": {"a": [[1,2]]}}`, wantErr: `inputs has no input "b"`},
	{name: "columnar not object", sig: sigTwo, body: `{"inputs": [1]}`, wantErr: `inputs must be an object keyed by input name (the model has 2 inputs), not array`},
	{name: "row for scalar input", sig: sigScal, body: `{"instances": [1]}`, wantErr: `input "k" is a scalar`},
	{name: "int fraction", sig: sigTwo, body: `{"inputs": {"a": [[1,2.5]], "b": ["z"]}}`, wantErr: `input "a": element 1: 2.5 is not an integer (INT32)`},
	{name: "string for float", sig: sigVec, body: `{"instances": ["1"]}`, wantErr: `string "1" is not a FP32 value`},
	{name: "malformed", sig: sigVec, body: `{"instances": [1,}`, wantErr: `malformed JSON at offset 17`},
	{name: "not object", sig: sigVec, body: `[]`, wantErr: `expected the request object, found array`},
	{name: "truncated", sig: sigVec, body: `{"instances": [`, wantErr: `malformed JSON`},
	{name: "deep", sig: sigVec, body: `{"instances": ` + strings.Repeat("[", 80) + strings.Repeat("]", 80) + `}`, wantErr: `nested deeper than 64 levels`},
	{name: "no signature", sig: nil, body: `{"instances": [1]}`, wantErr: `the model has no inputs`},
	{name: "signature_name not string", sig: sigVec, body: `{"signature_name": 1, "instances": [1]}`, wantErr: `signature_name must be a string, not number`},
}

func TestDecodePredict(t *testing.T) {
	for _, tc := range predictCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := DecodePredict([]byte(tc.body), tc.sig)
			if tc.wantErr != "" {
				require.Error(t, err, "got no error, want %q", tc.wantErr)
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.True(t, errors.Is(err, ErrBadRequest), "got %v, want it to match ErrBadRequest", err)
				assert.True(t, strings.HasPrefix(err.Error(), "tfserving: "), "got %q", err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantRow, got.Row)
			require.Len(t, got.Inputs, len(tc.want))
			for i, w := range tc.want {
				g := got.Inputs[i]
				assert.Equal(t, w.Name, g.Name)
				assert.Equal(t, w.DataType, g.DataType)
				assert.Equal(t, len(w.Shape), len(g.Shape), "input %q shape %v", w.Name, g.Shape)
				if len(w.Shape) > 0 {
					assert.Equal(t, w.Shape, g.Shape, "input %q", w.Name)
				}
				assert.Equal(t, string(w.Data), string(g.Data), "input %q data", w.Name)
				assert.Equal(t, w.Strings, g.Strings, "input %q strings", w.Name)
			}
		})
	}
}

func TestAppendPredictResponse(t *testing.T) {
	boxes := tensor.Tensor{Name: "boxes", DataType: tensor.FP32, Shape: []int{2, 2}, Data: f32(0.1, 0.2, 0.3, float32(math.Inf(1)))}
	scores := tensor.Tensor{Name: "scores", DataType: tensor.Uint8, Shape: []int{2}, Data: []byte{7, 9}}
	label := tensor.Tensor{Name: "label", DataType: tensor.Bytes, Shape: []int{2}, Strings: [][]byte{[]byte("cat"), {0xff, 0x00}}}
	global := tensor.Tensor{Name: "global", DataType: tensor.FP32, Shape: []int{3}, Data: f32(1, 2, 3)}
	for _, tc := range []struct {
		name string
		outs []tensor.Tensor
		row  bool
		want string
	}{
		{"row one output", []tensor.Tensor{boxes}, true, `{"predictions":[[0.1,0.2],[0.3,"Infinity"]]}`},
		{"row several outputs", []tensor.Tensor{boxes, scores, label}, true,
			`{"predictions":[{"boxes":[0.1,0.2],"scores":7,"label":"cat"},{"boxes":[0.3,"Infinity"],"scores":9,"label":{"b64":"/wA="}}]}`},
		{"row falls back to columnar", []tensor.Tensor{boxes, global}, true,
			`{"outputs":{"boxes":[[0.1,0.2],[0.3,"Infinity"]],"global":[1,2,3]}}`},
		{"columnar one output", []tensor.Tensor{scores}, false, `{"outputs":[7,9]}`},
		{"columnar several outputs", []tensor.Tensor{scores, label}, false, `{"outputs":{"scores":[7,9],"label":["cat",{"b64":"/wA="}]}}`},
		{"columnar scalar", []tensor.Tensor{{Name: "n", DataType: tensor.Int64, Shape: []int{}, Data: []byte{5, 0, 0, 0, 0, 0, 0, 0}}}, false, `{"outputs":5}`},
		{"inconsistent tensor is written flat", []tensor.Tensor{{Name: "bad", DataType: tensor.FP32, Shape: []int{4}, Data: f32(1)}}, true, `{"outputs":[1]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := AppendPredictResponse([]byte("x"), tc.outs, tc.row)
			assert.Equal(t, "x"+tc.want, string(got))
			assert.True(t, json.Valid(got[1:]), "invalid JSON: %s", got)
		})
	}
}

// TestPredictRoundTrip sends responses back through DecodePredict: outputs
// written in one format must read back as inputs of the same signature.
func TestPredictRoundTrip(t *testing.T) {
	a := tensor.Tensor{Name: "a", DataType: tensor.Int32, Shape: []int{2, 2}, Data: le32(-1, 2, math.MaxInt32, math.MinInt32)}
	b := tensor.Tensor{Name: "b", DataType: tensor.Bytes, Shape: []int{2}, Strings: [][]byte{[]byte("é\"\n"), {0xff, 0xfe}}}
	for _, row := range []bool{true, false} {
		out := AppendPredictResponse(nil, []tensor.Tensor{a, b}, row)
		body := strings.Replace(strings.Replace(string(out), `"predictions"`, `"instances"`, 1), `"outputs"`, `"inputs"`, 1)
		got, err := DecodePredict([]byte(body), sigTwo)
		require.NoError(t, err, "%s", body)
		assert.Equal(t, row, got.Row)
		assert.Equal(t, a.Data, got.Inputs[0].Data)
		assert.Equal(t, a.Shape, got.Inputs[0].Shape)
		assert.Equal(t, b.Strings, got.Inputs[1].Strings)
	}
}
