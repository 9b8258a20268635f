package grpcapi

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/outpost-edge/outpost/agent/grpcapi/inferencepb"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
)

// bad makes this package's errors for the client: they match
// tensorjson.ErrBadRequest, which the API maps to INVALID_ARGUMENT.
const bad = tensorjson.BadRequests("grpc")

// decodeInputs turns a ModelInferRequest's inputs into tensors. Their data
// is either raw (raw_input_contents[i], aliased, not copied) or typed
// (contents, packed here into little-endian bytes); every input must have
// a datatype and a shape its data fills exactly. Checks against the model's
// signature come later, from the API's shared path. Every error matches
// tensorjson.ErrBadRequest and says which input is wrong and how.
func decodeInputs(req *inferencepb.ModelInferRequest) ([]tensor.Tensor, error) {
	raw := req.GetRawInputContents()
	ins := req.GetInputs()
	if len(raw) > 0 && len(raw) != len(ins) {
		return nil, bad.Errorf(nil, "raw_input_contents has %d entries for %d inputs: give one per input, in input order", len(raw), len(ins))
	}
	out := make([]tensor.Tensor, len(ins))
	for i, in := range ins {
		t := &out[i]
		t.Name = in.GetName()
		if t.Name == "" {
			return nil, bad.Errorf(nil, "inputs[%d]: name is required", i)
		}
		if in.GetDatatype() == "" {
			return nil, bad.Errorf(nil, "input %q: datatype is required", t.Name)
		}
		dt, err := tensor.ParseDataType(in.GetDatatype())
		if err != nil {
			return nil, bad.Errorf(tensorjson.ErrValue, "input %q: unknown datatype %q", t.Name, in.GetDatatype())
		}
		t.DataType = dt
		shape, n, err := convShape(in.GetShape())
		if err != nil {
			return nil, bad.Errorf(tensorjson.ErrValue, "input %q: %v", t.Name, err)
		}
		t.Shape = shape
		if len(raw) > 0 {
			if in.GetContents() != nil {
				return nil, bad.Errorf(nil, "input %q: both contents and raw_input_contents are set: use one", t.Name)
			}
			if dt == tensor.Bytes {
				return nil, bad.Errorf(nil, "input %q: BYTES in raw_input_contents are not supported: use contents.bytes_contents", t.Name)
			}
			if want := n * dt.Size(); len(raw[i]) != want {
				return nil, bad.Errorf(nil, "input %q: raw_input_contents[%d] holds %d bytes, shape %v of %s needs %d", t.Name, i, len(raw[i]), shape, dt, want)
			}
			t.Data = raw[i]
			continue
		}
		if err := typed(t, in.GetContents(), n); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// convShape checks a request's shape and returns it as ints with its
// element count.
func convShape(dims []int64) ([]int, int, error) {
	shape := make([]int, len(dims))
	for i, d := range dims {
		if d < 0 || d > math.MaxInt32 {
			return nil, 0, fmt.Errorf("shape %v: dimension %d is out of range", dims, d)
		}
		shape[i] = int(d)
	}
	n, err := tensor.NumElements(shape)
	if err != nil {
		return nil, 0, err
	}
	return shape, n, nil
}

// typed packs t's typed contents c, which must hold exactly n elements in
// the one field t's datatype uses, into t.Data (t.Strings for BYTES).
func typed(t *tensor.Tensor, c *inferencepb.InferTensorContents, n int) error {
	field, count := "", 0
	set := 0
	for _, f := range []struct {
		name string
		n    int
	}{
		{"bool_contents", len(c.GetBoolContents())},
		{"int_contents", len(c.GetIntContents())},
		{"int64_contents", len(c.GetInt64Contents())},
		{"uint_contents", len(c.GetUintContents())},
		{"uint64_contents", len(c.GetUint64Contents())},
		{"fp32_contents", len(c.GetFp32Contents())},
		{"fp64_contents", len(c.GetFp64Contents())},
		{"bytes_contents", len(c.GetBytesContents())},
	} {
		if f.n > 0 {
			field, count = f.name, f.n
			set++
		}
	}
	want := contentsField(t.DataType)
	switch {
	case set == 0 && n == 0:
		t.Data = []byte{}
		return nil
	case set == 0:
		return bad.Errorf(nil, "input %q has no data: set contents.%s or raw_input_contents", t.Name, want)
	case set > 1:
		return bad.Errorf(nil, "input %q: contents has more than one field set: %s takes only %s", t.Name, t.DataType, want)
	case field != want:
		if want == "" {
			return bad.Errorf(nil, "input %q: %s has no typed contents: send it in raw_input_contents", t.Name, t.DataType)
		}
		return bad.Errorf(nil, "input %q: datatype %s takes contents.%s, not %s", t.Name, t.DataType, want, field)
	case count != n:
		return bad.Errorf(nil, "input %q: %d values in contents.%s, shape %v needs %d", t.Name, count, field, t.Shape, n)
	}
	le := binary.LittleEndian
	size := t.DataType.Size()
	b := make([]byte, n*size)
	switch t.DataType {
	case tensor.Bool:
		for i, v := range c.GetBoolContents() {
			if v {
				b[i] = 1
			}
		}
	case tensor.Int8, tensor.Int16, tensor.Int32:
		lo, hi := int64(-1)<<(8*size-1), int64(1)<<(8*size-1)-1
		for i, v := range c.GetIntContents() {
			if int64(v) < lo || int64(v) > hi {
				return bad.Errorf(tensorjson.ErrValue, "input %q: value %d at %d is out of range for %s", t.Name, v, i, t.DataType)
			}
			putInt(b[i*size:], size, uint64(v))
		}
	case tensor.Uint8, tensor.Uint16, tensor.Uint32:
		hi := uint64(1)<<(8*size) - 1
		for i, v := range c.GetUintContents() {
			if uint64(v) > hi {
				return bad.Errorf(tensorjson.ErrValue, "input %q: value %d at %d is out of range for %s", t.Name, v, i, t.DataType)
			}
			putInt(b[i*size:], size, uint64(v))
		}
	case tensor.Int64:
		for i, v := range c.GetInt64Contents() {
			le.PutUint64(b[i*8:], uint64(v))
		}
	case tensor.Uint64:
		for i, v := range c.GetUint64Contents() {
			le.PutUint64(b[i*8:], v)
		}
	case tensor.FP32:
		for i, v := range c.GetFp32Contents() {
			le.PutUint32(b[i*4:], math.Float32bits(v))
		}
	case tensor.FP64:
		for i, v := range c.GetFp64Contents() {
			le.PutUint64(b[i*8:], math.Float64bits(v))
		}
	case tensor.Bytes:
		t.Strings = c.GetBytesContents()
		return nil
	}
	t.Data = b
	return nil
}

func putInt(b []byte, size int, v uint64) {
	switch size {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b, uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b, uint32(v))
	}
}

// contentsField names the InferTensorContents field a datatype uses; ""
// for FP16, which has none.
func contentsField(dt tensor.DataType) string {
	switch dt {
	case tensor.Bool:
		return "bool_contents"
	case tensor.Int8, tensor.Int16, tensor.Int32:
		return "int_contents"
	case tensor.Int64:
		return "int64_contents"
	case tensor.Uint8, tensor.Uint16, tensor.Uint32:
		return "uint_contents"
	case tensor.Uint64:
		return "uint64_contents"
	case tensor.FP32:
		return "fp32_contents"
	case tensor.FP64:
		return "fp64_contents"
	case tensor.Bytes:
		return "bytes_contents"
	}
	return ""
}
