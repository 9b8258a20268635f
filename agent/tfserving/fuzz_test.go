package tfserving

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// fuzzSigs are the signatures a fuzzed body is decoded against; the index
// is part of the input.
var fuzzSigs = [][]tensor.Info{sigImage, sigFixed, sigTwo, sigBytes, sigU8, sigVec, sigScal}

func sigIndex(sig []tensor.Info) int {
	for i, s := range fuzzSigs {
		if len(s) == len(sig) && (len(s) == 0 || &s[0] == &sig[0]) {
			return i
		}
	}
	return 0
}

func FuzzDecodePredict(f *testing.F) {
	for _, tc := range predictCases {
		f.Add([]byte(tc.body), uint8(sigIndex(tc.sig)))
	}
	f.Fuzz(func(t *testing.T, body []byte, which uint8) {
		sig := fuzzSigs[int(which)%len(fuzzSigs)]
		p, err := DecodePredict(body, sig)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error %v does not match ErrBadRequest", err)
			}
			return
		}
		if len(p.Inputs) != len(sig) {
			t.Fatalf("got %d inputs, the signature has %d", len(p.Inputs), len(sig))
		}
		for i, x := range p.Inputs {
			in := sig[i]
			if x.Name != in.Name || x.DataType != in.DataType {
				t.Fatalf("input %d is %q %s, the signature says %q %s", i, x.Name, x.DataType, in.Name, in.DataType)
			}
			if !tensor.SameShape(in.Shape, x.Shape) {
				t.Fatalf("input %q has shape %v, the signature wants %v", x.Name, x.Shape, in.Shape)
			}
			n, err := tensor.NumElements(x.Shape)
			if err != nil {
				t.Fatalf("input %q: %v", x.Name, err)
			}
			if x.DataType == tensor.Bytes {
				if len(x.Strings) != n || len(x.Data) != 0 {
					t.Fatalf("input %q: %d strings for shape %v", x.Name, len(x.Strings), x.Shape)
				}
			} else if len(x.Data) != n*x.DataType.Size() || len(x.Strings) != 0 {
				t.Fatalf("input %q: %d bytes for shape %v", x.Name, len(x.Data), x.Shape)
			}
		}
		// What decodes must encode back into valid JSON in both forms.
		for _, row := range []bool{true, false} {
			if out := AppendPredictResponse(nil, p.Inputs, row); !json.Valid(out) {
				t.Fatalf("invalid JSON from the decoded inputs: %s", out)
			}
		}
	})
}
