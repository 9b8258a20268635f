// Package manifest defines the signed description of one model version: what
// the fleet promises about the bytes (name, version, digest, length), how to
// run them (runtime, tensor signature, minimum agent version) and how to test
// them on the device before they go live (golden vectors).
//
// A manifest is plain data. It is trusted only after package trust has checked
// the signatures of the release that carries it.
package manifest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/outpost-edge/outpost/models/profile"
)

// The runtimes a manifest may name. A manifest without one (written before
// ONNX support) means TFLite.
const (
	RuntimeTFLite = "tflite"
	RuntimeONNX   = "onnx"
)

// MaxSize bounds an encoded manifest; golden vectors must stay small (they
// travel inside signed metadata that every device parses).
const MaxSize = 4 << 20

// ErrInvalid wraps every reason a manifest is refused.
var ErrInvalid = errors.New("manifest: invalid")

// Manifest describes one version of one model.
type Manifest struct {
	// Name names the model across versions; it is also a directory name on
	// the device, so it is restricted to [a-z0-9._-] and starts with a letter
	// or digit.
	Name string `json:"name"`
	// Version is a positive integer; a larger number is a newer model.
	Version int64 `json:"version"`
	// SHA256 is the lowercase hex digest of the model file.
	SHA256 string `json:"sha256"`
	// Length is the exact size of the model file in bytes.
	Length int64 `json:"length"`
	// Runtime is the engine that runs the model: "tflite" or "onnx"; empty
	// (older manifests) means "tflite". The agent also tells the format from
	// the bytes and refuses a model whose bytes contradict this field.
	Runtime string   `json:"runtime"`
	Inputs  []Tensor `json:"inputs"`
	Outputs []Tensor `json:"outputs"`
	// Golden lists test vectors the device runs before activating the model.
	Golden []Golden `json:"golden,omitempty"`
	// MinAgentVersion is the oldest agent release ("1.4.0") that may run the
	// model; empty means any.
	MinAgentVersion string `json:"min_agent_version,omitempty"`
	// Rollback, when true, is a signed instruction allowing devices to install
	// this version even though a newer one is installed.
	Rollback bool `json:"rollback,omitempty"`
	// Reference, when present, is the model's reference profile: the
	// per-request features the agent histograms for every answered request
	// and the controller compares with it (package profile). Its features
	// must be those profile.NewExtractor gives for Inputs and Outputs, and
	// its encoding at most profile.MaxEncoded bytes. An agent older than
	// the field refuses a manifest that has it (unknown fields are refused),
	// so a model with a reference should set MinAgentVersion.
	Reference *profile.Profile `json:"reference,omitempty"`
}

// Tensor is one input or output of a model. DataType is spelled as the Open
// Inference Protocol spells it ("FP32", "UINT8", ...).
type Tensor struct {
	Name     string `json:"name"`
	DataType string `json:"datatype"`
	// Shape has one entry per dimension; -1 marks a dimension left open.
	Shape        []int         `json:"shape"`
	Quantization *Quantization `json:"quantization,omitempty"`
}

// Quantization holds affine parameters: real = Scale * (q - ZeroPoint).
type Quantization struct {
	Scale     float32 `json:"scale"`
	ZeroPoint int64   `json:"zero_point"`
}

// Golden is one test vector: feeding Inputs must produce Outputs, each element
// within Tolerance (absolute, in the output's real-valued units).
type Golden struct {
	Inputs    []Data  `json:"inputs"`
	Outputs   []Data  `json:"outputs"`
	Tolerance float64 `json:"tolerance"`
}

// Data is a tensor value: raw little-endian elements (base64 in JSON).
type Data struct {
	Name     string `json:"name"`
	DataType string `json:"datatype"`
	Shape    []int  `json:"shape"`
	Data     []byte `json:"data"`
}

var (
	nameRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	semverRE   = regexp.MustCompile(`^v?[0-9]+(\.[0-9]+){0,2}$`)
	hexRE      = regexp.MustCompile(`^[0-9a-f]{64}$`)
	elemSize   = map[string]int{"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8, "BYTES": 0}
	maxDims    = 16
	maxTensors = 1024
)

// RuntimeName is the runtime the manifest names, "tflite" when it names none.
func (m *Manifest) RuntimeName() string {
	if m.Runtime == "" {
		return RuntimeTFLite
	}
	return m.Runtime
}

// ValidName reports whether s may name a model.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Validate checks everything a device relies on before it trusts the fields.
func (m *Manifest) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
	}
	switch {
	case !ValidName(m.Name):
		return bad("name %q", m.Name)
	case m.Version <= 0:
		return bad("version %d is not positive", m.Version)
	case !hexRE.MatchString(m.SHA256):
		return bad("sha256 %q is not 64 lowercase hex digits", m.SHA256)
	case m.Length <= 0:
		return bad("length %d is not positive", m.Length)
	case m.Runtime != "" && m.Runtime != RuntimeTFLite && m.Runtime != RuntimeONNX:
		return bad("runtime %q (want %q or %q)", m.Runtime, RuntimeTFLite, RuntimeONNX)
	case len(m.Inputs) == 0 || len(m.Outputs) == 0:
		return bad("no inputs or no outputs")
	case len(m.Inputs) > maxTensors || len(m.Outputs) > maxTensors:
		return bad("too many tensors")
	case m.MinAgentVersion != "" && !semverRE.MatchString(m.MinAgentVersion):
		return bad("min_agent_version %q", m.MinAgentVersion)
	}
	for _, ts := range [][]Tensor{m.Inputs, m.Outputs} {
		for _, t := range ts {
			if err := checkTensor(t.Name, t.DataType, t.Shape, true); err != nil {
				return bad("tensor %q: %v", t.Name, err)
			}
		}
	}
	if m.Reference != nil {
		if err := m.checkReference(); err != nil {
			return bad("reference: %v", err)
		}
	}
	for i, g := range m.Golden {
		if math.IsNaN(g.Tolerance) || g.Tolerance < 0 || math.IsInf(g.Tolerance, 0) {
			return bad("golden %d: tolerance %v", i, g.Tolerance)
		}
		if len(g.Inputs) == 0 || len(g.Outputs) == 0 {
			return bad("golden %d: no inputs or no outputs", i)
		}
		for _, d := range append(append([]Data(nil), g.Inputs...), g.Outputs...) {
			if err := checkTensor(d.Name, d.DataType, d.Shape, false); err != nil {
				return bad("golden %d: tensor %q: %v", i, d.Name, err)
			}
			if !fits(d, m.Inputs) && !fits(d, m.Outputs) {
				return bad("golden %d: tensor %q is not an input or output of that datatype and shape", i, d.Name)
			}
			if n := elemSize[d.DataType]; n > 0 && len(d.Data) != n*count(d.Shape) {
				return bad("golden %d: tensor %q: %d data bytes for shape %v", i, d.Name, len(d.Data), d.Shape)
			}
		}
	}
	return nil
}

