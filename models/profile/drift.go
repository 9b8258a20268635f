package profile

import "math"

// Smoothing is the pseudo-count added to every bin of both histograms
// before PSI compares their shares: p_i = (c_i + Smoothing) / (N + B *
// Smoothing) for a histogram of N values in B bins. Without it a bin empty
// on one side makes PSI infinite; with half a count (the Jeffreys prior) a
// bin that is empty in the reference but holds k of the N observed values
// still weighs about (k/N) ln(2k·N_ref/N), so drift into a region the
// reference never saw is scored high but finite. NaN counts are not part of
// either histogram.
const Smoothing = 0.5

// PSI is the population stability index of observed against reference
// counts binned with the same edges: Σ (q_i − p_i) ln(q_i / p_i), with p the
// reference's shares and q the observed shares, both smoothed (Smoothing).
// It is 0 for identical shares and grows without bound; the usual reading is
// below 0.1 stable, 0.1 to 0.25 a moderate shift, above 0.25 a large one. An
// empty side (no values) gives 0: the caller decides how many values make
// a score worth reading. Counts of different lengths are ErrBins.
func PSI(reference, observed []uint64) (float64, error) {
	if len(reference) != len(observed) || len(reference) == 0 {
		return 0, ErrBins
	}
	nr, no := total(reference), total(observed)
	if nr == 0 || no == 0 {
		return 0, nil
	}
	b := float64(len(reference))
	dr, do := float64(nr)+b*Smoothing, float64(no)+b*Smoothing
	var psi float64
	for i := range reference {
		p := (float64(reference[i]) + Smoothing) / dr
		q := (float64(observed[i]) + Smoothing) / do
		psi += (q - p) * math.Log(q/p)
	}
	return psi, nil
}

// JS is the Jensen–Shannon divergence, in bits, between the reference's and
// the observed shares: ½ KL(p‖m) + ½ KL(q‖m) with m = (p + q) / 2, which is
// finite without smoothing (a bin empty on one side contributes only through
// the other), so the raw shares are used. It lies in [0, 1]: 0 for
// identical shares, 1 for histograms with no bin in common. An empty side
// gives 0, as for PSI; counts of different lengths are ErrBins.
func JS(reference, observed []uint64) (float64, error) {
	if len(reference) != len(observed) || len(reference) == 0 {
		return 0, ErrBins
	}
	nr, no := total(reference), total(observed)
	if nr == 0 || no == 0 {
		return 0, nil
	}
	var js float64
	for i := range reference {
		p := float64(reference[i]) / float64(nr)
		q := float64(observed[i]) / float64(no)
		m := (p + q) / 2
		if p > 0 {
			js += p / 2 * math.Log2(p/m)
		}
		if q > 0 {
			js += q / 2 * math.Log2(q/m)
		}
	}
	return min(max(js, 0), 1), nil
}

func total(c []uint64) uint64 {
	var n uint64
	for _, v := range c {
		n += v
	}
	return n
}
