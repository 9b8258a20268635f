package tensorjson

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson/jsonbench"
)

// benchSizes are the FP32 tensors the codec is measured on: the face
// model's box regressors ([1,896,16]) and a large tensor of 1M floats.
var benchSizes = []struct {
	name string
	n    int
}{
	{"face-1x896x16", 896 * 16},
	{"large-1M", 1 << 20},
}

// randFloats returns n values uniform in (-1, 1), like a model's
// normalised outputs: mostly 8 or 9 significant digits each.
func randFloats(n int, seed uint64) []float32 {
	r := rand.New(rand.NewPCG(seed, 2))
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

// BenchmarkEncodeFP32 compares Encoder.AppendFlat into a reused buffer with
// json.Marshal of the same []float32, and reports encoding/json's time over
// ours as speedup (median of interleaved rounds).
func BenchmarkEncodeFP32(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			f := randFloats(sz.n, 1)
			data := packFloats(f)
			out := Encoder{}.AppendFlat(nil, tensor.FP32, data, nil)
			var back []float32
			if err := json.Unmarshal(out, &back); err != nil || len(back) != len(f) || back[len(f)-1] != f[len(f)-1] {
				b.Fatalf("output does not read back: %v", err)
			}
			jsonbench.Compare(b, "encjson", len(out), func() {
				out = Encoder{}.AppendFlat(out[:0], tensor.FP32, data, nil)
			}, func() {
				if _, err := json.Marshal(f); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkDecodeFP32 compares Elements.Decode with json.Unmarshal into a
// []float32, both reusing their storage, on the body encoding/json writes.
func BenchmarkDecodeFP32(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			body, err := json.Marshal(randFloats(sz.n, 2))
			if err != nil {
				b.Fatal(err)
			}
			e := Elements{DataType: tensor.FP32}
			var s Scanner
			var v []float32
			jsonbench.Compare(b, "encjson", len(body), func() {
				s.Reset(body, 0)
				e.Data = e.Data[:0]
				if err := e.Decode(&s); err != nil || e.N != sz.n {
					b.Fatalf("decoded %d elements (%v), want %d", e.N, err, sz.n)
				}
			}, func() {
				if err := json.Unmarshal(body, &v); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}

// BenchmarkFormatFloat32 compares the float32 formatter alone with
// strconv.AppendFloat(f, 'g', -1, 32), which writes the same text.
func BenchmarkFormatFloat32(b *testing.B) {
	f := randFloats(4096, 3)
	buf := make([]byte, 0, 64<<10)
	jsonbench.Compare(b, "strconv", 0, func() {
		buf = buf[:0]
		for _, v := range f {
			buf = appendFloat32(buf, v)
		}
	}, func() {
		buf = buf[:0]
		for _, v := range f {
			buf = strconv.AppendFloat(buf, float64(v), 'g', -1, 32)
		}
	})
}
