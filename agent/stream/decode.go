package stream

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/oip"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// decoder turns one message into a model's inputs. Implementations are
// used by one goroutine at a time and may keep buffers between calls.
type decoder interface {
	// inputs returns the message as e's inputs in signature order, each
	// exactly the tensor's size. The result may alias the payload or the
	// decoder's buffers until the next call.
	inputs(payload []byte, e catalog.Entry) ([][]byte, error)
	// elements returns the message as elements of e's only input, of its
	// datatype, little-endian, for a window; any whole number of them.
	elements(payload []byte, e catalog.Entry) ([]byte, error)
}

// badMessage wraps a decoding error in ErrBadMessage.
func badMessage(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadMessage, fmt.Sprintf(format, a...))
}

// inputSizes is the byte size of each input of e; it fails for inputs
// without a fixed size (open dimensions, BYTES).
func inputSizes(e catalog.Entry) ([]int, error) {
	sizes := make([]int, len(e.Inputs))
	for i, in := range e.Inputs {
		n, err := in.ByteSize()
		if err != nil {
			return nil, fmt.Errorf("%w: input %q (%s %v): %w", ErrUnsupportedModel, in.Name, in.DataType, in.Shape, err)
		}
		sizes[i] = n
	}
	return sizes, nil
}

// onlyInput is e's input when it has one of a fixed element size.
func onlyInput(e catalog.Entry) (tensor.Info, error) {
	if len(e.Inputs) != 1 {
		return tensor.Info{}, fmt.Errorf("%w: a window needs a model with one input, %s has %d", ErrUnsupportedModel, e.Name, len(e.Inputs))
	}
	in := e.Inputs[0]
	if in.DataType.Size() == 0 {
		return tensor.Info{}, fmt.Errorf("%w: input %q: a window needs fixed-size elements, not %s", ErrUnsupportedModel, in.Name, in.DataType)
	}
	return in, nil
}

// rawDecoder reads little-endian tensor bytes: the inputs back to back in
// signature order, or for a window any whole number of elements.
type rawDecoder struct{ out [][]byte }

func (d *rawDecoder) inputs(p []byte, e catalog.Entry) ([][]byte, error) {
	sizes, err := inputSizes(e)
	if err != nil {
		return nil, err
	}
	total := 0
	for _, n := range sizes {
		total += n
	}
	if len(p) != total {
		return nil, badMessage("%d bytes, model %s takes %d (%s)", len(p), e.Name, total, describeInputs(e))
	}
	d.out = d.out[:0]
	for _, n := range sizes {
		d.out = append(d.out, p[:n])
		p = p[n:]
	}
	return d.out, nil
}

func (d *rawDecoder) elements(p []byte, e catalog.Entry) ([]byte, error) {
	in, err := onlyInput(e)
	if err != nil {
		return nil, err
	}
	if n := in.DataType.Size(); len(p)%n != 0 {
		return nil, badMessage("%d bytes is not a whole number of %s elements", len(p), in.DataType)
	}
	return p, nil
}

func describeInputs(e catalog.Entry) string {
	parts := make([]string, len(e.Inputs))
	for i, in := range e.Inputs {
		parts[i] = fmt.Sprintf("%q %s %v", in.Name, in.DataType, in.Shape)
	}
	return strings.Join(parts, ", ")
}

// jsonDecoder reads an Open Inference Protocol v2 request body; only its
// "inputs" matter (outputs, parameters and id are ignored).
type jsonDecoder struct {
	req oip.Request
	out [][]byte
}

func (d *jsonDecoder) decode(p []byte) error {
	d.req.Reset()
	if err := oip.DecodeRequest(p, -1, &d.req); err != nil {
		return fmt.Errorf("%w: %w", ErrBadMessage, err)
	}
	return nil
}

func (d *jsonDecoder) inputs(p []byte, e catalog.Entry) ([][]byte, error) {
	if err := d.decode(p); err != nil {
		return nil, err
	}
	ts := d.req.Inputs
	if len(ts) != len(e.Inputs) {
		return nil, badMessage("%d inputs, model %s takes %d (%s)", len(ts), e.Name, len(e.Inputs), describeInputs(e))
	}
	d.out = d.out[:0]
	for _, in := range e.Inputs {
		var t *tensor.Tensor
		for j := range ts {
			if ts[j].Name == in.Name {
				t = &ts[j]
			}
		}
		if t == nil {
			return nil, badMessage("input %q is missing; model %s takes %s", in.Name, e.Name, describeInputs(e))
		}
		if t.DataType != in.DataType || !tensor.SameShape(in.Shape, t.Shape) {
			return nil, badMessage("input %q: %s %v, model takes %s %v", in.Name, t.DataType, t.Shape, in.DataType, in.Shape)
		}
		want, err := in.ByteSize()
		if err != nil {
			return nil, fmt.Errorf("%w: input %q: %w", ErrUnsupportedModel, in.Name, err)
		}
		if len(t.Data) != want {
			return nil, badMessage("input %q: %d bytes of data, model takes %d", in.Name, len(t.Data), want)
		}
		d.out = append(d.out, t.Data)
	}
	return d.out, nil
}

func (d *jsonDecoder) elements(p []byte, e catalog.Entry) ([]byte, error) {
	in, err := onlyInput(e)
	if err != nil {
		return nil, err
	}
	if err := d.decode(p); err != nil {
		return nil, err
	}
	if len(d.req.Inputs) != 1 {
		return nil, badMessage("%d inputs, a window takes one", len(d.req.Inputs))
	}
	t := d.req.Inputs[0]
	if t.DataType != in.DataType {
		return nil, badMessage("input %q: datatype %s, model takes %s", t.Name, t.DataType, in.DataType)
	}
	return t.Data, nil
}

// newDecoder returns the decoder named in the config; pixel is the image
// decoder's [min, max].
func newDecoder(name string, pixel [2]float32) (decoder, error) {
	switch name {
	case "raw":
		return &rawDecoder{}, nil
	case "json":
		return &jsonDecoder{}, nil
	case "image":
		return &imageDecoder{lo: pixel[0], hi: pixel[1]}, nil
	}
	return nil, fmt.Errorf("%w: unknown decoder %s (want raw, json or image)", ErrOptions, strconv.Quote(name))
}
