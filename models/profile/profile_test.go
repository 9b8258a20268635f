package profile

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestDriftKnownValues(t *testing.T) {
	// Values computed independently from the formulas in the doc comments
	// (Smoothing 0.5, natural log for PSI, base 2 for JS).
	for _, tc := range []struct {
		ref, obs []uint64
		psi, js  float64
	}{
		{[]uint64{100, 100}, []uint64{150, 50}, 0.2716392407730388, 0.0487949406953985},
		{[]uint64{50, 30, 20, 0}, []uint64{20, 30, 30, 20}, 1.032263851106713, 0.15517015238801202},
		{[]uint64{10, 0}, []uint64{0, 10}, 5.535495341315315, 1},
		{[]uint64{7, 3, 9}, []uint64{70, 30, 90}, 0.0009906667257852883, 0},
	} {
		psi, err := PSI(tc.ref, tc.obs)
		if err != nil {
			t.Fatal(err)
		}
		js, err := JS(tc.ref, tc.obs)
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(psi-tc.psi) > 1e-12 {
			t.Errorf("PSI(%v, %v) = %v, want %v", tc.ref, tc.obs, psi, tc.psi)
		}
		if math.Abs(js-tc.js) > 1e-12 {
			t.Errorf("JS(%v, %v) = %v, want %v", tc.ref, tc.obs, js, tc.js)
		}
	}
	same := []uint64{4, 8, 15, 16, 23, 42}
	if psi, _ := PSI(same, same); psi != 0 {
		t.Errorf("PSI of identical histograms = %v, want 0", psi)
	}
	if _, err := PSI([]uint64{1, 2}, []uint64{1, 2, 3}); !errors.Is(err, ErrBins) {
		t.Errorf("PSI of mismatched bins: got %v, want ErrBins", err)
	}
	if _, err := JS([]uint64{1, 2}, []uint64{1}); !errors.Is(err, ErrBins) {
		t.Errorf("JS of mismatched bins: got %v, want ErrBins", err)
	}
	if psi, err := PSI([]uint64{1, 2}, []uint64{0, 0}); psi != 0 || err != nil {
		t.Errorf("PSI against an empty histogram = %v, %v; want 0, nil", psi, err)
	}
}

func TestBin(t *testing.T) {
	edges := []float64{-1, 0, 2.5}
	for _, tc := range []struct {
		v    float64
		want int
	}{{-5, 0}, {-1, 1}, {-0.5, 1}, {0, 2}, {2.4999, 2}, {2.5, 3}, {1e9, 3}, {math.Inf(-1), 0}, {math.Inf(1), 3}} {
		if got := Bin(edges, tc.v); got != tc.want {
			t.Errorf("Bin(%v, %v) = %d, want %d", edges, tc.v, got, tc.want)
		}
	}
}

