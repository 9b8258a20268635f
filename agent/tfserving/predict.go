// Package tfserving reads and writes the JSON bodies of TensorFlow Serving's
// REST predict API (POST /v1/models/<name>:predict), so that clients written
// for TF Serving work against the agent unchanged.
//
// TF Serving bodies carry no datatypes or shapes: DecodePredict reads them
// against the model's input signature, with the element parsing and range
// checks of agent/tensorjson that the Open Inference Protocol codec also
// uses. docs/API-formats.md describes the accepted forms for clients.
package tfserving

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
)

// ErrBadRequest is wrapped by every error DecodePredict returns; it is
// tensorjson.ErrBadRequest, shared by the codecs. The message says what is
// wrong and where, and is meant for the client. Malformed JSON also matches
// tensorjson.ErrSyntax, and values a tensor cannot take match
// tensorjson.ErrValue.
var ErrBadRequest = tensorjson.ErrBadRequest

// bad makes this codec's errors for the client.
const bad = tensorjson.BadRequests("tfserving")

// Predict is a decoded predict request.
type Predict struct {
	SignatureName string
	// Inputs in signature order, with concrete shapes. Data and Strings may
	// alias the body.
	Inputs []tensor.Tensor
	// Row is true for the row format ("instances"), whose response is
	// {"predictions": ...}; false for the columnar format ("inputs"),
	// answered with {"outputs": ...}.
	Row bool
}

// DecodePredict parses a predict request body against the model's inputs.
//
// Row format, {"instances": [...]}: with one input, each instance is that
// input's value for one batch element (or an object keyed by the input's
// name); with several, each instance is an object keyed by input name. The
// number of instances is the batch size, which must fit the signature's
// first dimension (-1 takes any).
//
// Columnar format, {"inputs": ...}: with one input, its whole value (or an
// object keyed by its name); with several, an object keyed by input name.
//
// Values may be nested exactly as the shape, or flat from some level down
// when the signature fixes the remaining dimensions. BYTES elements are
// strings or {"b64": "..."}; b64 objects are refused for other datatypes,
// UINT8 included. Every error wraps ErrBadRequest.
func DecodePredict(body []byte, sig []tensor.Info) (Predict, error) {
	d := decoder{sig: sig}
	p, err := d.decode(body)
	if err != nil {
		if !errors.Is(err, ErrBadRequest) {
			err = bad.Errorf(err, "%v", err)
		}
		return Predict{}, err
	}
	return p, nil
}

type decoder struct {
	sig  []tensor.Info
	s    tensorjson.Scanner
	el   tensorjson.Elements
	ins  []tensor.Tensor
	dims [][]int // per input: nesting of one instance (row) or the value (columnar)
	n    []int   // per input: elements decoded
	seen []bool
}

func (d *decoder) decode(body []byte) (Predict, error) {
	var p Predict
	if len(d.sig) == 0 {
		return p, bad.Errorf(nil, "the model has no inputs")
	}
	d.ins = make([]tensor.Tensor, len(d.sig))
	d.dims = make([][]int, len(d.sig))
	d.n = make([]int, len(d.sig))
	d.seen = make([]bool, len(d.sig))
	for i, in := range d.sig {
		d.ins[i] = tensor.Tensor{Name: in.Name, DataType: in.DataType}
		if !in.DataType.Valid() {
			return p, bad.Errorf(nil, "input %q has datatype %q, which this API cannot carry", in.Name, in.DataType)
		}
	}
	s := &d.s
	s.Reset(body, 0)
	if s.Peek() != '{' {
		return p, bad.Errorf(tensorjson.ErrSyntax, "%v", s.Errorf("expected the request object, found %s", s.Kind()))
	}
	format := ""
	err := s.Object(func(key []byte) error {
		switch k := string(key); k {
		case "signature_name":
			if s.Peek() != '"' {
				return bad.WrongKind(s, "signature_name must be a string, not %s", s.Kind())
			}
			v, err := s.String()
			p.SignatureName = string(v)
			return err
		case "instances", "inputs":
			if format != "" {
				return bad.Errorf(nil, "request has both %q and %q; send one", format, k)
			}
			format = k
			if k == "instances" {
				p.Row = true
				return d.rows()
			}
			return d.columns()
		}
		return s.Skip()
	})
	if err == nil {
		err = s.End()
	}
	if err != nil {
		return p, err
	}
	if format == "" {
		return p, bad.Errorf(nil, "request has neither \"instances\" (row format) nor \"inputs\" (columnar format)")
	}
	p.Inputs = d.ins
	return p, nil
}

