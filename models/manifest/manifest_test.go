package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/models/profile"
)

func valid() Manifest {
	return Manifest{
		Name: "face", Version: 1, SHA256: strings.Repeat("ab", 32), Length: 10, Runtime: RuntimeTFLite,
		Inputs:  []Tensor{{Name: "input", DataType: "FP32", Shape: []int{1, -1, 3}}},
		Outputs: []Tensor{{Name: "out", DataType: "UINT8", Shape: []int{1}, Quantization: &Quantization{Scale: 0.5, ZeroPoint: 3}}},
		Golden: []Golden{{Tolerance: 0.01,
			Inputs:  []Data{{Name: "input", DataType: "FP32", Shape: []int{1, 1, 3}, Data: make([]byte, 12)}},
			Outputs: []Data{{Name: "out", DataType: "UINT8", Shape: []int{1}, Data: []byte{7}}}}},
		MinAgentVersion: "1.2.0",
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Manifest)
		ok   bool
	}{
		{"valid", func(*Manifest) {}, true},
		{"name with slash", func(m *Manifest) { m.Name = "../etc" }, false},
		{"name upper case", func(m *Manifest) { m.Name = "Face" }, false},
		{"version zero", func(m *Manifest) { m.Version = 0 }, false},
		{"version negative", func(m *Manifest) { m.Version = -4 }, false},
		{"short digest", func(m *Manifest) { m.SHA256 = "abcd" }, false},
		{"upper-case digest", func(m *Manifest) { m.SHA256 = strings.Repeat("AB", 32) }, false},
		{"length zero", func(m *Manifest) { m.Length = 0 }, false},
		{"onnx runtime", func(m *Manifest) { m.Runtime = RuntimeONNX }, true},
		{"no runtime (older manifests: tflite)", func(m *Manifest) { m.Runtime = "" }, true},
		{"other runtime", func(m *Manifest) { m.Runtime = "tensorrt" }, false},
		{"no outputs", func(m *Manifest) { m.Outputs = nil }, false},
		{"unknown datatype", func(m *Manifest) { m.Inputs[0].DataType = "FP8" }, false},
		{"dimension -2", func(m *Manifest) { m.Inputs[0].Shape = []int{-2} }, false},
		{"golden data size wrong", func(m *Manifest) { m.Golden[0].Inputs[0].Data = make([]byte, 11) }, false},
		{"golden open dimension", func(m *Manifest) { m.Golden[0].Inputs[0].Shape = []int{-1} }, false},
		{"golden tensor the model lacks", func(m *Manifest) { m.Golden[0].Inputs[0].Name = "other" }, false},
		{"golden wrong datatype", func(m *Manifest) { m.Golden[0].Outputs[0].DataType = "INT8" }, false},
		{"golden wrong shape", func(m *Manifest) {
			m.Golden[0].Inputs[0].Shape = []int{1, 3, 1}
			m.Golden[0].Inputs[0].Data = make([]byte, 12)
		}, false},
		{"golden negative tolerance", func(m *Manifest) { m.Golden[0].Tolerance = -1 }, false},
		{"bad min agent", func(m *Manifest) { m.MinAgentVersion = "soon" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := valid()
			tt.edit(&m)
			err := m.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("got %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
}

func parseSeeds(t testing.TB) [][]byte {
	m := valid()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return [][]byte{b, append(append([]byte(nil), b[:len(b)-1]...), []byte(`,"extra":1}`)...), append(b, b...), []byte(`{}`), []byte(`null`)}
}

func TestParse(t *testing.T) {
	seeds := parseSeeds(t)
	m, err := Parse(seeds[0])
	if err != nil {
		t.Fatalf("valid: %v", err)
	}
	if m.Name != "face" || m.Golden[0].Outputs[0].Data[0] != 7 {
		t.Fatalf("got %+v", m)
	}
	for i, b := range seeds[1:] {
		if _, err := Parse(b); !errors.Is(err, ErrInvalid) {
			t.Errorf("seed %d: got %v, want ErrInvalid", i+1, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, b := range parseSeeds(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Parse accepted what Validate refuses: %v", err)
		}
		if !ValidName(m.Name) || strings.ContainsAny(m.Name, "/\\") {
			t.Fatalf("unsafe name %q accepted", m.Name)
		}
	})
}

func TestBytes(t *testing.T) {
	data := []byte("0123456789")
	sum := sha256.Sum256(data)
	m := valid()
	m.SHA256, m.Length = hex.EncodeToString(sum[:]), int64(len(data))
	tests := []struct {
		name string
		src  []byte
		want error
	}{
		{"exact", data, nil},
		{"longer", append(append([]byte(nil), data...), 'x'), ErrTooLong},
		{"shorter", data[:9], ErrTooShort},
		{"changed", []byte("0123456788"), ErrDigest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := io.ReadAll(m.Bytes(bytes.NewReader(tt.src)))
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if int64(len(got)) > m.Length {
				t.Fatalf("read %d bytes, past the signed %d", len(got), m.Length)
			}
		})
	}
}

func TestAgentSupported(t *testing.T) {
	tests := []struct {
		min, agent string
		want       bool
	}{
		{"", "0.1.0", true}, {"1.2.0", "1.2.0", true}, {"1.2.0", "1.10.0", true}, {"1.2.0", "1.1.9", false},
		{"2", "1.9.9", false}, {"1.2.0", "dev", true}, {"v1.2.0", "v1.3", true},
	}
	for _, tt := range tests {
		m := Manifest{MinAgentVersion: tt.min}
		if got := m.AgentSupported(tt.agent); got != tt.want {
			t.Errorf("min %q agent %q: got %v, want %v", tt.min, tt.agent, got, tt.want)
		}
	}
}

func TestRuntimeName(t *testing.T) {
	for _, tc := range []struct{ runtime, want string }{
		{"", RuntimeTFLite}, {RuntimeTFLite, RuntimeTFLite}, {RuntimeONNX, RuntimeONNX},
	} {
		m := Manifest{Runtime: tc.runtime}
		if got := m.RuntimeName(); got != tc.want {
			t.Errorf("RuntimeName() of %q = %q, want %q", tc.runtime, got, tc.want)
		}
	}
}

// withReference gives valid() a reference profile built for its signature.
func withReference(t *testing.T) Manifest {
	m := valid()
	x, err := m.Extractor()
	if err != nil {
		t.Fatal(err)
	}
	b := profile.NewBuilder(x.Names())
	vals := make([]float64, x.Len())
	for i := range 100 {
		for j := range vals {
			vals[j] = float64(i*(j+1)) / 7
		}
		if err := b.Add(vals); err != nil {
			t.Fatal(err)
		}
	}
	if m.Reference, err = b.Build(20); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestReference(t *testing.T) {
	m := withReference(t)
	if got := len(m.Reference.Features); got != 4 { // in:input:mean/std (open shape), out:out:max/mean
		t.Fatalf("%d features, want 4", got)
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(b)
	if err != nil {
		t.Fatalf("a manifest with a reference does not parse back: %v", err)
	}
	if got, want := back.Reference.Features[0].Edges, m.Reference.Features[0].Edges; len(got) != len(want) || got[3] != want[3] {
		t.Errorf("edges changed in the round trip: %v, want %v", got, want)
	}
	for name, edit := range map[string]func(*Manifest){
		"feature of another signature": func(m *Manifest) { m.Reference.Features[0].Name = "in:other:mean" },
		"a feature missing":            func(m *Manifest) { m.Reference.Features = m.Reference.Features[1:] },
		"counts not adding up":         func(m *Manifest) { m.Reference.Features[1].Counts[2]++ },
		"too large": func(m *Manifest) {
			f := &m.Reference.Features[0]
			for i := range 6000 {
				f.Edges = append(f.Edges, f.Edges[len(f.Edges)-1]+1.234567+float64(i))
				f.Counts = append(f.Counts, 0)
			}
		},
	} {
		m := withReference(t)
		edit(&m)
		if err := m.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", name, err)
		}
	}
	// A manifest written before the field still parses, with no reference.
	old := valid()
	b, _ = json.Marshal(old)
	if bytes.Contains(b, []byte("reference")) {
		t.Fatalf("a manifest without a reference encodes the field: %s", b)
	}
	if m, err := Parse(b); err != nil || m.Reference != nil {
		t.Errorf("old manifest: %v, reference %v", err, m.Reference)
	}
}