func f32s(vs ...float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

func TestExtractorFeatures(t *testing.T) {
	x, err := NewExtractor(
		[]Tensor{{"image", "FP32", []int{1, 2, 2, 3}}, {"vec", "INT32", []int{1, 3}}, {"seq", "UINT8", []int{-1, 100}}, {"text", "BYTES", []int{1}}},
		[]Tensor{{"scores", "FP32", []int{1, 4}}})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"in:image:c0:mean", "in:image:c0:std", "in:image:c1:mean", "in:image:c1:std", "in:image:c2:mean", "in:image:c2:std",
		"in:vec:0", "in:vec:1", "in:vec:2", "in:seq:mean", "in:seq:std", "out:scores:max", "out:scores:mean"}
	if got := strings.Join(x.Names(), " "); got != strings.Join(want, " ") {
		t.Fatalf("names\n got %s\nwant %s", got, strings.Join(want, " "))
	}
	// Four pixels: channel 0 is 1,1,3,3 (mean 2, std 1), channel 1 all 5,
	// channel 2 is 0,0,0,4 (mean 1, std √3).
	img := f32s(1, 5, 0, 1, 5, 0, 3, 5, 0, 3, 5, 4)
	vec := make([]byte, 12)
	for i, v := range []int32{-7, 0, 9} {
		binary.LittleEndian.PutUint32(vec[4*i:], uint32(v))
	}
	seq := make([]byte, 200) // two rows of an open dimension: 100 × 2, 100 × 4
	for i := range seq {
		seq[i] = 2
		if i >= 100 {
			seq[i] = 4
		}
	}
	dst := make([]float64, x.Len())
	if err := x.Extract([][]byte{img, vec, seq, []byte("x")}, [][]byte{f32s(0.1, 0.9, -2, 0.2)}, dst); err != nil {
		t.Fatal(err)
	}
	wantV := []float64{2, 1, 5, 0, 1, math.Sqrt(3), -7, 0, 9, 3, 1, float64(float32(0.9)), float64(float32(0.1)+float32(0.9)+float32(-2)+float32(0.2)) / 4}
	for i := range wantV {
		if math.Abs(dst[i]-wantV[i]) > 1e-6 {
			t.Errorf("%s = %v, want %v", x.Names()[i], dst[i], wantV[i])
		}
	}
	if err := x.Extract([][]byte{img[:8], vec, seq, nil}, [][]byte{f32s(1, 2, 3, 4)}, dst); err == nil {
		t.Error("an image of 2 floats for 3 channels was accepted")
	}
	if err := x.Extract([][]byte{img, vec[:8], seq, nil}, [][]byte{f32s(1, 2, 3, 4)}, dst); err == nil {
		t.Error("a vector of 2 elements for 3 was accepted")
	}
	allocs := testing.AllocsPerRun(100, func() {
		_ = x.Extract([][]byte{img, vec, seq, nil}, [][]byte{f32s(0.1, 0.9, -2, 0.2)}, dst)
	})
	if allocs > 1 { // f32s in the closure allocates once
		t.Errorf("Extract allocates: %v per run", allocs)
	}
}