// errStop ends a look-ahead early.
var errStop = errors.New("stop")

// named reports whether the value ahead of s is an object keyed by input
// name rather than a value of the only input: a {"b64": ...} object is a
// value of a BYTES input.
func (d *decoder) named(s tensorjson.Scanner) bool {
	if s.Peek() != '{' {
		return false
	}
	if d.sig[0].DataType != tensor.Bytes || len(d.sig) > 1 {
		return true
	}
	first := ""
	s.Object(func(key []byte) error {
		first = string(key)
		return errStop
	})
	return first != "b64"
}

// firstNamed reports whether the first element of the array ahead of s is
// an object keyed by input name.
func (d *decoder) firstNamed(s tensorjson.Scanner) bool {
	named := false
	s.Array(func(int) error {
		named = d.named(s)
		return errStop
	})
	return named
}

// value decodes one value of input k, appending to its data, and returns
// the nesting found.
func (d *decoder) value(k int) ([]int, error) {
	t := &d.ins[k]
	el := &d.el
	el.DataType, el.B64 = t.DataType, true
	el.Data, el.Strings = t.Data, t.Strings
	err := el.Decode(&d.s)
	t.Data, t.Strings = el.Data, el.Strings
	d.n[k] += el.N
	return el.Dims, err
}

func (d *decoder) index(key []byte) (int, error) {
	for i, in := range d.sig {
		if in.Name == string(key) {
			if d.seen[i] {
				return 0, bad.Errorf(nil, "input %q appears twice", in.Name)
			}
			d.seen[i] = true
			return i, nil
		}
	}
	names := make([]string, len(d.sig))
	for i, in := range d.sig {
		names[i] = fmt.Sprintf("%q", in.Name)
	}
	return 0, bad.Errorf(nil, "unknown input %q (the model's inputs are %s)", truncate(key), strings.Join(names, ", "))
}

func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

