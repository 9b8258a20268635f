package batch

import (
	"bytes"
	"fmt"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/oip"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// decoder turns items into the model's inputs. One per worker goroutine: it
// keeps the JSON request's buffers between items.
type decoder struct {
	req oip.Request
	ins [][]byte
}

// decode returns the inputs of it for the model e, in signature order; the
// slices alias it.data or the decoder's buffers. Errors wrap ErrItem.
func (d *decoder) decode(e catalog.Entry, it *item) ([][]byte, error) {
	d.ins = d.ins[:0]
	switch it.kind {
	case kindJSON:
		d.req.Reset()
		if err := oip.DecodeRequest(it.data, -1, &d.req); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrItem, err)
		}
		return bindTensors(e, d.req.Inputs, d.ins)
	case kindNpy:
		h, err := readNpyHeader(bytes.NewReader(it.data))
		if err != nil {
			return nil, err
		}
		in, err := single(e)
		if err != nil {
			return nil, err
		}
		if err := fits(in, h.DataType, h.Shape); err != nil {
			return nil, err
		}
		data := it.data[h.DataOffset:]
		if size, _ := in.ByteSize(); len(data) != size {
			return nil, itemErrorf("npy: %d bytes of data, input %q needs %d", len(data), in.Name, size)
		}
		return append(d.ins, data), nil
	case kindRaw, kindRow:
		in, err := single(e)
		if err != nil {
			return nil, err
		}
		if size, _ := in.ByteSize(); len(it.data) != size {
			return nil, itemErrorf("%d bytes, input %q (%s %v) needs %d", len(it.data), in.Name, in.DataType, in.Shape, size)
		}
		return append(d.ins, it.data), nil
	}
	return nil, fmt.Errorf("batch: unknown item kind %d", it.kind)
}

// single is the input of a model that has exactly one; .npy and raw items
// carry one unnamed tensor.
func single(e catalog.Entry) (tensor.Info, error) {
	if len(e.Inputs) != 1 {
		return tensor.Info{}, itemErrorf("model %s takes %d inputs; give them by name in .json or .jsonl items", e.Name, len(e.Inputs))
	}
	in := e.Inputs[0]
	if _, err := in.ByteSize(); err != nil {
		return tensor.Info{}, itemErrorf("input %q: %v", in.Name, err)
	}
	return in, nil
}

// fits checks an unnamed tensor against a model input: the same datatype,
// and the same shape, or the same without the input's leading batch
// dimension of 1 (an image saved as [H, W, C] for an input [1, H, W, C]).
func fits(in tensor.Info, dt tensor.DataType, shape []int) error {
	if dt != in.DataType {
		return itemErrorf("datatype %s, input %q takes %s", dt, in.Name, in.DataType)
	}
	if tensor.SameShape(in.Shape, shape) {
		return nil
	}
	if len(in.Shape) == len(shape)+1 && in.Shape[0] == 1 && tensor.SameShape(in.Shape[1:], shape) {
		return nil
	}
	return itemErrorf("shape %v, input %q takes %v", shape, in.Name, in.Shape)
}

// bindTensors matches a request's tensors to the model's inputs by name,
// checks each, and appends their data to dst in signature order.
func bindTensors(e catalog.Entry, ts []tensor.Tensor, dst [][]byte) ([][]byte, error) {
	if len(ts) != len(e.Inputs) {
		return nil, itemErrorf("%d inputs, model %s takes %d", len(ts), e.Name, len(e.Inputs))
	}
	for _, in := range e.Inputs {
		i := -1
		for j := range ts {
			if ts[j].Name == in.Name {
				i = j
				break
			}
		}
		if i < 0 {
			return nil, itemErrorf("input %q is missing", in.Name)
		}
		t := &ts[i]
		if in.DataType == tensor.Bytes {
			return nil, itemErrorf("input %q: BYTES inputs are not supported", in.Name)
		}
		if t.DataType != in.DataType || !tensor.SameShape(in.Shape, t.Shape) {
			return nil, itemErrorf("input %q: %s %v, model takes %s %v", in.Name, t.DataType, t.Shape, in.DataType, in.Shape)
		}
		want, err := tensor.Info{DataType: t.DataType, Shape: t.Shape}.ByteSize()
		if err != nil || want != len(t.Data) {
			return nil, itemErrorf("input %q: %d bytes of data, %s %v needs %d", in.Name, len(t.Data), t.DataType, t.Shape, want)
		}
		dst = append(dst, t.Data)
	}
	return dst, nil
}