func TestExtractorSamplesLargeTensors(t *testing.T) {
	// An image of 128×128 pixels is read in chunks of 16 pixels, every 17th
	// chunk (61 chunks, 976 pixels): the features of uniform noise are close
	// to the whole image's.
	x, err := NewExtractor([]Tensor{{"in", "FP32", []int{1, 128, 128, 1}}}, []Tensor{{"out", "FP32", []int{1, 5000}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ n, want int }{{1024, 1}, {1025, 3}, {128 * 128, 17}, {896 * 16, 15}, {5000, 5}} {
		if s := sampling(tc.n); s != tc.want {
			t.Errorf("sampling(%d) = %d, want %d", tc.n, s, tc.want)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	img := make([]float32, 128*128)
	for i := range img {
		img[i] = r.Float32()
	}
	out := make([]float32, 5000)
	out[0] = 10 // the sampled maximum sees index 0
	dst := make([]float64, x.Len())
	if err := x.Extract([][]byte{f32s(img...)}, [][]byte{f32s(out...)}, dst); err != nil {
		t.Fatal(err)
	}
	if math.Abs(dst[0]-0.5) > 0.03 || math.Abs(dst[1]-math.Sqrt(1.0/12)) > 0.02 {
		t.Errorf("uniform image: mean %v std %v, want about 0.5 and %v", dst[0], dst[1], math.Sqrt(1.0/12))
	}
	if dst[2] != 10 {
		t.Errorf("out max = %v, want 10", dst[2])
	}
}

func TestBuildQuantileEdges(t *testing.T) {
	b := NewBuilder([]string{"u", "const", "nan"})
	for i := range 1000 {
		if err := b.Add([]float64{float64(i), 3, math.NaN()}); err != nil {
			t.Fatal(err)
		}
	}
	p, err := b.Build(20)
	if err != nil {
		t.Fatal(err)
	}
	u := p.Feature("u")
	if len(u.Edges) != 19 || len(u.Counts) != 20 {
		t.Fatalf("u: %d edges %d counts, want 19 and 20", len(u.Edges), len(u.Counts))
	}
	for i, c := range u.Counts {
		if c != 50 {
			t.Errorf("u: bin %d holds %d, want 50 (edges %v)", i, c, u.Edges)
		}
	}
	if u.Count != 1000 || u.Min != 0 || u.Max != 999 || u.Mean != 499.5 || math.Abs(u.Variance-83333.25) > 1e-6 {
		t.Errorf("u: moments %+v", u)
	}
	c := p.Feature("const")
	if len(c.Edges) != 1 || c.Counts[1] != 1000 || c.Variance != 0 {
		t.Errorf("const: %+v, want one edge at 3 holding every value above it", c)
	}
	if n := p.Feature("nan"); n.NaNs != 1000 || n.Count != 0 {
		t.Errorf("nan: %+v", n)
	}
	if _, err := NewBuilder([]string{"a"}).Build(20); !errors.Is(err, ErrTooFew) {
		t.Errorf("empty builder: got %v, want ErrTooFew", err)
	}
}

func TestValidate(t *testing.T) {
	good := func() *Profile {
		return &Profile{Version: 1, Requests: 3, Features: []Feature{{Name: "a", Edges: []float64{0, 1}, Counts: []uint64{1, 1, 1}, Count: 3, Max: 2}}}
	}
	if err := good().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Profile){
		"version":        func(p *Profile) { p.Version = 2 },
		"no features":    func(p *Profile) { p.Features = nil },
		"edges order":    func(p *Profile) { p.Features[0].Edges = []float64{1, 1} },
		"counts length":  func(p *Profile) { p.Features[0].Counts = []uint64{3} },
		"count sum":      func(p *Profile) { p.Features[0].Count = 4 },
		"nan edge":       func(p *Profile) { p.Features[0].Edges[0] = math.NaN() },
		"duplicate name": func(p *Profile) { p.Features = append(p.Features, p.Features[0]) },
		"negative var":   func(p *Profile) { p.Features[0].Variance = -1 },
	} {
		p := good()
		mod(p)
		if err := p.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	big := good()
	for i := range 400 {
		f := big.Features[0]
		f.Name = strings.Repeat("x", 100) + string(rune('a'+i%26)) + strings.Repeat("y", i/26)
		f.Edges = make([]float64, 40)
		f.Counts = make([]uint64, 41)
		f.Count = 0
		for j := range f.Edges {
			f.Edges[j] = 1.2345678 + float64(j)
		}
		big.Features = append(big.Features, f)
	}
	if err := big.Validate(); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a profile of 400 features: got %v, want ErrTooLarge", err)
	}
}

func TestParseRefusesUnknownFields(t *testing.T) {
	_, err := Parse([]byte(`{"version":1,"requests":1,"features":[{"name":"a","edges":[0],"counts":[0,1],"count":1,"mean":1,"variance":0,"min":1,"max":1}],"extra":1}`))
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("got %v, want ErrInvalid", err)
	}
	p, err := Parse([]byte(`{"version":1,"requests":1,"features":[{"name":"a","edges":[0],"counts":[0,1],"count":1,"mean":1,"variance":0,"min":1,"max":1}]}`))
	if err != nil || p.Features[0].Counts[1] != 1 {
		t.Errorf("got %+v, %v", p, err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"version":1,"requests":1,"features":[{"name":"a","edges":[0],"counts":[0,1],"count":1,"mean":1,"variance":0,"min":1,"max":1}]}`))
	f.Add([]byte(`{"version":1,"requests":3,"features":[{"name":"in:x:mean","edges":[-1,0,2.5],"counts":[1,0,1,1],"nans":2,"count":3,"mean":0.5,"variance":2,"min":-2,"max":3}]}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("Parse accepted what Validate refuses: %v", err)
		}
		for _, feat := range p.Features {
			// Binning any value stays within the counts.
			for _, v := range []float64{math.Inf(-1), -1e300, 0, 1e300, math.Inf(1), feat.Edges[0]} {
				if i := Bin(feat.Edges, v); i < 0 || i >= len(feat.Counts) {
					t.Fatalf("Bin(%v) = %d for %d counts", v, i, len(feat.Counts))
				}
			}
			if _, err := PSI(feat.Counts, feat.Counts); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// BenchmarkExtractFace: the features of one request of the face model's
// signature (an image of 128×128×3, outputs of 896×16 and 896 floats).
func BenchmarkExtractFace(b *testing.B) {
	x, err := NewExtractor([]Tensor{{"input", "FP32", []int{1, 128, 128, 3}}},
		[]Tensor{{"regressors", "FP32", []int{1, 896, 16}}, {"classificators", "FP32", []int{1, 896, 1}}})
	if err != nil {
		b.Fatal(err)
	}
	ins, outs := [][]byte{make([]byte, 128*128*3*4)}, [][]byte{make([]byte, 896*16*4), make([]byte, 896*4)}
	dst := make([]float64, x.Len())
	for b.Loop() {
		if err := x.Extract(ins, outs, dst); err != nil {
			b.Fatal(err)
		}
	}
}
