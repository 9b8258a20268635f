package tensorjson

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

func TestParseFloat32MatchesStrconv(t *testing.T) {
	nums := []string{"0", "-0", "1", "0.1", "1e10", "1E-10", "123456789012345678", "1234567890123456789",
		"0.000000000000000000000001", "3.4028235e38", "16777217", "1.00000005960464477539", "0.5e1", "-2.5"}
	r := rand.New(rand.NewPCG(8, 8))
	for range scaled(200000) {
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
