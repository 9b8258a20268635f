package batch

import (
	"errors"
	"io"

	"github.com/outpost-edge/outpost/agent/catalog"
)

// Each reads the items of path (a directory, a .jsonl file or an .npy file,
// as a batch run reads them) and calls fn with each item's key and either
// the model's inputs in signature order or the item's error (wrapping
// ErrItem). The inputs are valid only during the call. A raw (.bin, .raw)
// file of a model with several inputs holds them concatenated in
// signature order. fn's error stops the walk and is returned; an input that
// cannot be read as a whole wraps ErrInput. maxItem bounds one item's bytes
// (default 64 MiB). This is how `outpost-agent profile` reads reference
// inputs: the same formats as batch, decoded by the same code.
func Each(path string, e catalog.Entry, maxItem int, fn func(key string, inputs [][]byte, err error) error) error {
	if maxItem <= 0 {
		maxItem = 64 << 20
	}
	src, err := openSource(path, maxItem)
	if err != nil {
		return err
	}
	defer src.Close()
	var d decoder
	var buf []byte
	for {
		it, err := src.Next(buf)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if cap(it.data) > cap(buf) {
			buf = it.data[:0]
		}
		var ins [][]byte
		if it.err == nil {
			if it.kind == kindRaw && len(e.Inputs) > 1 {
				ins, it.err = splitRaw(e, it.data, d.ins[:0])
			} else {
				ins, it.err = d.decode(e, &it)
			}
		}
		if err := fn(it.key, ins, it.err); err != nil {
			return err
		}
	}
}

// splitRaw cuts a raw item into the model's inputs, concatenated in
// signature order.
func splitRaw(e catalog.Entry, data []byte, dst [][]byte) ([][]byte, error) {
	want := 0
	for _, in := range e.Inputs {
		n, err := in.ByteSize()
		if err != nil {
			return nil, itemErrorf("input %q: %v", in.Name, err)
		}
		want += n
	}
	if len(data) != want {
		return nil, itemErrorf("%d bytes, the model's %d inputs concatenated need %d", len(data), len(e.Inputs), want)
	}
	for _, in := range e.Inputs {
		n, _ := in.ByteSize()
		dst = append(dst, data[:n:n])
		data = data[n:]
	}
	return dst, nil
}
