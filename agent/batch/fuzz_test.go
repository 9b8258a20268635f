package batch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/tensor"
)

// fuzzEntry is the face detection model's signature, so the item fuzzers
// need no interpreter.
var fuzzEntry = catalog.Entry{
	Name:    "face",
	Inputs:  []tensor.Info{{Name: "input", DataType: tensor.FP32, Shape: []int{1, 2, 2, 3}}},
	Outputs: []tensor.Info{{Name: "out", DataType: tensor.FP32, Shape: []int{1}}},
}

// npyV1 is a version 1 .npy header around dict.
func npyV1(dict string) []byte {
	return append(binary.LittleEndian.AppendUint16([]byte("\x93NUMPY\x01\x00"), uint16(len(dict))), dict...)
}

func TestNpyHeader(t *testing.T) {
	good := appendNpy(nil, tensor.FP32, []int{2, 3}, make([]byte, 24))
	cases := []struct {
		name  string
		in    []byte
		dt    tensor.DataType
		shape []int
		err   string
	}{
		{"numpy's own", good, tensor.FP32, []int{2, 3}, ""},
		{"scalar", appendNpy(nil, tensor.Int8, []int{}, []byte{1}), tensor.Int8, []int{}, ""},
		{"one dim", appendNpy(nil, tensor.Uint8, []int{5}, make([]byte, 5)), tensor.Uint8, []int{5}, ""},
		{"version 2", append([]byte("\x93NUMPY\x02\x00\x3c\x00\x00\x00"), []byte("{'descr': '<i8', 'fortran_order': False, 'shape': (7, 1), }\n")...), tensor.Int64, []int{7, 1}, ""},
		{"python 2 longs", npyV1("{'descr':'<f8','fortran_order':False,'shape':(2L, 3L)}   \n"), tensor.FP64, []int{2, 3}, ""},
		{"fortran 1-d", npyV1("{'descr': '<f2', 'fortran_order': True, 'shape': (4,)}\n"), tensor.FP16, []int{4}, ""},
		{"fortran 2-d", npyV1("{'descr': '<f4', 'fortran_order': True, 'shape': (4, 2)}\n"), "", nil, "fortran_order"},
		{"big-endian", npyV1("{'descr': '>f4', 'fortran_order': False, 'shape': (4,)}"), "", nil, "big-endian"},
		{"object dtype", npyV1("{'descr': '|O', 'fortran_order': False, 'shape': (4,)}"), "", nil, "unsupported dtype"},
		{"bad magic", []byte("\x93NUMPX\x01\x00\x00\x00"), "", nil, "bad magic"},
		{"short", []byte("\x93NUM"), "", nil, "short"},
		{"version 9", []byte("\x93NUMPY\x09\x00"), "", nil, "format version"},
		{"header past the end", []byte("\x93NUMPY\x01\x00\xff\x00{}"), "", nil, "short header"},
		{"huge v2 header", []byte("\x93NUMPY\x02\x00\xff\xff\xff\xff"), "", nil, "too long"},
		{"missing shape", npyV1("{'descr': '<f4', 'fortran_order': False}"), "", nil, "lacks"},
		{"unknown key", npyV1("{'descr': '<f4', 'x': 1}"), "", nil, "unknown header key"},
		{"negative dim", npyV1("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}"), "", nil, "dimension"},
		{"overflow", npyV1("{'descr': '<f4', 'fortran_order': False, 'shape': (999999999999, 999999999999)}"), "", nil, "too many"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h, err := readNpyHeader(bytes.NewReader(tc.in))
			if tc.dt == "" {
				if err == nil {
					t.Fatalf("got %+v, want an error", h)
				}
				if !errors.Is(err, ErrItem) {
					t.Fatalf("got %v, want ErrItem", err)
				}
				if tc.err != "" && !bytes.Contains([]byte(err.Error()), []byte(tc.err)) {
					t.Fatalf("got %v, want it to say %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.DataType != tc.dt || len(h.Shape) != len(tc.shape) {
				t.Fatalf("got %s %v, want %s %v", h.DataType, h.Shape, tc.dt, tc.shape)
			}
			for i := range h.Shape {
				if h.Shape[i] != tc.shape[i] {
					t.Fatalf("got shape %v, want %v", h.Shape, tc.shape)
				}
			}
			if tc.name == "numpy's own" && (h.DataOffset%64 != 0 || int(h.DataOffset)+24 != len(tc.in)) {
				t.Fatalf("data offset %d in a %d-byte file", h.DataOffset, len(tc.in))
			}
		})
	}
}

// FuzzNpyHeader: no input panics; a header that parses describes a
// tensor whose size is computable, and its data starts after the header.
func FuzzNpyHeader(f *testing.F) {
	f.Add(appendNpy(nil, tensor.FP32, []int{2, 3}, make([]byte, 24)))
	f.Add(appendNpy(nil, tensor.Uint8, []int{}, []byte{7}))
	f.Add([]byte("\x93NUMPY\x02\x00\x3c\x00\x00\x00{'descr': '<i8', 'fortran_order': False, 'shape': (7, 1), }\n"))
	f.Add([]byte("\x93NUMPY\x01\x00\x3a\x00{'descr':'<f8','fortran_order':False,'shape':(2L, 3L)}   \n"))
	f.Add([]byte("\x93NUMPY\x01\x00\x37\x00{'descr': '<f4', 'fortran_order': True, 'shape': (4, 2)}\n"))
	f.Add([]byte("\x93NUMPY\x01\x00\xff\x00{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := readNpyHeader(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrItem) {
				t.Fatalf("error %v does not wrap ErrItem", err)
			}
			return
		}
		if h.DataOffset > int64(len(b)) || h.DataOffset < 10 {
			t.Fatalf("data offset %d in %d bytes", h.DataOffset, len(b))
		}
		if _, err := (tensor.Info{DataType: h.DataType, Shape: h.Shape}).ByteSize(); err != nil {
			t.Fatalf("accepted %s %v: %v", h.DataType, h.Shape, err)
		}
		// A whole .npy item decodes or fails as an item, never otherwise.
		var d decoder
		ins, err := d.decode(fuzzEntry, &item{kind: kindNpy, data: b})
		checkDecoded(t, ins, err)
	})
}

