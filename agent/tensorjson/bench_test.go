package tensorjson

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

func benchFloats() []float32 {
	r := rand.New(rand.NewPCG(1, 2))
	f := make([]float32, 1024)
	for i := range f {
		f[i] = r.Float32()*2 - 1
	}
	return f
}

func BenchmarkAppendFloat32(b *testing.B) {
	f := benchFloats()
	buf := make([]byte, 0, 64)
	for i := 0; b.Loop(); i++ {
		buf = appendFloat32(buf[:0], f[i&1023])
	}
}

func BenchmarkStrconvAppendFloat32(b *testing.B) {
	f := benchFloats()
	buf := make([]byte, 0, 64)
	for i := 0; b.Loop(); i++ {
		buf = strconv.AppendFloat(buf[:0], float64(f[i&1023]), 'g', -1, 32)
	}
}

// BenchmarkFloat32Interleaved alternates the two formatters over the same
// values and reports their ratio, which survives a noisy machine better
// than two separate benchmarks.
func BenchmarkFloat32Interleaved(b *testing.B) {
	f := benchFloats()
	buf := make([]byte, 0, 16<<10)
	var ours, theirs int64
	for b.Loop() {
		t0 := nanotime()
		buf = buf[:0]
		for _, v := range f {
			buf = appendFloat32(buf, v)
		}
		t1 := nanotime()
		buf = buf[:0]
		for _, v := range f {
			buf = strconv.AppendFloat(buf, float64(v), 'g', -1, 32)
		}
		theirs += nanotime() - t1
		ours += t1 - t0
	}
	b.ReportMetric(float64(theirs)/float64(ours), "speedup")
}
