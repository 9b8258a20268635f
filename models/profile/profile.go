// Package profile is a model's reference profile: what a few per-request
// features of its inputs and outputs looked like on reference data, as
// histograms with bin edges at the reference's quantiles plus their moments.
// The profile travels signed inside the model's manifest; the agent bins
// every answered request's features with the profile's edges
// (protocol.FeatureCounts), and the controller compares the merged counts
// with the reference counts (PSI, Jensen–Shannon).
//
// Everything here is pure Go: the controller, which has no cgo, uses the
// same code as the agent. Computing a profile needs the model run over the
// reference inputs, which only the agent binary can do
// (`outpost-agent profile`); this package takes the inputs' and outputs'
// bytes and never runs a model.
//
// Features, per request (Extractor; names in brackets):
//
//   - an image-like input (rank 4, NHWC, 1 to 16 channels): per channel the
//     mean and the standard deviation of its values
//     ("in:NAME:c0:mean", "in:NAME:c0:std", ...);
//   - a small input (a fixed shape of at most 16 elements): each element
//     ("in:NAME:0", "in:NAME:1", ...);
//   - any other input: the mean and the standard deviation of all its values
//     ("in:NAME:mean", "in:NAME:std");
//   - every output: the maximum and the mean of its values
//     ("out:NAME:max", "out:NAME:mean").
//
// Values are the tensors' elements as they travel (a quantized tensor's
// integers, not dequantized). A tensor of more than MaxSampled elements (for
// images: pixels) is read in chunks of 16 consecutive ones at a fixed
// stride, the smallest odd one that leaves at most MaxSampled of them, so
// that the cost per request is bounded whatever the model and a sample
// touches few cache lines: the reference and the device read the same
// elements, so their features are the same function of the request. BYTES
// tensors have no features.
package profile

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// FormatVersion is the profile format this package writes and reads.
const FormatVersion = 1

// MaxEncoded bounds a profile's JSON encoding: it travels inside the signed
// manifest that every device parses.
const MaxEncoded = 64 << 10

// DefaultBins is the number of bins a profile is built with by default.
const DefaultBins = 20

// Errors. Every refusal of a profile wraps ErrInvalid; ErrTooLarge also
// wraps it.
var (
	// ErrInvalid: the profile is malformed (names, edges, counts, moments).
	ErrInvalid = errors.New("profile: invalid")
	// ErrTooLarge: the encoded profile is over MaxEncoded bytes.
	ErrTooLarge = fmt.Errorf("%w: encoded profile over %d bytes", ErrInvalid, MaxEncoded)
	// ErrBins: a histogram does not have the bins of the reference it is
	// compared with.
	ErrBins = errors.New("profile: histogram bins do not match the reference")
	// ErrTooFew: too few reference requests to place the bin edges.
	ErrTooFew = errors.New("profile: too few reference requests")
)

// Profile is a model's reference profile.
type Profile struct {
	// Version is the format version, FormatVersion.
	Version int `json:"version"`
	// Requests is the number of reference requests it was built from.
	Requests uint64 `json:"requests"`
	// Features are in the order Extractor gives for the model's signature.
	Features []Feature `json:"features"`
}

// Feature is one feature's reference histogram and moments. With n Edges,
// Counts has n+1 bins: Counts[0] counts values below Edges[0], Counts[i]
// values in [Edges[i-1], Edges[i]), Counts[n] values at or above Edges[n-1]
// (the binning of protocol.FeatureCounts; Bin computes it). Edges are
// strictly increasing. NaN and infinite values are counted in NaNs only; the
// moments are over the finite values (Count of them).
type Feature struct {
	Name     string    `json:"name"`
	Edges    []float64 `json:"edges"`
	Counts   []uint64  `json:"counts"`
	NaNs     uint64    `json:"nans,omitempty"`
	Count    uint64    `json:"count"`
	Mean     float64   `json:"mean"`
	Variance float64   `json:"variance"`
	Min      float64   `json:"min"`
	Max      float64   `json:"max"`
}

// maxBins bounds the bins of one feature.
const maxBins = 1000

// Validate checks the profile's structure and its encoded size.
func (p *Profile) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	if p.Version != FormatVersion {
		return bad("format version %d (want %d)", p.Version, FormatVersion)
	}
	if len(p.Features) == 0 {
		return bad("no features")
	}
	seen := make(map[string]bool, len(p.Features))
	for i := range p.Features {
		f := &p.Features[i]
		if f.Name == "" || len(f.Name) > 300 || seen[f.Name] {
			return bad("feature %d: empty, long or repeated name %q", i, f.Name)
		}
		seen[f.Name] = true
		if len(f.Edges) == 0 || len(f.Edges) >= maxBins || len(f.Counts) != len(f.Edges)+1 {
			return bad("feature %q: %d edges and %d counts (want 1 to %d edges and one count more)", f.Name, len(f.Edges), len(f.Counts), maxBins-1)
		}
		for j, e := range f.Edges {
			if math.IsNaN(e) || math.IsInf(e, 0) || j > 0 && e <= f.Edges[j-1] {
				return bad("feature %q: edges are not finite and strictly increasing at %d", f.Name, j)
			}
		}
		var n uint64
		for _, c := range f.Counts {
			n += c
		}
		if n != f.Count {
			return bad("feature %q: counts add up to %d, count is %d", f.Name, n, f.Count)
		}
		for _, v := range []float64{f.Mean, f.Variance, f.Min, f.Max} {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return bad("feature %q: moments are not finite", f.Name)
			}
		}
		if f.Variance < 0 || f.Count > 0 && f.Min > f.Max {
			return bad("feature %q: variance or min/max out of order", f.Name)
		}
	}
	b, err := json.Marshal(p)
	if err != nil {
		return bad("%v", err)
	}
	if len(b) > MaxEncoded {
		return fmt.Errorf("%w (%d bytes, %d features): about 150 features of 20 bins fit: a model with many small inputs or outputs has too many", ErrTooLarge, len(b), len(p.Features))
	}
	return nil
}

// Parse decodes and validates a profile (the JSON `outpost-agent profile`
// writes). Unknown fields are refused, as in manifests.
func Parse(b []byte) (*Profile, error) {
	if len(b) > 4*MaxEncoded {
		return nil, fmt.Errorf("%w (%d bytes)", ErrTooLarge, len(b))
	}
	var p Profile
	if err := strictUnmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Feature returns the feature named name, or nil.
func (p *Profile) Feature(name string) *Feature {
	for i := range p.Features {
		if p.Features[i].Name == name {
			return &p.Features[i]
		}
	}
	return nil
}

// Bin returns the bin of v among edges (sorted, strictly increasing): the
// number of edges at or below v, so 0 for v below the first edge and
// len(edges) at or above the last. The caller handles NaN, which this puts
// in bin 0. It does not allocate.
func Bin(edges []float64, v float64) int {
	lo, hi := 0, len(edges)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if v >= edges[mid] {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	return lo
}

// round keeps 7 significant digits (the precision of the float32 values
// most features come from), so that edges encode short.
func round(v float64) float64 {
	r, err := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 7, 64), 64)
	if err != nil {
		return v
	}
	return r
}
