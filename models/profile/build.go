package profile

import (
	"fmt"
	"math"
	"slices"
)

// Builder collects the features of reference requests and builds the
// profile. It keeps every value (8 bytes per feature per request), which is
// what exact quantiles need. It is not safe for concurrent use.
type Builder struct {
	names  []string
	values [][]float64
	nans   []uint64
	n      uint64
}

// NewBuilder returns a builder for features of these names (Extractor.Names).
func NewBuilder(names []string) *Builder {
	return &Builder{names: names, values: make([][]float64, len(names)), nans: make([]uint64, len(names))}
}

// Requests is the number of requests added so far.
func (b *Builder) Requests() uint64 { return b.n }

// Add accounts one request's features, in the order of the names.
func (b *Builder) Add(features []float64) error {
	if len(features) != len(b.names) {
		return fmt.Errorf("profile: %d features, want %d", len(features), len(b.names))
	}
	for i, v := range features {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			b.nans[i]++
			continue
		}
		b.values[i] = append(b.values[i], v)
	}
	b.n++
	return nil
}

// Build returns the profile with about bins bins per feature (DefaultBins
// when bins < 2): the edges are the reference's quantiles at 1/bins,
// 2/bins, ..., (bins-1)/bins, rounded to 7 significant digits, so that every
// bin holds about the same share of the reference and values beyond the
// reference's range fall in the outermost bins. A feature whose reference
// values take fewer distinct values has fewer bins (repeated edges are
// merged); a feature with a single value gets one edge at it. It needs at
// least bins requests (ErrTooFew).
func (b *Builder) Build(bins int) (*Profile, error) {
	if bins < 2 {
		bins = DefaultBins
	}
	if bins >= maxBins {
		return nil, fmt.Errorf("%w: %d bins, at most %d", ErrInvalid, bins, maxBins-1)
	}
	if b.n < uint64(bins) {
		return nil, fmt.Errorf("%w: %d requests, at least %d needed for %d bins", ErrTooFew, b.n, bins, bins)
	}
	p := &Profile{Version: FormatVersion, Requests: b.n, Features: make([]Feature, len(b.names))}
	for i, name := range b.names {
		vs := b.values[i]
		slices.Sort(vs)
		f := Feature{Name: name, NaNs: b.nans[i], Count: uint64(len(vs))}
		if len(vs) == 0 {
			// Every reference value was NaN: one edge at 0 keeps the
			// histogram well formed; all counts are 0.
			f.Edges, f.Counts = []float64{0}, []uint64{0, 0}
			p.Features[i] = f
			continue
		}
		for q := 1; q < bins; q++ {
			e := round(vs[q*len(vs)/bins])
			if len(f.Edges) == 0 || e > f.Edges[len(f.Edges)-1] {
				f.Edges = append(f.Edges, e)
			}
		}
		if len(f.Edges) == 0 {
			f.Edges = []float64{round(vs[0])}
		}
		f.Counts = make([]uint64, len(f.Edges)+1)
		var sum float64
		for _, v := range vs {
			f.Counts[Bin(f.Edges, v)]++
			sum += v
		}
		f.Min, f.Max = vs[0], vs[len(vs)-1]
		f.Mean = sum / float64(len(vs))
		var m2 float64
		for _, v := range vs {
			m2 += (v - f.Mean) * (v - f.Mean)
		}
		f.Variance = m2 / float64(len(vs))
		p.Features[i] = f
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}
