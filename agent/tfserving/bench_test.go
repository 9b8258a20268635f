package tfserving

import (
	"encoding/json"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/tensor"
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
// the same body into [][][][]float32, alternating the two and reporting
// their medians and encoding/json's time over ours as speedup.
func BenchmarkDecodePredict(b *testing.B) {
	body, sig := benchPredictBody(b)
	var to, tt []time.Duration
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		t0 := time.Now()
		if _, err := DecodePredict(body, sig); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		var v struct {
			Instances [][][][]float32 `json:"instances"`
		}
		if err := json.Unmarshal(body, &v); err != nil {
			b.Fatal(err)
		}
		tt = append(tt, time.Since(t1))
		to = append(to, t1.Sub(t0))
	}
	slices.Sort(to)
	slices.Sort(tt)
	mo, mt := to[len(to)/2], tt[len(tt)/2]
	b.ReportMetric(float64(mo.Nanoseconds()), "ours-ns/op")
	b.ReportMetric(float64(mt.Nanoseconds()), "encjson-ns/op")
	b.ReportMetric(float64(mt)/float64(mo), "speedup")
}
