package oip

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson/jsonbench"
)

// The sizes of face_detection_short_range: a 1x128x128x3 FP32 input and
// 896x16 box plus 896 score outputs.
const (
	benchInput  = 128 * 128 * 3
	benchBoxes  = 896 * 16
	benchScores = 896
)

// jsonRequest and jsonResponse are what a straightforward encoding/json
// implementation would declare: the baseline the codecs are measured against.
type jsonRequest struct {
	ID      string       `json:"id,omitempty"`
	Inputs  []jsonTensor `json:"inputs"`
	Outputs []struct {
		Name       string `json:"name"`
		Parameters struct {
			BinaryData bool `json:"binary_data"`
		} `json:"parameters"`
	} `json:"outputs,omitempty"`
}

type jsonTensor struct {
	Name     string    `json:"name"`
	Shape    []int     `json:"shape"`
	DataType string    `json:"datatype"`
	Data     []float32 `json:"data"`
}

type jsonResponse struct {
	ModelName    string            `json:"model_name"`
	ModelVersion string            `json:"model_version"`
	ID           string            `json:"id,omitempty"`
	Parameters   map[string]string `json:"parameters,omitempty"`
	Outputs      []jsonTensor      `json:"outputs"`
}

func randFloats(n int, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	f := make([]float32, n)
	for i := range f {
		f[i] = r.Float32()*2 - 1
	}
	return f
}

func packFloats(f []float32) []byte {
	b := make([]byte, 0, 4*len(f))
	for _, v := range f {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return b
}

func benchRequestBody(tb testing.TB) []byte {
	body, err := json.Marshal(jsonRequest{ID: "bench", Inputs: []jsonTensor{{
		Name: "input", Shape: []int{1, 128, 128, 3}, DataType: "FP32", Data: randFloats(benchInput, 1),
	}}})
	if err != nil {
		tb.Fatal(err)
	}
	return body
}

func benchResponse() (*Response, jsonResponse) {
	boxes, scores := randFloats(benchBoxes, 2), randFloats(benchScores, 3)
	r := &Response{ModelName: "face", ModelVersion: "3", ID: "bench", ModelDigest: "sha256:0123", Outputs: []Output{
		{Tensor: tensor.Tensor{Name: "regressors", DataType: tensor.FP32, Shape: []int{1, 896, 16}, Data: packFloats(boxes)}},
		{Tensor: tensor.Tensor{Name: "classificators", DataType: tensor.FP32, Shape: []int{1, 896, 1}, Data: packFloats(scores)}},
	}}
	j := jsonResponse{ModelName: "face", ModelVersion: "3", ID: "bench", Parameters: map[string]string{"model_digest": "sha256:0123"}, Outputs: []jsonTensor{
		{Name: "regressors", DataType: "FP32", Shape: []int{1, 896, 16}, Data: boxes},
		{Name: "classificators", DataType: "FP32", Shape: []int{1, 896, 1}, Data: scores},
	}}
	return r, j
}

// BenchmarkDecodeRequest compares DecodeRequest with encoding/json
// unmarshalling the same body into a struct with Data []float32. The
// speedup metric is the median over interleaved rounds of encoding/json's
// time over ours.
func BenchmarkDecodeRequest(b *testing.B) {
	body := benchRequestBody(b)
	var r Request
	var j jsonRequest
	jsonbench.Compare(b, "encjson", len(body), func() {
		r.Reset()
		if err := DecodeRequest(body, -1, &r); err != nil {
			b.Fatal(err)
		}
	}, func() {
		j = jsonRequest{}
		if err := json.Unmarshal(body, &j); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkAppendResponse compares AppendResponse with encoding/json
// marshalling the same outputs as structs with Data []float32.
func BenchmarkAppendResponse(b *testing.B) {
	r, j := benchResponse()
	var out []byte
	out, _ = AppendResponse(out[:0], r)
	jsonbench.Compare(b, "encjson", len(out), func() {
		out, _ = AppendResponse(out[:0], r)
	}, func() {
		if _, err := json.Marshal(&j); err != nil {
			b.Fatal(err)
		}
	})
}
