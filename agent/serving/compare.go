package serving

import (
	"math"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// OutputAgreement compares one output of a candidate's answer with the
// serving version's answer to the same request.
type OutputAgreement struct {
	Name string
	// Compared: both gave the output with the same number of elements, in
	// a numeric datatype; the fields below are set only then.
	Compared bool
	// MaxAbsDiff is the largest absolute difference of one element and
	// MeanAbsDiff the mean over the elements, in real values (quantized
	// outputs are dequantized with each version's own scale). Elements
	// where either answer is NaN or infinite count in neither.
	MaxAbsDiff, MeanAbsDiff float64
	// Top1Rows and Top1Agree are set for a score vector (an output whose
	// last dimension is more than 1): the rows compared and those whose
	// highest-scoring index is the same in both answers.
	Top1Rows, Top1Agree int
}

// compare fills a from the baseline's output (info bi, bytes b) and the
// candidate's (ci, c); base and other are scratch buffers, returned for
// reuse.
func (a *OutputAgreement) compare(bi tensor.Info, b []byte, ci tensor.Info, c []byte, base, other []float64) ([]float64, []float64) {
	base, okb := realValues(bi, b, base[:0])
	other, okc := realValues(ci, c, other[:0])
	if !okb || !okc || len(base) != len(other) || len(base) == 0 {
		return base, other
	}
	a.Compared = true
	var sum float64
	n := 0
	for i := range base {
		d := math.Abs(base[i] - other[i])
		if math.IsNaN(d) || math.IsInf(d, 0) {
			continue
		}
		a.MaxAbsDiff = max(a.MaxAbsDiff, d)
		sum += d
		n++
	}
	if n > 0 {
		a.MeanAbsDiff = sum / float64(n)
	}
	if k := lastDim(ci.Shape); k > 1 && len(base)%k == 0 {
		for row := 0; row < len(base); row += k {
			a.Top1Rows++
			if argmax(base[row:row+k]) == argmax(other[row:row+k]) {
				a.Top1Agree++
			}
		}
	}
	return base, other
}

func lastDim(shape []int) int {
	if len(shape) == 0 {
		return 0
	}
	return shape[len(shape)-1]
}

func argmax(v []float64) int {
	best := 0
	for i, x := range v {
		if x > v[best] || math.IsNaN(v[best]) {
			best = i
		}
	}
	return best
}

// realValues appends data's elements to dst as float64, dequantized with
// info's scale; false for datatypes that cannot be compared (BYTES, FP16).
func realValues(info tensor.Info, data []byte, dst []float64) ([]float64, bool) {
	scale, zero := 1.0, 0.0
	if q := info.Quantization; q != nil && q.Scale != 0 {
		scale, zero = float64(q.Scale), float64(q.ZeroPoint)
	}
	ok := tensor.Each(info.DataType, data, func(v float64) {
		dst = append(dst, scale*(v-zero))
	})
	return dst, ok
}
