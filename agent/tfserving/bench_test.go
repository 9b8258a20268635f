package tfserving

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson/jsonbench"
)

// A face_detection_short_range-sized predict request: one 128x128x3 FP32
// instance, nested as TF Serving clients send it.
func benchPredictBody(tb testing.TB) ([]byte, []tensor.Info) {
	r := rand.New(rand.NewPCG(1, 1))
	img := make([][][][]float32, 1)
	img[0] = make([][][]float32, 128)
	for y := range img[0] {
		img[0][y] = make([][]float32, 128)
		for x := range img[0][y] {
			img[0][y][x] = []float32{r.Float32()*2 - 1, r.Float32()*2 - 1, r.Float32()*2 - 1}
		}
	}
	body, err := json.Marshal(map[string]any{"instances": img})
	if err != nil {
		tb.Fatal(err)
	}
	return body, []tensor.Info{{Name: "input", DataType: tensor.FP32, Shape: []int{-1, 128, 128, 3}}}
}

// BenchmarkDecodePredict compares DecodePredict with encoding/json reading
// the same body into [][][][]float32; speedup is the median over
// interleaved rounds of encoding/json's time over ours.
func BenchmarkDecodePredict(b *testing.B) {
	body, sig := benchPredictBody(b)
	jsonbench.Compare(b, "encjson", len(body), func() {
		if _, err := DecodePredict(body, sig); err != nil {
			b.Fatal(err)
		}
	}, func() {
		var v struct {
			Instances [][][][]float32 `json:"instances"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkAppendPredictResponse compares the row-format answer for the
// face model's outputs (regressors [1,896,16], classificators [1,896,1])
// with encoding/json marshalling the same nested [][]float32 values.
func BenchmarkAppendPredictResponse(b *testing.B) {
	r := rand.New(rand.NewPCG(2, 2))
	boxes := make([][]float32, 896)
	scores := make([][]float32, 896)
	var boxData, scoreData []byte
	for i := range boxes {
		boxes[i] = make([]float32, 16)
		for j := range boxes[i] {
			boxes[i][j] = r.Float32()*2 - 1
			boxData = binary.LittleEndian.AppendUint32(boxData, math.Float32bits(boxes[i][j]))
		}
		scores[i] = []float32{r.Float32()*2 - 1}
		scoreData = binary.LittleEndian.AppendUint32(scoreData, math.Float32bits(scores[i][0]))
	}
	outs := []tensor.Tensor{
		{Name: "regressors", DataType: tensor.FP32, Shape: []int{1, 896, 16}, Data: boxData},
		{Name: "classificators", DataType: tensor.FP32, Shape: []int{1, 896, 1}, Data: scoreData},
	}
	type prediction struct {
		Regressors     [][]float32 `json:"regressors"`
		Classificators [][]float32 `json:"classificators"`
	}
	j := struct {
		Predictions []prediction `json:"predictions"`
	}{[]prediction{{boxes, scores}}}
	out := AppendPredictResponse(nil, outs, true)
	jsonbench.Compare(b, "encjson", len(out), func() {
		out = AppendPredictResponse(out[:0], outs, true)
	}, func() {
		if _, err := json.Marshal(&j); err != nil {
			b.Fatal(err)
		}
	})
}