func (d *decoder) rows() error {
	s := &d.s
	if s.Peek() != '[' {
		return bad.WrongKind(s, "instances must be an array, not %s", s.Kind())
	}
	for _, in := range d.sig {
		if len(in.Shape) == 0 {
			return bad.Errorf(nil, "input %q is a scalar, which has no batch dimension for instances; use the columnar format (\"inputs\")", in.Name)
		}
	}
	if len(d.sig) == 1 && !d.firstNamed(*s) {
		// The whole array is the single input's value, batch first.
		dims, err := d.value(0)
		if err != nil {
			return bad.Errorf(err, "input %q: %v", d.sig[0].Name, err)
		}
		if len(dims) == 0 || dims[0] == 0 {
			return bad.Errorf(nil, "instances is empty")
		}
		return d.shape(0, dims)
	}
	batch := 0
	err := s.Array(func(i int) error {
		batch++
		if s.Peek() != '{' {
			return bad.WrongKind(s, "instance %d must be an object keyed by input name, not %s", i, s.Kind())
		}
		clear(d.seen)
		err := s.Object(func(key []byte) error {
			k, err := d.index(key)
			if err != nil {
				return bad.Errorf(nil, "instance %d: %s", i, strings.TrimPrefix(err.Error(), "tfserving: "))
			}
			dims, err := d.value(k)
			if err != nil {
				return bad.Errorf(err, "instance %d: input %q: %v", i, d.sig[k].Name, err)
			}
			if i == 0 {
				d.dims[k] = append([]int(nil), dims...)
			} else if !slices.Equal(d.dims[k], dims) {
				return bad.Errorf(tensorjson.ErrValue, "instance %d: input %q is nested as %v, instance 0 as %v", i, d.sig[k].Name, dims, d.dims[k])
			}
			return nil
		})
		if err != nil {
			return err
		}
		for k, ok := range d.seen {
			if !ok {
				return bad.Errorf(nil, "instance %d has no input %q", i, d.sig[k].Name)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if batch == 0 {
		return bad.Errorf(nil, "instances is empty")
	}
	for k := range d.sig {
		if err := d.shape(k, append([]int{batch}, d.dims[k]...)); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) columns() error {
	s := &d.s
	if len(d.sig) == 1 && !d.named(*s) {
		dims, err := d.value(0)
		if err != nil {
			return bad.Errorf(err, "input %q: %v", d.sig[0].Name, err)
		}
		return d.shape(0, dims)
	}
	if s.Peek() != '{' {
		return bad.WrongKind(s, "inputs must be an object keyed by input name (the model has %d inputs), not %s", len(d.sig), s.Kind())
	}
	err := s.Object(func(key []byte) error {
		k, err := d.index(key)
		if err != nil {
			return err
		}
		dims, err := d.value(k)
		if err != nil {
			return bad.Errorf(err, "input %q: %v", d.sig[k].Name, err)
		}
		d.dims[k] = append([]int(nil), dims...)
		return nil
	})
	if err != nil {
		return err
	}
	for k, ok := range d.seen {
		if !ok {
			return bad.Errorf(nil, "inputs has no input %q", d.sig[k].Name)
		}
		if err := d.shape(k, d.dims[k]); err != nil {
			return err
		}
	}
	return nil
}

// shape sets input k's concrete shape from the nesting of its data, which
// must fit the signature: nested exactly as the signature's shape (-1
// matching any size), or flat from some level down when the signature fixes
// every dimension from there on.
func (d *decoder) shape(k int, dims []int) error {
	want := d.sig[k].Shape
	t := &d.ins[k]
	n := d.n[k]
	if len(dims) == len(want) && tensor.SameShape(want, dims) {
		t.Shape = append([]int(nil), dims...)
		return d.check(k)
	}
	if len(dims) >= 1 && len(dims) <= len(want) {
		lvl := len(dims) - 1
		rest := 1
		fixed := true
		for _, w := range want[lvl:] {
			if w < 0 {
				fixed = false
				break
			}
			rest *= w
		}
		if fixed && tensor.SameShape(want[:lvl], dims[:lvl]) && dims[lvl] == rest {
			t.Shape = append(append([]int(nil), dims[:lvl]...), want[lvl:]...)
			return d.check(k)
		}
	}
	if len(want) > 0 && want[0] >= 0 && len(dims) > 0 && dims[0] != want[0] {
		return bad.Errorf(tensorjson.ErrValue, "input %q: batch of %d, the signature's first dimension is %d", t.Name, dims[0], want[0])
	}
	return bad.Errorf(tensorjson.ErrValue, "input %q: data is nested as %v (%d elements), the signature's shape is %v", t.Name, dims, n, want)
}

// check makes sure the decoded elements fill the shape: a guard against
// nestings that match in shape but not in count.
func (d *decoder) check(k int) error {
	t := &d.ins[k]
	want, err := tensor.NumElements(t.Shape)
	if err != nil || want != d.n[k] {
		return bad.Errorf(tensorjson.ErrValue, "input %q: %d elements do not fill shape %v", t.Name, d.n[k], t.Shape)
	}
	if t.DataType == tensor.Bytes {
		t.Data = nil
	} else {
		t.Strings = nil
	}
	return nil
}
