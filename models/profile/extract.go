package profile

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
)

// MaxSampled bounds the elements (for images, the pixels) of one tensor
// that a feature reads per request; larger tensors are read in chunks of
// 16 consecutive items at a stride (sampling).
const MaxSampled = 1024

// maxChannels is the most channels an NHWC input may have to be treated as
// an image, and maxSmall the most elements of a small input.
const (
	maxChannels = 16
	maxSmall    = 16
)

// Tensor is a model input or output as the manifest describes it: a name, a
// datatype as the Open Inference Protocol spells it ("FP32", "UINT8", ...)
// and a shape in which -1 marks an open dimension.
type Tensor struct {
	Name     string
	DataType string
	Shape    []int
}

type kind uint8

const (
	kindImage kind = iota // per channel: mean, std
	kindSmall             // each element
	kindOther             // mean, std
	kindOut               // max, mean
)

// spec says how one tensor yields its features.
type spec struct {
	input    bool
	index    int // in the inputs or outputs
	kind     kind
	dt       string
	size     int // bytes per element
	channels int // kindImage
	elems    int // kindSmall: the fixed element count
	first    int // index of its first feature
}

// Extractor computes a model's per-request features from its inputs' and
// outputs' bytes. It is immutable and safe for concurrent use.
type Extractor struct {
	specs []spec
	names []string
}

var elemSize = map[string]int{"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2,
	"UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}

// NewExtractor returns the extractor for a model signature. Tensors of a
// datatype without features (BYTES, unknown) are left out; a model with no
// features at all is an error.
func NewExtractor(inputs, outputs []Tensor) (*Extractor, error) {
	x := &Extractor{}
	for i, t := range inputs {
		size := elemSize[t.DataType]
		if size == 0 {
			continue
		}
		s := spec{input: true, index: i, dt: t.DataType, size: size, first: len(x.names)}
		n, fixed := elements(t.Shape)
		switch {
		case len(t.Shape) == 4 && t.Shape[3] >= 1 && t.Shape[3] <= maxChannels:
			s.kind, s.channels = kindImage, t.Shape[3]
			for c := range s.channels {
				x.names = append(x.names, fmt.Sprintf("in:%s:c%d:mean", t.Name, c), fmt.Sprintf("in:%s:c%d:std", t.Name, c))
			}
		case fixed && n >= 1 && n <= maxSmall:
			s.kind, s.elems = kindSmall, n
			for e := range n {
				x.names = append(x.names, "in:"+t.Name+":"+strconv.Itoa(e))
			}
		default:
			s.kind = kindOther
			x.names = append(x.names, "in:"+t.Name+":mean", "in:"+t.Name+":std")
		}
		x.specs = append(x.specs, s)
	}
	for i, t := range outputs {
		size := elemSize[t.DataType]
		if size == 0 {
			continue
		}
		x.specs = append(x.specs, spec{index: i, kind: kindOut, dt: t.DataType, size: size, first: len(x.names)})
		x.names = append(x.names, "out:"+t.Name+":max", "out:"+t.Name+":mean")
	}
	if len(x.names) == 0 {
		return nil, fmt.Errorf("%w: no tensor of the model has a numeric datatype", ErrInvalid)
	}
	return x, nil
}

// elements is the product of a shape's dimensions, and whether none is open.
func elements(shape []int) (int, bool) {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return 0, false
		}
		if d > 0 && n > math.MaxInt32/d {
			return math.MaxInt32, true
		}
		n *= d
	}
	return n, true
}

// Names are the features' names in the order Extract writes them.
func (x *Extractor) Names() []string { return x.names }

// Len is the number of features.
func (x *Extractor) Len() int { return len(x.names) }

// Extract writes the request's features into dst (Len() long), in Names'
// order. inputs and outputs hold every tensor's raw little-endian bytes in
// signature order. A tensor whose bytes do not fit its datatype or shape is
// an error; an empty tensor gives NaN features. It does not allocate.
func (x *Extractor) Extract(inputs, outputs [][]byte, dst []float64) error {
	if len(dst) != len(x.names) {
		return fmt.Errorf("profile: extract into %d values, want %d", len(dst), len(x.names))
	}
	for i := range x.specs {
		s := &x.specs[i]
		ts := outputs
		if s.input {
			ts = inputs
		}
		if s.index >= len(ts) {
			return fmt.Errorf("profile: %d tensors, feature %q needs tensor %d", len(ts), x.names[s.first], s.index)
		}
		b := ts[s.index]
		if len(b)%s.size != 0 {
			return fmt.Errorf("profile: feature %q: %d bytes is not a whole number of %s elements", x.names[s.first], len(b), s.dt)
		}
		n := len(b) / s.size
		out := dst[s.first:]
		switch s.kind {
		case kindImage:
			if n%s.channels != 0 {
				return fmt.Errorf("profile: feature %q: %d elements is not a whole number of %d-channel pixels", x.names[s.first], n, s.channels)
			}
			image(s, b, n/s.channels, out)
		case kindSmall:
			if n != s.elems {
				return fmt.Errorf("profile: feature %q: %d elements, want %d", x.names[s.first], n, s.elems)
			}
			for e := range n {
				out[e] = load(s.dt, b, e)
			}
		case kindOther:
			mean, std, _ := moments(s.dt, b, n)
			out[0], out[1] = mean, std
		case kindOut:
			mean, _, mx := moments(s.dt, b, n)
			out[0], out[1] = mx, mean
		}
	}
	return nil
}

// chunk is the number of consecutive items (elements, or pixels of an
// image) read together when a tensor is sampled: 16 FP32 values fill a
// cache line, so a sample touches few lines.
const chunk = 16