// Extractor returns the feature extractor of the model's signature, which
// the reference profile's features follow.
func (m *Manifest) Extractor() (*profile.Extractor, error) {
	conv := func(ts []Tensor) []profile.Tensor {
		out := make([]profile.Tensor, len(ts))
		for i, t := range ts {
			out[i] = profile.Tensor{Name: t.Name, DataType: t.DataType, Shape: t.Shape}
		}
		return out
	}
	return profile.NewExtractor(conv(m.Inputs), conv(m.Outputs))
}

// checkReference checks the profile and that its features are the
// signature's, in order.
func (m *Manifest) checkReference() error {
	if err := m.Reference.Validate(); err != nil {
		return err
	}
	x, err := m.Extractor()
	if err != nil {
		return err
	}
	names := x.Names()
	if len(names) != len(m.Reference.Features) {
		return fmt.Errorf("%d features, the model's signature has %d", len(m.Reference.Features), len(names))
	}
	for i, n := range names {
		if m.Reference.Features[i].Name != n {
			return fmt.Errorf("feature %d is %q, the model's signature gives %q", i, m.Reference.Features[i].Name, n)
		}
	}
	return nil
}

func checkTensor(name, dt string, shape []int, open bool) error {
	if name == "" || len(name) > 256 {
		return errors.New("bad name")
	}
	if _, ok := elemSize[dt]; !ok {
		return fmt.Errorf("unknown datatype %q", dt)
	}
	if len(shape) > maxDims {
		return fmt.Errorf("%d dimensions", len(shape))
	}
	for _, d := range shape {
		if d < 0 && !(open && d == -1) || d > 1<<24 {
			return fmt.Errorf("dimension %d", d)
		}
	}
	return nil
}

// fits reports whether d matches one of ts by name, datatype and shape
// (an open dimension, -1, matches any size).
func fits(d Data, ts []Tensor) bool {
	for _, t := range ts {
		if t.Name != d.Name || t.DataType != d.DataType || len(t.Shape) != len(d.Shape) {
			continue
		}
		ok := true
		for i := range t.Shape {
			ok = ok && (t.Shape[i] == -1 || t.Shape[i] == d.Shape[i])
		}
		if ok {
			return true
		}
	}
	return false
}

// count multiplies dimensions, which checkTensor bounded to non-negative
// values of at most 2^24; it saturates rather than overflows.
func count(shape []int) int {
	n := 1
	for _, d := range shape {
		if d != 0 && n > math.MaxInt32/d {
			return -1
		}
		n *= d
	}
	return n
}

// Parse decodes and validates a manifest. Unknown fields are refused so that
// a field the signer meant the device to honour is never silently ignored.
func Parse(b []byte) (*Manifest, error) {
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes is over the %d limit", ErrInvalid, len(b), MaxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data", ErrInvalid)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Digest returns the decoded SHA256 field.
func (m *Manifest) Digest() ([32]byte, error) {
	var d [32]byte
	b, err := hex.DecodeString(m.SHA256)
	if err != nil || len(b) != 32 {
		return d, fmt.Errorf("%w: sha256 %q", ErrInvalid, m.SHA256)
	}
	copy(d[:], b)
	return d, nil
}

// AgentSupported reports whether an agent of version agent may run the model.
// A development build ("dev" or anything that is not a version) is allowed,
// so that local builds can install every model.
func (m *Manifest) AgentSupported(agent string) bool {
	if m.MinAgentVersion == "" || !semverRE.MatchString(agent) {
		return true
	}
	a, w := parts(agent), parts(m.MinAgentVersion)
	for i := range a {
		if a[i] != w[i] {
			return a[i] > w[i]
		}
	}
	return true
}

func parts(v string) [3]int64 {
	var p [3]int64
	for i, s := range strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3) {
		p[i], _ = strconv.ParseInt(s, 10, 64)
	}
	return p
}
