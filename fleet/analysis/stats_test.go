package analysis

import (
	"math"
	"math/rand/v2"
	"testing"
)

// permutationP is the exact one-sided p-value by brute force: every way of
// choosing len(x) of the pooled values as "x", U counted pair by pair (ties
// one half), the share of choices whose U is at least the observed one. It
// shares nothing with MannWhitney's recursion.
func permutationP(x, y []float64) (u2obs int, p float64) {
	pool := append(append([]float64{}, x...), y...)
	N, m := len(pool), len(x)
	u2 := func(in []bool) int { // twice U
		s := 0
		for i := range N {
			if !in[i] {
				continue
			}
			for j := range N {
				if in[j] {
					continue
				}
				switch {
				case pool[i] > pool[j]:
					s += 2
				case pool[i] == pool[j]:
					s++
				}
			}
		}
		return s
	}
	in := make([]bool, N)
	for i := range m {
		in[i] = true
	}
	u2obs = u2(in)
	var hit, all int
	for mask := 0; mask < 1<<N; mask++ {
		if popcount(mask) != m {
			continue
		}
		for i := range N {
			in[i] = mask&(1<<i) != 0
		}
		all++
		if u2(in) >= u2obs {
			hit++
		}
	}
	return u2obs, float64(hit) / float64(all)
}

func popcount(v int) int {
	n := 0
	for ; v != 0; v &= v - 1 {
		n++
	}
	return n
}

// TestMannWhitneyExactMatchesPermutations: on small samples, many with
// ties, the recursion gives the brute-force permutation p-value.
func TestMannWhitneyExactMatchesPermutations(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 300 {
		m, n := 1+rng.IntN(7), 1+rng.IntN(7)
		levels := 2 + rng.IntN(6) // few levels: ties are common
		draw := func(k int, shift int) []float64 {
			v := make([]float64, k)
			for i := range v {
				v[i] = float64(rng.IntN(levels) + rng.IntN(2)*shift)
			}
			return v
		}
		x, y := draw(m, rng.IntN(3)), draw(n, 0)
		u, p, ok := MannWhitney(x, y)
		u2, want := permutationP(x, y)
		allEqual := true
		for _, v := range append(append([]float64{}, x...), y...) {
			allEqual = allEqual && v == x[0]
		}
		if allEqual {
			if ok {
				t.Errorf("trial %d: x %v y %v all equal: got ok, want no test", trial, x, y)
			}
			continue
		}
		if !ok {
			t.Fatalf("trial %d: x %v y %v: got no test", trial, x, y)
		}
		if u*2 != float64(u2) {
			t.Errorf("trial %d: x %v y %v: got U %g, want %g", trial, x, y, u, float64(u2)/2)
		}
		if math.Abs(p-want) > 1e-12 {
			t.Errorf("trial %d: x %v y %v: got p %.15g, want %.15g", trial, x, y, p, want)
		}
	}
}

// TestMannWhitneyByHand: values worked out on paper.
func TestMannWhitneyByHand(t *testing.T) {
	// x = {4, 5, 6} above y = {1, 2, 3}: U = 9, the largest of the
	// C(6, 3) = 20 equally likely splits, so p = 1/20.
	u, p, ok := MannWhitney([]float64{4, 5, 6}, []float64{1, 2, 3})
	if !ok || u != 9 || math.Abs(p-0.05) > 1e-15 {
		t.Errorf("got U %g p %g ok %v, want U 9 p 0.05", u, p, ok)
	}
	// x = {3, 4} y = {1, 2, 3}: x's pairs: 3>1, 3>2, 3=3 (1/2), 4 beats
	// all three: U = 5.5. Doubled mid-ranks 2, 4, 7, 7, 10; x's sum 17. Of
	// the C(5, 2) = 10 pairs of ranks only the two {7, 10} reach 17:
	// p = 2/10.
	u, p, ok = MannWhitney([]float64{3, 4}, []float64{1, 2, 3})
	if !ok || u != 5.5 || math.Abs(p-0.2) > 1e-15 {
		t.Errorf("got U %g p %g ok %v, want U 5.5 p 0.2", u, p, ok)
	}
	// Normal approximation, m = n = 10, U = 80, no ties: mean 50,
	// variance 10·10·21/12 = 175, z = (80 - 50 - 0.5)/√175 = 2.22999,
	// p = 1 - Φ(2.22999) = 0.012874.
	if got := normalUpper(80, 10, 10, 0); math.Abs(got-0.012874040) > 1e-8 {
		t.Errorf("normal approximation: got %.9f, want 0.012874040", got)
	}
	// With ties: m = n = 2, values {1, 1, 1, 2}: Σ(t³-t) = 24, variance
	// 4/12 · (5 - 24/12) = 1; at U = 2, the mean: z = (2 - 2 - 0.5)/1,
	// p = Φ(0.5) = 0.691462.
	if got := normalUpper(2, 2, 2, 24); math.Abs(got-0.691462461) > 1e-8 {
		t.Errorf("normal approximation with ties: got %.9f, want 0.691462461", got)
	}
}

