// Package oip reads and writes the bodies of Open Inference Protocol v2
// (KServe v2) REST inference requests and responses, including the binary
// tensor data extension, where tensors follow the JSON header as raw bytes
// and the Inference-Header-Content-Length HTTP header says where the JSON
// ends. The HTTP server (agent/api) owns routing, limits and headers; this
// package only turns bytes into tensor.Tensor values and back.
//
// Decoding is written for the hot path: a Request is reused across calls
// (Reset keeps its buffers), numbers are parsed straight into packed
// little-endian tensor bytes by agent/tensorjson, and binary tensors alias
// the request body instead of being copied.
//
// docs/API-formats.md describes the accepted formats for clients.
package oip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
)

// ErrBadRequest is wrapped by every error DecodeRequest returns; it is
// tensorjson.ErrBadRequest, shared by the codecs. The message says what is
// wrong and where, and is meant for the client. Malformed JSON also matches
// tensorjson.ErrSyntax, and values a tensor cannot take match
// tensorjson.ErrValue.
var ErrBadRequest = tensorjson.ErrBadRequest

// bad makes this codec's errors for the client.
const bad = tensorjson.BadRequests("oip")

// RequestedOutput is an entry of the request's "outputs": an output the
// client asks for, and whether it wants it as binary data.
type RequestedOutput struct {
	Name   string
	Binary bool // parameters.binary_data
}

// Request is a decoded inference request. Reuse one across requests to keep
// its buffers: call Reset, then DecodeRequest.
//
// Inputs' Data and Strings may alias the body given to DecodeRequest (binary
// tensors and unescaped strings are not copied), so the body must not be
// changed while the Request is in use.
type Request struct {
	ID string
	// Inputs in request order, with concrete shapes.
	Inputs []tensor.Tensor
	// Outputs the client asked for; empty means all of them.
	Outputs []RequestedOutput
	// BinaryOutput is parameters.binary_data_output: every output as binary.
	BinaryOutput bool

	owned   [][]byte   // per input slot: Data buffers this Request allocated
	ownedS  [][][]byte // per input slot: Strings buffers
	binSize []int      // per input: parameters.binary_data_size, -1 if absent
	dataAt  []int      // per input: offset of "data" in the JSON, -1 if absent
	decoded []bool     // per input: data already decoded during the first pass
	sc      tensorjson.Scanner
	el      tensorjson.Elements
}

// Reset empties r and keeps its buffers for the next DecodeRequest.
func (r *Request) Reset() {
	r.ID = ""
	r.Inputs = r.Inputs[:0]
	r.Outputs = r.Outputs[:0]
	r.BinaryOutput = false
	r.binSize = r.binSize[:0]
	r.dataAt = r.dataAt[:0]
	r.decoded = r.decoded[:0]
}

// DecodeRequest parses an inference request body into r, which should be
// empty (new or Reset). headerLen is the value of the
// Inference-Header-Content-Length header, or -1 when the request has none:
// then body is all JSON; otherwise body[:headerLen] is JSON and the rest
// holds, back to back and in input order, the binary data of the inputs
// that set parameters.binary_data_size, which must account for every byte.
//
// Every error wraps ErrBadRequest. Unknown fields are ignored.
func DecodeRequest(body []byte, headerLen int, r *Request) error {
	js, bin := body, []byte(nil)
	if headerLen >= 0 {
		if headerLen > len(body) {
			return bad.Errorf(nil, "Inference-Header-Content-Length %d is longer than the %d-byte body", headerLen, len(body))
		}
		js, bin = body[:headerLen], body[headerLen:]
	} else if headerLen != -1 {
		return bad.Errorf(nil, "invalid Inference-Header-Content-Length %d", headerLen)
	}
	s := &r.sc
	s.Reset(js, 0)
	if s.Peek() != '{' {
		return bad.Errorf(tensorjson.ErrSyntax, "%v", s.Errorf("expected the request object, found %s", s.Kind()))
	}
	sawInputs := false
	err := s.Object(func(key []byte) error {
		switch string(key) {
		case "id":
			if s.Peek() != '"' {
				return bad.WrongKind(s, "id must be a string, not %s", s.Kind())
			}
			v, err := s.String()
			if err != nil {
				return err
			}
			r.ID = string(v)
		case "parameters":
			return r.parameters(s)
		case "inputs":
			sawInputs = true
			if s.Peek() != '[' {
				return bad.WrongKind(s, "inputs must be an array, not %s", s.Kind())
			}
			return s.Array(func(int) error { return r.input(s, js) })
		case "outputs":
			if s.Peek() != '[' {
				return bad.WrongKind(s, "outputs must be an array, not %s", s.Kind())
			}
			return s.Array(func(i int) error { return r.output(s, i) })
		default:
			return s.Skip()
		}
		return nil
	})
	if err == nil {
		err = s.End()
	}
	if err != nil {
		if errors.Is(err, ErrBadRequest) {
			return err
		}
		return bad.Errorf(err, "%v", err)
	}
	if !sawInputs || len(r.Inputs) == 0 {
		return bad.Errorf(nil, "request has no inputs")
	}
	if err := r.finish(js, bin, headerLen); err != nil {
		return err
	}
	for i, o := range r.Outputs {
		for _, p := range r.Outputs[:i] {
			if p.Name == o.Name {
				return bad.Errorf(nil, "output %q is requested twice", o.Name)
			}
		}
	}
	return nil
}

