package tensorjson

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestAppendFloat32MatchesStrconv checks the fast formatter against strconv
// on edge values and random bit patterns: the text must be identical.
func TestAppendFloat32MatchesStrconv(t *testing.T) {
	vals := []float32{0, 1, -1, 0.1, 0.5, 1e6, 1e-5, 123456, 1234567, 0.0001, 0.00001, 3.4028235e38,
		1.4e-45, 1.17549435e-38, 16777216, 16777217, 0.3, 2.5, 100, 1e21, 1e22, 9.999999e-14, 1e-13,
		float32(math.Copysign(0, -1)), 65504, 0.33333334, 7.038531e-26}
	r := rand.New(rand.NewPCG(7, 7))
	for range 300000 {
		vals = append(vals, math.Float32frombits(r.Uint32()))
		vals = append(vals, r.Float32()*2-1, float32(r.NormFloat64()*1000))
	}
	mismatches := 0
	for _, f := range vals {
		if f != f || math.IsInf(float64(f), 0) {
			continue
		}
		got := string(appendFloat32(nil, f))
		want := strconv.FormatFloat(float64(f), 'g', -1, 32)
		if got == want {
			continue
		}
		// A longer but exact form is tolerated (asymmetric rounding
		// intervals at powers of two); a value that does not read back is not.
		back, err := strconv.ParseFloat(got, 32)
		if err != nil || float32(back) != f {
			t.Fatalf("appendFloat32(%v) = %q, which reads back as %v (%v); strconv says %q", f, got, back, err, want)
		}
		mismatches++
		if mismatches < 5 {
			t.Logf("appendFloat32(%v) = %q, strconv %q", f, got, want)
		}
	}
	if mismatches > len(vals)/10000 {
		t.Errorf("%d of %d values formatted differently from strconv, want at most 1 in 10000", mismatches, len(vals))
	}
}

func TestParseFloat32MatchesStrconv(t *testing.T) {
	nums := []string{"0", "-0", "1", "0.1", "1e10", "1E-10", "123456789012345678", "1234567890123456789",
		"0.000000000000000000000001", "3.4028235e38", "16777217", "1.00000005960464477539", "0.5e1", "-2.5"}
	r := rand.New(rand.NewPCG(8, 8))
	for range 200000 {
		f := math.Float32frombits(r.Uint32())
		if f != f || math.IsInf(float64(f), 0) {
			continue
		}
		nums = append(nums, strconv.FormatFloat(float64(f), 'g', -1, 32),
			strconv.FormatFloat(r.Float64()*100, 'g', r.IntN(20)+1, 64))
		// Midpoints between float32 neighbours exercise the double-rounding guard.
		g := math.Nextafter32(f, float32(math.Inf(1)))
		nums = append(nums, strconv.FormatFloat((float64(f)+float64(g))/2, 'g', -1, 64))
	}
	for _, n := range nums {
		got, ok := parseFloat32([]byte(n))
		want, err := strconv.ParseFloat(n, 32)
		if !ok {
			continue
		}
		if err != nil || math.Float32bits(got) != math.Float32bits(float32(want)) {
			t.Fatalf("parseFloat32(%q) = %v, strconv says %v (%v)", n, got, float32(want), err)
		}
	}
}