// TestMannWhitneyNormalNearExact: where both methods apply, the
// approximation is within 0.01 of the exact p-value.
func TestMannWhitneyNormalNearExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 50 {
		x, y := make([]float64, 20), make([]float64, 20)
		shift := rng.Float64()
		for i := range x {
			x[i] = rng.NormFloat64() + shift
			y[i] = rng.NormFloat64()
		}
		u, exact, ok := MannWhitney(x, y)
		if !ok {
			t.Fatal("no test")
		}
		approx := normalUpper(u, 20, 20, 0)
		if math.Abs(exact-approx) > 0.01 {
			t.Errorf("trial %d: U %g: exact %g, normal %g", trial, u, exact, approx)
		}
	}
}

// TestMannWhitneyProperties: U(x, y) + U(y, x) = m·n; moving the
// candidate's values up never raises p; a separated candidate above the
// baseline reaches MinP; large samples take the normal path.
func TestMannWhitneyProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for trial := range 100 {
		m, n := 1+rng.IntN(20), 1+rng.IntN(20)
		x, y := make([]float64, m), make([]float64, n)
		for i := range x {
			x[i] = math.Round(rng.NormFloat64() * 3)
		}
		for i := range y {
			y[i] = math.Round(rng.NormFloat64() * 3)
		}
		uxy, pxy, ok1 := MannWhitney(x, y)
		uyx, _, ok2 := MannWhitney(y, x)
		if !ok1 || !ok2 {
			continue // all equal: nothing to test
		}
		if uxy+uyx != float64(m*n) {
			t.Errorf("trial %d: U(x,y) %g + U(y,x) %g, want %d", trial, uxy, uyx, m*n)
		}
		if pxy < 0 || pxy > 1 || math.IsNaN(pxy) {
			t.Errorf("trial %d: p %g outside [0, 1]", trial, pxy)
		}
		up := make([]float64, m)
		for i := range x {
			up[i] = x[i] + 1
		}
		_, pUp, _ := MannWhitney(up, y)
		if pUp > pxy+1e-12 {
			t.Errorf("trial %d: candidate moved up: p rose from %g to %g", trial, pxy, pUp)
		}
	}
	for _, k := range [][2]int{{1, 1}, {3, 4}, {8, 8}, {20, 20}} {
		x, y := make([]float64, k[0]), make([]float64, k[1])
		for i := range x {
			x[i] = 100 + float64(i)
		}
		for i := range y {
			y[i] = float64(i)
		}
		_, p, _ := MannWhitney(x, y)
		if math.Abs(p-MinP(k[0], k[1]))/p > 1e-9 {
			t.Errorf("%v separated: got p %g, want MinP %g", k, p, MinP(k[0], k[1]))
		}
	}
	// 300 against 300 is past the exact recursion's budget.
	x, y := make([]float64, 300), make([]float64, 300)
	for i := range x {
		x[i], y[i] = float64(i)+0.5, float64(i)
	}
	u, p, ok := MannWhitney(x, y)
	if want := normalUpper(u, 300, 300, 0); !ok || p != want {
		t.Errorf("300 v 300: got p %g ok %v, want the normal approximation %g", p, ok, want)
	}
}

