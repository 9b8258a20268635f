package tflite

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"

	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/stretchr/testify/require"
)

// A tiny flatbuffer writer for tests: it lays objects out front to back (all
// offsets point forward, as the format requires), enough to make small
// models with features the downloaded test models lack (quantization, int8).
type (
	tbl   []any // fields by slot: nil (absent), uint32, byte, or a child node
	vecU  []uint32
	vecI  []int64
	vecF  []float32
	vecT  []tbl
	fbStr string
)

type fbw struct{ b []byte }

func (w *fbw) u32(v uint32) int {
	p := len(w.b)
	w.b = binary.LittleEndian.AppendUint32(w.b, v)
	return p
}

func (w *fbw) patch(at, target int) { binary.LittleEndian.PutUint32(w.b[at:], uint32(target-at)) }

func (w *fbw) emit(n any) int {
	switch n := n.(type) {
	case tbl:
		vt := len(w.b)
		w.b = binary.LittleEndian.AppendUint16(w.b, uint16(4+2*len(n)))
		w.b = binary.LittleEndian.AppendUint16(w.b, uint16(4+4*len(n)))
		for i, f := range n {
			off := 0
			if f != nil {
				off = 4 + 4*i
			}
			w.b = binary.LittleEndian.AppendUint16(w.b, uint16(off))
		}
		pos := w.u32(0)
		binary.LittleEndian.PutUint32(w.b[pos:], uint32(int32(pos-vt)))
		slots := make([]int, len(n))
		for i, f := range n {
			switch f := f.(type) {
			case uint32:
				slots[i] = w.u32(f)
			case byte:
				slots[i] = w.u32(uint32(f))
			default:
				slots[i] = w.u32(0)
			}
		}
		for i, f := range n {
			switch f.(type) {
			case nil, uint32, byte:
			default:
				w.patch(slots[i], w.emit(f))
			}
		}
		return pos
	case vecU:
		p := w.u32(uint32(len(n)))
		for _, v := range n {
			w.u32(v)
		}
		return p
	case vecF:
		p := w.u32(uint32(len(n)))
		for _, v := range n {
			w.u32(math.Float32bits(v))
		}
		return p
	case vecI:
		p := w.u32(uint32(len(n)))
		for _, v := range n {
			w.b = binary.LittleEndian.AppendUint64(w.b, uint64(v))
		}
		return p
	case fbStr:
		p := w.u32(uint32(len(n)))
		w.b = append(w.b, n...)
		w.b = append(w.b, 0)
		return p
	case vecT:
		p := w.u32(uint32(len(n)))
		slots := make([]int, len(n))
		for i := range n {
			slots[i] = w.u32(0)
		}
		for i, t := range n {
			w.patch(slots[i], w.emit(t))
		}
		return p
	}
	panic("fbw: unknown node")
}

func buildModel(m tbl) []byte {
	w := &fbw{}
	root := w.u32(0)
	w.b = append(w.b, "TFL3"...)
	w.patch(root, w.emit(m))
	return w.b
}

func tensor(name string, typ byte, shape vecU, quant tbl) tbl {
	t := tbl{shape, typ, nil, fbStr(name), nil}
	if quant != nil {
		t[4] = quant
	}
	return t
}

// smallModel is a quantized int8 -> uint8 model with one open dimension.
func smallModel() []byte {
	in := tensor("image", 9, vecU{1, 4, 4, 1}, tbl{nil, nil, vecF{0.5}, vecI{-3}})
	in = append(in, nil, nil, vecU{1, math.MaxUint32, 4, 1}) // shape_signature: -1
	out := tensor("score", 3, vecU{1, 2}, tbl{nil, nil, vecF{0.25}, vecI{7}})
	sg := tbl{vecT{in, out}, vecU{0}, vecU{1}}
	return buildModel(tbl{uint32(3), nil, vecT{sg}})
}

func TestReadBuilt(t *testing.T) {
	m, err := Read(smallModel())
	require.NoError(t, err)
	require.Equal(t, []manifest.Tensor{{Name: "image", DataType: "INT8", Shape: []int{1, -1, 4, 1},
		Quantization: &manifest.Quantization{Scale: 0.5, ZeroPoint: -3}}}, m.Inputs)
	require.Equal(t, []manifest.Tensor{{Name: "score", DataType: "UINT8", Shape: []int{1, 2},
		Quantization: &manifest.Quantization{Scale: 0.25, ZeroPoint: 7}}}, m.Outputs)
}

func TestReadBuiltRefuses(t *testing.T) {
	ok := tensor("x", 0, vecU{1}, nil)
	tests := []struct {
		name  string
		model tbl
	}{
		{"no subgraphs", tbl{uint32(3), nil, vecT{}}},
		{"input index out of range", tbl{uint32(3), nil, vecT{{vecT{ok}, vecU{5}, vecU{0}}}}},
		{"negative input index", tbl{uint32(3), nil, vecT{{vecT{ok}, vecU{math.MaxUint32}, vecU{0}}}}},
		{"unknown tensor type", tbl{uint32(3), nil, vecT{{vecT{tensor("x", 200, vecU{1}, nil)}, vecU{0}, vecU{0}}}}},
		{"too many dimensions", tbl{uint32(3), nil, vecT{{vecT{tensor("x", 0, make(vecU, 17), nil)}, vecU{0}, vecU{0}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Read(buildModel(tt.model)); !errors.Is(err, ErrFormat) {
				t.Fatalf("got %v, want ErrFormat", err)
			}
		})
	}
}