func (r *Request) parameters(s *tensorjson.Scanner) error {
	if s.Peek() != '{' {
		return bad.WrongKind(s, "parameters must be an object, not %s", s.Kind())
	}
	return s.Object(func(key []byte) error {
		if string(key) != "binary_data_output" {
			return s.Skip()
		}
		v, err := s.Bool()
		if err != nil {
			return bad.WrongKind(s, "parameters.binary_data_output must be a boolean, not %s", s.Kind())
		}
		r.BinaryOutput = v
		return nil
	})
}

func (r *Request) output(s *tensorjson.Scanner, i int) error {
	var o RequestedOutput
	if s.Peek() != '{' {
		return bad.WrongKind(s, "output #%d must be an object, not %s", i, s.Kind())
	}
	named := false
	err := s.Object(func(key []byte) error {
		switch string(key) {
		case "name":
			if s.Peek() != '"' {
				return bad.WrongKind(s, "output #%d: name must be a string, not %s", i, s.Kind())
			}
			v, err := s.String()
			if err != nil {
				return err
			}
			o.Name, named = string(v), true
		case "parameters":
			if s.Peek() != '{' {
				return bad.WrongKind(s, "output #%d: parameters must be an object, not %s", i, s.Kind())
			}
			return s.Object(func(key []byte) error {
				if string(key) != "binary_data" {
					return s.Skip()
				}
				v, err := s.Bool()
				if err != nil {
					return bad.WrongKind(s, "output #%d: parameters.binary_data must be a boolean, not %s", i, s.Kind())
				}
				o.Binary = v
				return nil
			})
		default:
			return s.Skip()
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !named || o.Name == "" {
		return bad.Errorf(nil, "output #%d has no name", i)
	}
	r.Outputs = append(r.Outputs, o)
	return nil
}

// next returns the next input slot, reusing a previous request's.
func (r *Request) next() (*tensor.Tensor, int) {
	i := len(r.Inputs)
	if i < cap(r.Inputs) {
		r.Inputs = r.Inputs[:i+1]
	} else {
		r.Inputs = append(r.Inputs, tensor.Tensor{})
	}
	for len(r.owned) <= i {
		r.owned = append(r.owned, nil)
		r.ownedS = append(r.ownedS, nil)
	}
	t := &r.Inputs[i]
	*t = tensor.Tensor{Shape: t.Shape[:0]}
	r.binSize = append(r.binSize, -1)
	r.dataAt = append(r.dataAt, -1)
	r.decoded = append(r.decoded, false)
	return t, i
}

// label names an input in errors: by name once known, else by position.
func label(t *tensor.Tensor, i int) string {
	if t.Name != "" {
		return fmt.Sprintf("input %q", t.Name)
	}
	return fmt.Sprintf("input #%d", i)
}

func (r *Request) input(s *tensorjson.Scanner, js []byte) error {
	t, i := r.next()
	if s.Peek() != '{' {
		return bad.WrongKind(s, "input #%d must be an object, not %s", i, s.Kind())
	}
	hasShape := false
	err := s.Object(func(key []byte) error {
		switch string(key) {
		case "name":
			if s.Peek() != '"' {
				return bad.WrongKind(s, "%s: name must be a string, not %s", label(t, i), s.Kind())
			}
			v, err := s.String()
			if err != nil {
				return err
			}
			t.Name = string(v)
		case "datatype":
			if s.Peek() != '"' {
				return bad.WrongKind(s, "%s: datatype must be a string, not %s", label(t, i), s.Kind())
			}
			v, err := s.String()
			if err != nil {
				return err
			}
			dt, err := tensor.ParseDataType(string(v))
			if err != nil {
				return bad.Errorf(tensorjson.ErrValue, "%s: unknown datatype %q", label(t, i), v)
			}
			t.DataType = dt
			r.decoded[i] = false // a repeated key: read data again below
		case "shape":
			hasShape = true
			r.decoded[i] = false
			if s.Peek() != '[' {
				return bad.WrongKind(s, "%s: shape must be an array, not %s", label(t, i), s.Kind())
			}
			t.Shape = t.Shape[:0]
			return s.Array(func(int) error {
				d, err := s.Int()
				if err != nil {
					return err
				}
				if d < 0 || d > 1<<40 {
					return bad.Errorf(tensorjson.ErrValue, "%s: shape has dimension %d", label(t, i), d)
				}
				t.Shape = append(t.Shape, int(d))
				return nil
			})
		case "parameters":
			if s.Peek() != '{' {
				return bad.WrongKind(s, "%s: parameters must be an object, not %s", label(t, i), s.Kind())
			}
			return s.Object(func(key []byte) error {
				if string(key) != "binary_data_size" {
					return s.Skip()
				}
				n, err := s.Int()
				if err != nil || n < 0 {
					return bad.Errorf(tensorjson.ErrValue, "%s: parameters.binary_data_size must be a non-negative integer", label(t, i))
				}
				r.binSize[i] = int(min(n, 1<<62))
				return nil
			})
		case "data":
			r.dataAt[i] = s.Offset()
			if t.DataType != tensor.Invalid && t.Name != "" && hasShape {
				r.decoded[i] = true
				return r.decodeData(s, t, i, len(js))
			}
			return s.Skip()
		default:
			return s.Skip()
		}
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case t.Name == "":
		return bad.Errorf(nil, "input #%d has no name", i)
	case t.DataType == tensor.Invalid:
		return bad.Errorf(nil, "%s has no datatype", label(t, i))
	case !hasShape:
		return bad.Errorf(nil, "%s has no shape", label(t, i))
	}
	for _, u := range r.Inputs[:i] {
		if u.Name == t.Name {
			return bad.Errorf(nil, "input %q appears twice", t.Name)
		}
	}
	if r.dataAt[i] >= 0 && !r.decoded[i] {
		// "data" came before the fields needed to read it: go back for it.
		var sub tensorjson.Scanner
		sub.Reset(js[r.dataAt[i]:], r.dataAt[i])
		if err := r.decodeData(&sub, t, i, len(js)); err != nil {
			return err
		}
		r.decoded[i] = true
	}
	return nil
}

// decodeData reads an input's "data" into its own buffers and checks the
// elements against the shape.
func (r *Request) decodeData(s *tensorjson.Scanner, t *tensor.Tensor, i, jsLen int) error {
	want, err := tensor.NumElements(t.Shape)
	if err != nil {
		return bad.Errorf(tensorjson.ErrValue, "%s: shape %v has too many elements", label(t, i), t.Shape)
	}
	el := &r.el
	el.DataType = t.DataType
	el.Data = r.owned[i][:0]
	el.Strings = r.ownedS[i][:0]
	if sz := t.DataType.Size(); sz > 0 && cap(el.Data) < want*sz {
		// Each JSON element takes at least two bytes, which bounds what a
		// lying shape can make us allocate.
		n := min(want, jsLen/2+1)
		el.Data = make([]byte, 0, n*sz)
	}
	err = el.Decode(s)
	r.owned[i], r.ownedS[i] = el.Data, el.Strings
	if err != nil {
		return bad.Errorf(err, "%s: %v", label(t, i), err)
	}
	t.Data, t.Strings = el.Data, el.Strings
	if t.DataType == tensor.Bytes {
		t.Data = nil
	} else {
		t.Strings = nil
	}
	return checkShape(t, i, el.Dims, el.N, want)
}

// checkShape accepts data given flat with the right number of elements,
// nested exactly as the shape, or as a bare value for a one-element tensor.
func checkShape(t *tensor.Tensor, i int, dims []int, n, want int) error {
	switch {
	case len(dims) == 1 || len(dims) == 0:
		if n != want {
			return bad.Errorf(tensorjson.ErrValue, "%s: data has %d elements, shape %v needs %d", label(t, i), n, t.Shape, want)
		}
		return nil
	case !slices.Equal(dims, t.Shape):
		return bad.Errorf(tensorjson.ErrValue, "%s: data is nested as %v, shape is %v", label(t, i), dims, t.Shape)
	}
	return nil
}

// finish checks that each input has data from exactly one place and hands
// out the binary section.
func (r *Request) finish(js, bin []byte, headerLen int) error {
	off := 0
	for i := range r.Inputs {
		t := &r.Inputs[i]
		size := r.binSize[i]
		switch {
		case size >= 0 && r.dataAt[i] >= 0:
			return bad.Errorf(nil, "%s has both data and parameters.binary_data_size", label(t, i))
		case size < 0 && r.dataAt[i] < 0:
			return bad.Errorf(nil, "%s has no data and no parameters.binary_data_size", label(t, i))
		case size < 0:
			continue
		case headerLen < 0:
			return bad.Errorf(nil, "%s has parameters.binary_data_size but the request has no Inference-Header-Content-Length header", label(t, i))
		case size > len(bin)-off:
			return bad.Errorf(nil, "%s: binary_data_size %d runs past the end of the %d-byte binary section (%d bytes left)", label(t, i), size, len(bin), len(bin)-off)
		}
		chunk := bin[off : off+size]
		off += size
		if err := r.binaryInput(t, i, chunk); err != nil {
			return err
		}
	}
	if off != len(bin) {
		return bad.Errorf(nil, "the binary section has %d bytes, the inputs' binary_data_size add up to %d", len(bin), off)
	}
	return nil
}

func (r *Request) binaryInput(t *tensor.Tensor, i int, chunk []byte) error {
	want, err := tensor.NumElements(t.Shape)
	if err != nil {
		return bad.Errorf(tensorjson.ErrValue, "%s: shape %v has too many elements", label(t, i), t.Shape)
	}
	if t.DataType != tensor.Bytes {
		if need := want * t.DataType.Size(); need != len(chunk) {
			return bad.Errorf(tensorjson.ErrValue, "%s: binary_data_size is %d, shape %v of %s needs %d bytes", label(t, i), len(chunk), t.Shape, t.DataType, need)
		}
		t.Data = chunk
		return nil
	}
	// BYTES: each element is a 4-byte little-endian length and the bytes.
	strs := r.ownedS[i][:0]
	for len(chunk) > 0 {
		if len(chunk) < 4 {
			return bad.Errorf(tensorjson.ErrValue, "%s: element %d: binary BYTES data ends inside a length prefix", label(t, i), len(strs))
		}
		n := binary.LittleEndian.Uint32(chunk)
		if uint64(n) > uint64(len(chunk)-4) {
			return bad.Errorf(tensorjson.ErrValue, "%s: element %d: length %d runs past the end of its binary data", label(t, i), len(strs), n)
		}
		strs = append(strs, chunk[4:4+n])
		chunk = chunk[4+n:]
	}
	r.ownedS[i] = strs
	if len(strs) != want {
		return bad.Errorf(tensorjson.ErrValue, "%s: binary data has %d elements, shape %v needs %d", label(t, i), len(strs), t.Shape, want)
	}
	t.Strings = strs
	return nil
}
