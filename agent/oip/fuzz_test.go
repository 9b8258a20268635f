package oip

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// checkDecoded asserts what every successful decode promises: inputs with
// valid datatypes whose data fills their shape exactly, and that the
// tensors encode back into valid JSON.
func checkDecoded(t *testing.T, r *Request) {
	t.Helper()
	if len(r.Inputs) == 0 {
		t.Fatal("decoded a request with no inputs")
	}
	resp := &Response{ModelName: "m"}
	for _, x := range r.Inputs {
		if x.Name == "" || !x.DataType.Valid() {
			t.Fatalf("input %q has datatype %q", x.Name, x.DataType)
		}
		n, err := tensor.NumElements(x.Shape)
		if err != nil {
			t.Fatalf("input %q: shape %v: %v", x.Name, x.Shape, err)
		}
		if x.DataType == tensor.Bytes {
			if len(x.Strings) != n || len(x.Data) != 0 {
				t.Fatalf("input %q: %d strings and %d bytes for shape %v", x.Name, len(x.Strings), len(x.Data), x.Shape)
			}
		} else if len(x.Data) != n*x.DataType.Size() || len(x.Strings) != 0 {
			t.Fatalf("input %q: %d bytes of %s for shape %v, want %d", x.Name, len(x.Data), x.DataType, x.Shape, n*x.DataType.Size())
		}
		resp.Outputs = append(resp.Outputs, Output{Tensor: x})
	}
	out, headerLen := AppendResponse(nil, resp)
	if headerLen != -1 || !json.Valid(out) {
		t.Fatalf("re-encoding the inputs gave invalid JSON (headerLen %d): %q", headerLen, out)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, tc := range decodeCases {
		if tc.headerLen == -1 {
			f.Add([]byte(tc.body))
		}
	}
	var r Request
	f.Fuzz(func(t *testing.T, body []byte) {
		r.Reset()
		err := DecodeRequest(body, -1, &r)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not match ErrBadRequest", err)
			}
			return
		}
		checkDecoded(t, &r)
	})
}

// FuzzDecodeBinary exercises the binary tensor data extension: a JSON
// header, a binary section, and the header length that splits them.
func FuzzDecodeBinary(f *testing.F) {
	for _, tc := range binaryCases {
		f.Add([]byte(tc.body), []byte(tc.bin), 0)
	}
	f.Add([]byte(decodeCases[0].body), []byte{}, 0)
	var r Request
	f.Fuzz(func(t *testing.T, header, bin []byte, skew int) {
		body := append(append([]byte(nil), header...), bin...)
		headerLen := len(header) + skew%4 // mostly right, sometimes off
		r.Reset()
		err := DecodeRequest(body, headerLen, &r)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not match ErrBadRequest", err)
			}
			return
		}
		checkDecoded(t, &r)
	})
}