// sampling returns the step, in chunks, at which a tensor of n items is
// read: 1 (every item) up to MaxSampled items, else the smallest odd step
// that reads at most MaxSampled/chunk chunks (odd, so that on an image whose
// width is a power of two the sampled columns move from row to row).
func sampling(n int) int {
	if n <= MaxSampled {
		return 1
	}
	chunks := (n + chunk - 1) / chunk
	s := (chunks + MaxSampled/chunk - 1) / (MaxSampled / chunk)
	if s%2 == 0 {
		s++
	}
	return s
}

// image writes each channel's mean and standard deviation over the sampled
// pixels.
func image(s *spec, b []byte, pixels int, out []float64) {
	var sum, sq [maxChannels]float64
	c := s.channels
	step := sampling(pixels) * chunk
	k := 0
	for lo := 0; lo < pixels; lo += step {
		hi := min(lo+chunk, pixels)
		k += hi - lo
		if s.dt == "FP32" && c == 3 {
			px := b[lo*12 : hi*12]
			for len(px) >= 12 {
				r := float64(math.Float32frombits(binary.LittleEndian.Uint32(px)))
				g := float64(math.Float32frombits(binary.LittleEndian.Uint32(px[4:])))
				bl := float64(math.Float32frombits(binary.LittleEndian.Uint32(px[8:])))
				sum[0], sum[1], sum[2] = sum[0]+r, sum[1]+g, sum[2]+bl
				sq[0], sq[1], sq[2] = sq[0]+r*r, sq[1]+g*g, sq[2]+bl*bl
				px = px[12:]
			}
			continue
		}
		for p := lo; p < hi; p++ {
			for j := range c {
				v := load(s.dt, b, p*c+j)
				sum[j] += v
				sq[j] += v * v
			}
		}
	}
	for j := range c {
		if k == 0 {
			out[2*j], out[2*j+1] = math.NaN(), math.NaN()
			continue
		}
		mean := sum[j] / float64(k)
		out[2*j], out[2*j+1] = mean, math.Sqrt(max(0, sq[j]/float64(k)-mean*mean))
	}
}

// moments returns the mean, standard deviation and maximum of the sampled
// elements (NaN for none).
func moments(dt string, b []byte, n int) (mean, std, mx float64) {
	step := sampling(n) * chunk
	var sum, sq float64
	mx = math.Inf(-1)
	nan := false
	k := 0
	for lo := 0; lo < n; lo += step {
		hi := min(lo+chunk, n)
		k += hi - lo
		if dt == "FP32" {
			// Two lanes, so the additions of one do not wait for the
			// other's.
			w := b[lo*4 : hi*4]
			var s0, s1, q0, q1 float64
			m0, m1 := mx, mx
			for ; len(w) >= 8; w = w[8:] {
				v0 := float64(math.Float32frombits(binary.LittleEndian.Uint32(w)))
				v1 := float64(math.Float32frombits(binary.LittleEndian.Uint32(w[4:])))
				s0, s1 = s0+v0, s1+v1
				q0, q1 = q0+v0*v0, q1+v1*v1
				if v0 > m0 {
					m0 = v0
				}
				if v1 > m1 {
					m1 = v1
				}
				nan = nan || v0 != v0 || v1 != v1
			}
			if len(w) >= 4 {
				v := float64(math.Float32frombits(binary.LittleEndian.Uint32(w)))
				s0, q0 = s0+v, q0+v*v
				if v > m0 {
					m0 = v
				}
				nan = nan || v != v
			}
			sum, sq = sum+s0+s1, sq+q0+q1
			if m0 > mx {
				mx = m0
			}
			if m1 > mx {
				mx = m1
			}
			continue
		}
		for i := lo; i < hi; i++ {
			v := load(dt, b, i)
			sum += v
			sq += v * v
			if v > mx {
				mx = v
			}
			nan = nan || v != v
		}
	}
	if k == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	if nan {
		mx = math.NaN()
	}
	mean = sum / float64(k)
	return mean, math.Sqrt(max(0, sq/float64(k)-mean*mean)), mx
}

// load reads element i of little-endian data of datatype dt.
func load(dt string, b []byte, i int) float64 {
	le := binary.LittleEndian
	switch dt {
	case "FP32":
		return float64(math.Float32frombits(le.Uint32(b[i*4:])))
	case "FP64":
		return math.Float64frombits(le.Uint64(b[i*8:]))
	case "UINT8", "BOOL":
		return float64(b[i])
	case "INT8":
		return float64(int8(b[i]))
	case "UINT16":
		return float64(le.Uint16(b[i*2:]))
	case "INT16":
		return float64(int16(le.Uint16(b[i*2:])))
	case "FP16":
		return half(le.Uint16(b[i*2:]))
	case "UINT32":
		return float64(le.Uint32(b[i*4:]))
	case "INT32":
		return float64(int32(le.Uint32(b[i*4:])))
	case "UINT64":
		return float64(le.Uint64(b[i*8:]))
	case "INT64":
		return float64(int64(le.Uint64(b[i*8:])))
	}
	return math.NaN()
}

// half decodes an IEEE 754 binary16 value.
func half(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, frac := int(h>>10&0x1f), float64(h&0x3ff)
	switch exp {
	case 0:
		return sign * math.Ldexp(frac, -24)
	case 0x1f:
		if frac != 0 {
			return math.NaN()
		}
		return math.Inf(int(sign))
	}
	return sign * math.Ldexp(1+frac/1024, exp-15)
}

// strictUnmarshal decodes one JSON value, refusing unknown fields and
// trailing data.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("trailing data")
	}
	return nil
}
