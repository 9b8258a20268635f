package npy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestAppend(t *testing.T) {
	data := binary.LittleEndian.AppendUint32(nil, math.Float32bits(1.5))
	data = binary.LittleEndian.AppendUint32(data, math.Float32bits(-2))
	tests := []struct {
		datatype string
		shape    []int64
		data     []byte
		header   string // the dict, trimmed
		err      bool
	}{
		{"FP32", []int64{1, 2}, data, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", false},
		{"UINT8", []int64{3}, []byte{1, 2, 3}, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", false},
		{"INT64", []int64{}, make([]byte, 8), "{'descr': '<i8', 'fortran_order': False, 'shape': (), }", false},
		{"FP32", []int64{3}, data, "", true},
		{"FP32", []int64{-1, 2}, data, "", true},
		{"BYTES", []int64{1}, []byte{1}, "", true},
	}
	for _, tt := range tests {
		got, err := Append([]byte("x"), tt.datatype, tt.shape, tt.data)
		if tt.err {
			if err == nil {
				t.Errorf("%s %v: got no error, want one", tt.datatype, tt.shape)
			}
			if tt.datatype == "BYTES" && !errors.Is(err, ErrDatatype) {
				t.Errorf("BYTES: got %v, want ErrDatatype", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s %v: %v", tt.datatype, tt.shape, err)
		}
		got = got[1:]
		if !bytes.HasPrefix(got, []byte("\x93NUMPY\x01\x00")) {
			t.Fatalf("magic: got %q", got[:8])
		}
		hl := int(binary.LittleEndian.Uint16(got[8:]))
		if (10+hl)%64 != 0 || got[10+hl-1] != '\n' {
			t.Errorf("header of %d bytes: not padded to 64 with a final newline", hl)
		}
		if h := strings.TrimSpace(string(got[10 : 10+hl])); h != tt.header {
			t.Errorf("header: got %q, want %q", h, tt.header)
		}
		if !bytes.Equal(got[10+hl:], tt.data) {
			t.Errorf("data: got %x, want %x", got[10+hl:], tt.data)
		}
	}
}

// TestNumpyReads: numpy itself loads what Append writes (skipped where
// python3 with numpy is not installed).
func TestNumpyReads(t *testing.T) {
	if exec.Command("python3", "-c", "import numpy").Run() != nil {
		t.Skip("python3 with numpy not installed")
	}
	data := binary.LittleEndian.AppendUint32(nil, math.Float32bits(1.5))
	data = binary.LittleEndian.AppendUint32(data, math.Float32bits(-2))
	b, err := Append(nil, "FP32", []int64{2, 1}, data)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "a.npy")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("python3", "-c", "import numpy,sys; a=numpy.load(sys.argv[1]); print(a.dtype, a.shape, a.ravel().tolist())", path).CombinedOutput()
	if err != nil {
		t.Fatalf("numpy: %v: %s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "float32 (2, 1) [1.5, -2.0]" {
		t.Fatalf("numpy read %q", got)
	}
}
