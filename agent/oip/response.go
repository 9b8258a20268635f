package oip

import (
	"encoding/binary"
	"strconv"

	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
)

// Output is one output tensor of a response and how to send it.
type Output struct {
	Tensor tensor.Tensor
	// Binary sends the data after the JSON (binary tensor data extension)
	// instead of as a JSON array.
	Binary bool
	// Base64 writes the data as "b64", the standard base64 of its
	// little-endian bytes, instead of "data". Not part of the protocol:
	// outpost-agent batch writes its results with it (docs/MODES.md).
	// Binary wins over it.
	Base64 bool
}

// Response is an inference response to encode. Reuse one across requests:
// Reset keeps the Outputs slice.
type Response struct {
	ModelName    string
	ModelVersion string // omitted when empty
	ID           string // the request's id; omitted when empty
	// ModelDigest, such as "sha256:...", goes to parameters.model_digest;
	// omitted when empty.
	ModelDigest string
	Outputs     []Output
}

// Reset empties r and keeps its Outputs capacity.
func (r *Response) Reset() {
	*r = Response{Outputs: r.Outputs[:0]}
}

// AppendResponse appends the body of r to dst. headerLen is the length of
// the JSON part, for the Inference-Header-Content-Length header, when some
// output is binary, and -1 when the body is all JSON.
//
// JSON data is flat, in row-major order. Floats are written in their
// shortest exact form; NaN and infinities as the strings "NaN", "Infinity"
// and "-Infinity". BYTES are written as JSON strings, invalid UTF-8 replaced
// by U+FFFD: ask for such outputs as binary. Binary BYTES elements are each
// a 4-byte little-endian length followed by the bytes.
func AppendResponse(dst []byte, r *Response) (out []byte, headerLen int) {
	start := len(dst)
	dst, anyBinary := appendHeader(dst, r)
	if !anyBinary {
		return dst, -1
	}
	headerLen = len(dst) - start
	for k := range r.Outputs {
		o := &r.Outputs[k]
		if !o.Binary {
			continue
		}
		if o.Tensor.DataType != tensor.Bytes {
			dst = append(dst, o.Tensor.Data...)
			continue
		}
		for _, s := range o.Tensor.Strings {
			dst = binary.LittleEndian.AppendUint32(dst, uint32(len(s)))
			dst = append(dst, s...)
		}
	}
	return dst, headerLen
}

// AppendResponseHeader appends the JSON part of the body AppendResponse
// writes for r, without the binary data that follows it: a server that
// already holds the binary outputs back to back in place (the agent copies
// them out of the interpreter straight into its response buffer) writes
// this header before them instead of copying them again.
func AppendResponseHeader(dst []byte, r *Response) []byte {
	dst, _ = appendHeader(dst, r)
	return dst
}

// appendHeader appends the JSON part and reports whether an output is
// binary.
func appendHeader(dst []byte, r *Response) ([]byte, bool) {
	dst = AppendResponseStart(dst, r)
	anyBinary := false
	for k := range r.Outputs {
		dst = AppendOutput(dst, k, &r.Outputs[k])
		anyBinary = anyBinary || r.Outputs[k].Binary
	}
	return AppendResponseEnd(dst), anyBinary
}

// AppendResponseStart, AppendOutput for each output in turn and
// AppendResponseEnd append what AppendResponse does for a response without
// binary outputs, piece by piece: a caller can write each output while it
// still sits in the interpreter, instead of copying it out first
// (outpost-agent batch). AppendResponseStart ignores r.Outputs.
func AppendResponseStart(dst []byte, r *Response) []byte {
	dst = append(dst, `{"model_name":`...)
	dst = tensorjson.AppendString(dst, []byte(r.ModelName))
	if r.ModelVersion != "" {
		dst = append(dst, `,"model_version":`...)
		dst = tensorjson.AppendString(dst, []byte(r.ModelVersion))
	}
	if r.ID != "" {
		dst = append(dst, `,"id":`...)
		dst = tensorjson.AppendString(dst, []byte(r.ID))
	}
	if r.ModelDigest != "" {
		dst = append(dst, `,"parameters":{"model_digest":`...)
		dst = tensorjson.AppendString(dst, []byte(r.ModelDigest))
		dst = append(dst, '}')
	}
	return append(dst, `,"outputs":[`...)
}

// AppendOutput appends output k (from 0) of a response begun with
// AppendResponseStart. A binary output gets its JSON part only; its data
// goes after the whole JSON (AppendResponse).
func AppendOutput(dst []byte, k int, o *Output) []byte {
	t := &o.Tensor
	if k > 0 {
		dst = append(dst, ',')
	}
	dst = append(dst, `{"name":`...)
	dst = tensorjson.AppendString(dst, []byte(t.Name))
	dst = append(dst, `,"datatype":`...)
	dst = tensorjson.AppendString(dst, []byte(t.DataType))
	dst = append(dst, `,"shape":[`...)
	for j, d := range t.Shape {
		if j > 0 {
			dst = append(dst, ',')
		}
		dst = strconv.AppendInt(dst, int64(d), 10)
	}
	dst = append(dst, ']')
	switch {
	case o.Binary:
		dst = append(dst, `,"parameters":{"binary_data_size":`...)
		dst = strconv.AppendInt(dst, int64(binarySize(t)), 10)
		return append(dst, "}}"...)
	case o.Base64 && t.DataType != tensor.Bytes:
		dst = append(dst, `,"b64":"`...)
		dst = tensorjson.AppendBase64(dst, t.Data)
		return append(dst, `"}`...)
	}
	dst = append(dst, `,"data":`...)
	dst = tensorjson.Encoder{}.AppendFlat(dst, t.DataType, t.Data, t.Strings)
	return append(dst, '}')
}

// AppendResponseEnd closes a response begun with AppendResponseStart.
func AppendResponseEnd(dst []byte) []byte { return append(dst, "]}"...) }

func binarySize(t *tensor.Tensor) int {
	if t.DataType != tensor.Bytes {
		return len(t.Data)
	}
	n := 0
	for _, s := range t.Strings {
		n += 4 + len(s)
	}
	return n
}