// TestMannWhitneyDegenerate: empty arms and all-equal values give no
// test, and never a NaN.
func TestMannWhitneyDegenerate(t *testing.T) {
	for _, tc := range []struct {
		name string
		x, y []float64
	}{
		{"empty candidate", nil, []float64{1, 2}},
		{"empty baseline", []float64{1}, nil},
		{"both empty", nil, nil},
		{"all equal", []float64{3, 3, 3}, []float64{3, 3}},
		{"all equal, large", make([]float64, 400), make([]float64, 400)},
	} {
		u, p, ok := MannWhitney(tc.x, tc.y)
		if ok || math.IsNaN(u) || math.IsNaN(p) {
			t.Errorf("%s: got U %g p %g ok %v, want no test and no NaN", tc.name, u, p, ok)
		}
	}
}

// TestTwoProportions: a value by hand, symmetry, monotonicity, and the
// zero-count guards.
func TestTwoProportions(t *testing.T) {
	// 50 errors in 1000 against 20 in 1000: pooled 0.035, standard error
	// √(0.035·0.965·(2/1000)) = 0.0082189, z = 0.03/0.0082189 = 3.65013,
	// p = 1.3105e-4.
	z, p, ok := TwoProportions(50, 1000, 20, 1000)
	if !ok || math.Abs(z-3.6501321) > 1e-6 || math.Abs(p-1.3105276e-4) > 1e-10 {
		t.Errorf("got z %g p %g ok %v, want z 3.6501321 p 1.3105276e-4", z, p, ok)
	}
	zr, pr, _ := TwoProportions(20, 1000, 50, 1000)
	if zr != -z || math.Abs(p+pr-1) > 1e-12 {
		t.Errorf("swapped: got z %g p %g, want z %g p %g", zr, pr, -z, 1-p)
	}
	prev := 2.0
	for x := uint64(0); x <= 100; x += 5 {
		_, p, _ := TwoProportions(x, 1000, 20, 1000)
		if p > prev {
			t.Errorf("candidate errors %d: p %g above %g at fewer errors", x, p, prev)
		}
		prev = p
	}
	for _, tc := range []struct {
		x1, n1, x2, n2 uint64
		ok             bool
		p              float64
	}{
		{0, 500, 0, 500, true, 1},     // no errors anywhere
		{500, 500, 300, 300, true, 1}, // every request failed in both
		{0, 0, 1, 10, false, 0},
		{1, 10, 0, 0, false, 0},
		{11, 10, 0, 10, false, 0},
	} {
		_, p, ok := TwoProportions(tc.x1, tc.n1, tc.x2, tc.n2)
		if ok != tc.ok || p != tc.p || math.IsNaN(p) {
			t.Errorf("%v: got p %g ok %v, want p %g ok %v", tc, p, ok, tc.p, tc.ok)
		}
	}
	// 5 errors in 1000 against none: the guard does not hide a real
	// difference (pooled share above 0).
	if _, p, _ := TwoProportions(50, 1000, 0, 1000); p > 1e-6 {
		t.Errorf("50/1000 v 0/1000: got p %g, want tiny", p)
	}
}

// TestShareBelow: 360 of 400 rows agree (0.9) against a floor of 0.95:
// z = (0.9 - 0.95)/√(0.95·0.05/400) = -4.58831, p = Φ(-4.58831) = 2.2342e-6.
func TestShareBelow(t *testing.T) {
	z, p, ok := ShareBelow(360, 400, 0.95)
	if !ok || math.Abs(z+4.5883147) > 1e-6 || math.Abs(p-2.2341937e-6) > 1e-11 {
		t.Errorf("got z %g p %g ok %v, want z -4.5883147 p 2.2341937e-6", z, p, ok)
	}
	if _, p, _ := ShareBelow(400, 400, 0.95); p < 0.5 {
		t.Errorf("all agree: got p %g, want above 0.5", p)
	}
	for _, tc := range []struct {
		x, n uint64
		p0   float64
		ok   bool
		p    float64
	}{
		{10, 10, 1, true, 1},
		{9, 10, 1, true, 0},
		{0, 0, 0.9, false, 0},
		{1, 1, 0, false, 0},
		{1, 1, math.NaN(), false, 0},
	} {
		_, p, ok := ShareBelow(tc.x, tc.n, tc.p0)
		if ok != tc.ok || p != tc.p {
			t.Errorf("%v: got p %g ok %v, want p %g ok %v", tc, p, ok, tc.p, tc.ok)
		}
	}
}
