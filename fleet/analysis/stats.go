package analysis

import (
	"math"
	"slices"
)

// The tests behind the verdicts, one-sided: each asks whether the candidate
// is worse than the baseline, never merely different. They return ok false
// when the data cannot say anything (an empty arm, every value equal): that
// is a wait, never a p-value.

// MannWhitney tests whether the values of x (the candidate's) tend to be
// larger than those of y (the baseline's): Mann–Whitney U, one-sided. u is
// x's U statistic, ties counting one half (0 to len(x)·len(y)), and p the
// probability, with nothing changed, of a U at least that large.
//
// Small samples get the exact permutation distribution, ties included:
// the distribution of x's sum of (mid-)ranks over every way of choosing
// len(x) of the pooled values, counted by the usual recursion on the
// number of values taken and their rank sum (ranks doubled, so mid-ranks
// stay integers). Larger ones, where that recursion would cost too much,
// get the normal approximation with the tie correction of the variance and
// a continuity correction of one half.
func MannWhitney(x, y []float64) (u, p float64, ok bool) {
	m, n := len(x), len(y)
	if m == 0 || n == 0 {
		return 0, 0, false
	}
	ranks2, ties := doubledRanks(x, y)
	var w2 int // x's rank sum, doubled
	for i := range m {
		w2 += ranks2[i]
	}
	u = float64(w2)/2 - float64(m*(m+1))/2
	if ties == tieSum(m+n) {
		return u, 0, false // every value equal: no order to test
	}
	if exactCost(m, n) <= maxExactCost {
		return u, exactUpper(ranks2, m, w2), true
	}
	return u, normalUpper(u, m, n, ties), true
}

// maxExactCost bounds the exact recursion's work (values × values taken ×
// rank sums), about 20 ms: both arms of 20 cost under 1/1000 of it, one
// arm of 5 against 150 about a fifth.
const maxExactCost = 2e7

func exactCost(m, n int) float64 {
	N := float64(m + n)
	return N * float64(min(m, n)+1) * N * (N + 1)
}

// tieSum is the variance's tie term Σ(t³ - t) when all N values are tied.
func tieSum(N int) float64 { t := float64(N); return t*t*t - t }

// doubledRanks returns twice the mid-rank of every value of x then y, in
// that order, and the tie term Σ(t³ - t) over the groups of equal values.
func doubledRanks(x, y []float64) ([]int, float64) {
	N := len(x) + len(y)
	idx := make([]int, N)
	val := func(i int) float64 {
		if i < len(x) {
			return x[i]
		}
		return y[i-len(x)]
	}
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int {
		va, vb := val(a), val(b)
		switch {
		case va < vb:
			return -1
		case va > vb:
			return 1
		}
		return 0
	})
	ranks := make([]int, N)
	var ties float64
	for i := 0; i < N; {
		j := i + 1
		for j < N && val(idx[j]) == val(idx[i]) {
			j++
		}
		// Positions i+1 .. j share the mid-rank (i+1+j)/2.
		for k := i; k < j; k++ {
			ranks[idx[k]] = i + 1 + j
		}
		t := float64(j - i)
		ties += t*t*t - t
		i = j
	}
	return ranks, ties
}

// exactUpper is P(W ≥ w2) for W the doubled rank sum of m values drawn
// without replacement from ranks2, all subsets equally likely.
func exactUpper(ranks2 []int, m, w2 int) float64 {
	N := len(ranks2)
	// Count subsets of the smaller size: with k = N-m taken instead, x's
	// sum is the total minus theirs.
	k, target, upper := m, w2, true
	total := 0
	for _, r := range ranks2 {
		total += r
	}
	if N-m < m {
		k, target, upper = N-m, total-w2, false
	}
	maxSum := 0
	sorted := slices.Sorted(slices.Values(ranks2))
	for _, r := range sorted[N-k:] {
		maxSum += r
	}
	// ways[j][s]: subsets of j of the values seen so far with doubled sum s.
	ways := make([][]float64, k+1)
	for j := range ways {
		ways[j] = make([]float64, maxSum+1)
	}
	ways[0][0] = 1
	reach := 0 // the largest sum the values seen so far can make
	for i, r := range ranks2 {
		reach = min(reach+r, maxSum)
		for j := min(i+1, k); j >= 1; j-- {
			prev, cur := ways[j-1], ways[j]
			for s := reach; s >= r; s-- {
				cur[s] += prev[s-r]
			}
		}
	}
	var hit, all float64
	for s, c := range ways[k] {
		all += c
		if (upper && s >= target) || (!upper && s <= target) {
			hit += c
		}
	}
	return hit / all
}

// normalUpper is the normal approximation of P(U ≥ u).
func normalUpper(u float64, m, n int, ties float64) float64 {
	mf, nf, N := float64(m), float64(n), float64(m+n)
	mean := mf * nf / 2
	variance := mf * nf / 12 * ((N + 1) - ties/(N*(N-1)))
	if variance <= 0 {
		return 1
	}
	z := (u - mean - 0.5) / math.Sqrt(variance)
	return upperTail(z)
}

// upperTail is P(Z ≥ z) for a standard normal Z.
func upperTail(z float64) float64 { return 0.5 * math.Erfc(z/math.Sqrt2) }

// MinP is the smallest p-value MannWhitney can give for arms of m and n
// values: 1 / C(m+n, m), reached when every x is above every y. A test that
// cannot go below the significance level cannot find anything, whatever
// the data: its evidence is short.
func MinP(m, n int) float64 {
	if m == 0 || n == 0 {
		return 1
	}
	// log C(m+n, m) through lgamma: exact enough and never overflows.
	a, _ := math.Lgamma(float64(m + n + 1))
	b, _ := math.Lgamma(float64(m + 1))
	c, _ := math.Lgamma(float64(n + 1))
	return math.Exp(-(a - b - c))
}

// TwoProportions tests whether the share of x1 in n1 (the candidate's
// errors in its requests) is larger than that of x2 in n2 (the
// baseline's): the one-sided z-test with the pooled proportion. When no
// request or every request failed in both arms, the two shares are equal
// and nothing points to the candidate: z 0, p 1. ok is false when an arm
// is empty or counts more successes than trials.
func TwoProportions(x1, n1, x2, n2 uint64) (z, p float64, ok bool) {
	if n1 == 0 || n2 == 0 || x1 > n1 || x2 > n2 {
		return 0, 0, false
	}
	p1, p2 := float64(x1)/float64(n1), float64(x2)/float64(n2)
	pool := float64(x1+x2) / float64(n1+n2)
	se := math.Sqrt(pool * (1 - pool) * (1/float64(n1) + 1/float64(n2)))
	if se == 0 || math.IsNaN(se) {
		return 0, 1, true
	}
	z = (p1 - p2) / se
	return z, upperTail(z), true
}

// ShareBelow tests whether the true share behind x successes in n trials
// (rows whose top class agrees) is below p0: the one-sided z-test of one
// proportion against p0, with the variance under p0. For p0 = 1 a single
// failure proves it (p 0) and none leaves it open (p 1). ok is false for
// n = 0, x > n, or p0 outside (0, 1].
func ShareBelow(x, n uint64, p0 float64) (z, p float64, ok bool) {
	if n == 0 || x > n || !(p0 > 0 && p0 <= 1) {
		return 0, 0, false
	}
	share := float64(x) / float64(n)
	if p0 == 1 {
		if x < n {
			return math.Inf(-1), 0, true
		}
		return 0, 1, true
	}
	z = (share - p0) / math.Sqrt(p0*(1-p0)/float64(n))
	return z, upperTail(-z), true
}
