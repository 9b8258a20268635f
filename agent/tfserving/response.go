package tfserving

import (
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/agent/tensorjson"
)

// enc writes BYTES that are not UTF-8 as {"b64": ...}, as TF Serving does
// for binary strings.
var enc = tensorjson.Encoder{B64: true}

// AppendPredictResponse appends the body answering a predict request with
// the model's outputs.
//
// For a row request (row true) it writes {"predictions": [...]}, one entry
// per batch element: the value itself with one output, an object keyed by
// output name with several. That needs every output to have the same first
// dimension; when they do not, it writes the columnar form instead, which
// can express any outputs.
//
// For a columnar request it writes {"outputs": value} with one output and
// {"outputs": {"name": value, ...}} with several. Values are nested as the
// shapes say; NaN and infinities are the strings "NaN", "Infinity" and
// "-Infinity".
func AppendPredictResponse(dst []byte, outs []tensor.Tensor, row bool) []byte {
	if row {
		if batch, ok := rowsOf(outs); ok {
			return appendRows(dst, outs, batch)
		}
	}
	dst = append(dst, `{"outputs":`...)
	if len(outs) == 1 {
		t := &outs[0]
		dst = enc.Append(dst, t.DataType, t.Shape, t.Data, t.Strings)
		return append(dst, '}')
	}
	dst = append(dst, '{')
	for i := range outs {
		t := &outs[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = tensorjson.AppendString(dst, []byte(t.Name))
		dst = append(dst, ':')
		dst = enc.Append(dst, t.DataType, t.Shape, t.Data, t.Strings)
	}
	return append(dst, "}}"...)
}

// rowsOf returns the shared batch size of outs, checking that each holds
// exactly the elements its shape needs, so rows can be sliced safely.
func rowsOf(outs []tensor.Tensor) (int, bool) {
	if len(outs) == 0 {
		return 0, false
	}
	batch := -1
	for i := range outs {
		t := &outs[i]
		if len(t.Shape) == 0 || batch >= 0 && t.Shape[0] != batch {
			return 0, false
		}
		batch = t.Shape[0]
		n, err := tensor.NumElements(t.Shape)
		if err != nil {
			return 0, false
		}
		if t.DataType == tensor.Bytes && len(t.Strings) != n ||
			t.DataType != tensor.Bytes && (t.DataType.Size() == 0 || len(t.Data) != n*t.DataType.Size()) {
			return 0, false
		}
	}
	return batch, true
}

func appendRows(dst []byte, outs []tensor.Tensor, batch int) []byte {
	dst = append(dst, `{"predictions":[`...)
	for b := range batch {
		if b > 0 {
			dst = append(dst, ',')
		}
		if len(outs) == 1 {
			dst = appendRow(dst, &outs[0], b, batch)
			continue
		}
		dst = append(dst, '{')
		for i := range outs {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = tensorjson.AppendString(dst, []byte(outs[i].Name))
			dst = append(dst, ':')
			dst = appendRow(dst, &outs[i], b, batch)
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}

// appendRow writes batch element b of t.
func appendRow(dst []byte, t *tensor.Tensor, b, batch int) []byte {
	if t.DataType == tensor.Bytes {
		per := len(t.Strings) / batch
		return enc.Append(dst, t.DataType, t.Shape[1:], nil, t.Strings[b*per:(b+1)*per])
	}
	per := len(t.Data) / batch
	return enc.Append(dst, t.DataType, t.Shape[1:], t.Data[b*per:(b+1)*per], nil)
}