// checkDecoded: a decoded item is the model's one input at its exact size;
// a failure is an item error.
func checkDecoded(t *testing.T, ins [][]byte, err error) {
	t.Helper()
	if err != nil {
		if !errors.Is(err, ErrItem) {
			t.Fatalf("error %v does not wrap ErrItem", err)
		}
		return
	}
	if len(ins) != 1 || len(ins[0]) != 2*2*3*4 {
		t.Fatalf("decoded %d inputs, want one of 48 bytes", len(ins))
	}
}

// FuzzJSONLItem: a .jsonl line (or .json file) never panics the decoder,
// and either binds to the model's input at its exact size or is an item
// error.
func FuzzJSONLItem(f *testing.F) {
	f.Add([]byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1,2,2,3],"data":[1,2,3,4,5,6,7,8,9,10,11,12]}]}`))
	f.Add([]byte(`{"id":"x","inputs":[{"name":"input","datatype":"FP32","shape":[1,2,2,3],"data":[[[[1,2,3],[4,5,6]],[[7,8,9],[10,11,12]]]]}]}`))
	f.Add([]byte(`{"inputs":[{"name":"input","datatype":"FP64","shape":[1,2,2,3],"data":[1,2,3,4,5,6,7,8,9,10,11,12]}]}`))
	f.Add([]byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[12],"data":[1,2,3,4,5,6,7,8,9,10,11,12]}]}`))
	f.Add([]byte(`{"inputs":[{"name":"other","datatype":"FP32","shape":[1],"data":[1]}]}`))
	f.Add([]byte(`{"inputs":[`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`not json`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var d decoder
		ins, err := d.decode(fuzzEntry, &item{kind: kindJSON, data: line})
		checkDecoded(t, ins, err)
	})
}

// FuzzJSONLSource: any file splits into items whose keys are the line
// numbers of its non-blank lines, in order, and reading them after a seek
// gives the same items.
func FuzzJSONLSource(f *testing.F) {
	f.Add([]byte("{}\n\n{\"a\":1}\r\n  \nlast"), 8)
	f.Add([]byte(""), 1)
	f.Add([]byte("\n\n\n"), 1)
	f.Add([]byte("0123456789abcdef\nx\n"), 4)
	f.Fuzz(func(t *testing.T, data []byte, limit int) {
		if limit <= 0 || limit > 1<<20 {
			return
		}
		path := filepath.Join(t.TempDir(), "in.jsonl")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := openJSONL(path, limit)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		var want []item
		for i := 0; ; i++ {
			it, err := s.Next(nil)
			if err != nil {
				break
			}
			if it.index != i || it.key != s.Key(i) {
				t.Fatalf("item %d: index %d key %q, want key %q", i, it.index, it.key, s.Key(i))
			}
			if it.err == nil && (len(bytes.TrimSpace(it.data)) == 0 || len(it.data) > limit+1) {
				t.Fatalf("item %d: %q for limit %d", i, it.data, limit)
			}
			want = append(want, item{index: it.index, key: it.key, data: append([]byte(nil), it.data...), err: it.err})
		}
		if len(want) != s.Total() {
			t.Fatalf("read %d items, Total says %d", len(want), s.Total())
		}
		if len(want) == 0 {
			return
		}
		k := len(want) / 2
		if err := s.Seek(k); err != nil {
			t.Fatal(err)
		}
		it, err := s.Next(nil)
		if err != nil || it.key != want[k].key || !bytes.Equal(it.data, want[k].data) {
			t.Fatalf("after seek to %d: %q %q %v, want %q %q", k, it.key, it.data, err, want[k].key, want[k].data)
		}
	})
}

// FuzzScanRecords: whatever a crash leaves in the output, resume keeps a
// prefix of whole lines numbered from 0.
func FuzzScanRecords(f *testing.F) {
	f.Add([]byte("{\"index\":0,\"key\":\"row 0\",\"result\":{}}\n{\"index\":1,\"key\":\"row 1\",\"error\":\"x\"}\n{\"ind"))
	f.Add([]byte("{\"index\":0,\"key\":\"a\"}\n\x00\x00\x00\n"))
	f.Add([]byte("{\"index\":1,\"key\":\"a\"}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "out.jsonl")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		fh, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		var rec recovered
		keep, err := scanRecords(fh, &rec)
		if err != nil {
			t.Fatal(err)
		}
		if keep > int64(len(data)) || (keep > 0 && data[keep-1] != '\n') {
			t.Fatalf("kept %d bytes of %d, not ending a line", keep, len(data))
		}
		if n := bytes.Count(data[:keep], []byte("\n")); n != len(rec.keys) {
			t.Fatalf("kept %d lines, %d keys", n, len(rec.keys))
		}
	})
}
