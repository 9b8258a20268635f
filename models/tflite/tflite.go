// Package tflite reads the input and output signature of a TensorFlow Lite
// model straight from its flatbuffer, in pure Go, so that tools without cgo
// (the fleet's exporter, the store's load check) can describe a model. It
// reads only what it needs (subgraph 0's tensors, inputs and outputs) and
// checks every offset against the buffer: input is untrusted.
package tflite

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/outpost-edge/outpost/models/manifest"
)

// ErrFormat wraps every reason a buffer is not a readable TFLite model.
var ErrFormat = errors.New("tflite: not a valid model")

// Model is what the reader extracts.
type Model struct {
	// SchemaVersion is the flatbuffer schema version (3 today).
	SchemaVersion uint32
	Inputs        []manifest.Tensor
	Outputs       []manifest.Tensor
}

// TensorType values of the TFLite schema, by their datatype names.
var dataTypes = map[byte]string{
	0: "FP32", 1: "FP16", 2: "INT32", 3: "UINT8", 4: "INT64", 5: "BYTES",
	6: "BOOL", 7: "INT16", 9: "INT8", 10: "FP64", 12: "UINT64",
	15: "UINT32", 16: "UINT16",
}

// Field slots of the schema tables used here.
const (
	modelVersion   = 0
	modelSubgraphs = 2

	subgraphTensors = 0
	subgraphInputs  = 1
	subgraphOutputs = 2

	tensorShape        = 0
	tensorType         = 1
	tensorName         = 3
	tensorQuantization = 4
	tensorShapeSig     = 7

	quantScale     = 2
	quantZeroPoint = 3
)

const maxElems = 1 << 20 // bound on any vector we walk

// Read extracts the signature of subgraph 0 from a .tflite file's bytes.
func Read(b []byte) (*Model, error) {
	fb := buf(b)
	if len(b) < 8 || string(b[4:8]) != "TFL3" {
		return nil, fmt.Errorf("%w: missing TFL3 identifier", ErrFormat)
	}
	root, err := fb.root()
	if err != nil {
		return nil, err
	}
	m := &Model{}
	if m.SchemaVersion, err = root.u32(modelVersion); err != nil {
		return nil, err
	}
	subgraphs, err := root.vector(modelSubgraphs)
	if err != nil {
		return nil, err
	}
	if subgraphs.n == 0 {
		return nil, fmt.Errorf("%w: no subgraphs", ErrFormat)
	}
	sg, err := subgraphs.table(0)
	if err != nil {
		return nil, err
	}
	tensors, err := sg.vector(subgraphTensors)
	if err != nil {
		return nil, err
	}
	for _, f := range []struct {
		slot int
		out  *[]manifest.Tensor
	}{{subgraphInputs, &m.Inputs}, {subgraphOutputs, &m.Outputs}} {
		idx, err := sg.vector(f.slot)
		if err != nil {
			return nil, err
		}
		for i := 0; i < idx.n; i++ {
			ti, err := idx.i32(i)
			if err != nil {
				return nil, err
			}
			if ti < 0 || int(ti) >= tensors.n {
				return nil, fmt.Errorf("%w: tensor index %d of %d", ErrFormat, ti, tensors.n)
			}
			tt, err := tensors.table(int(ti))
			if err != nil {
				return nil, err
			}
			t, err := readTensor(tt)
			if err != nil {
				return nil, err
			}
			*f.out = append(*f.out, t)
		}
	}
	return m, nil
}

func readTensor(t table) (manifest.Tensor, error) {
	var out manifest.Tensor
	name, err := t.str(tensorName)
	if err != nil {
		return out, err
	}
	out.Name = name
	typ, err := t.u8(tensorType)
	if err != nil {
		return out, err
	}
	dt, ok := dataTypes[typ]
	if !ok {
		return out, fmt.Errorf("%w: tensor %q: unsupported type %d", ErrFormat, name, typ)
	}
	out.DataType = dt
	shape, err := t.ints(tensorShape)
	if err != nil {
		return out, err
	}
	// The shape signature marks open dimensions with -1; prefer it when it
	// agrees in rank.
	if sig, err := t.ints(tensorShapeSig); err == nil && len(sig) == len(shape) && len(sig) > 0 {
		shape = sig
	}
	out.Shape = shape
	if out.Shape == nil {
		out.Shape = []int{}
	}
	q, ok, err := t.subtable(tensorQuantization)
	if err != nil {
		return out, err
	}
	if ok {
		scale, err := q.vector(quantScale)
		if err != nil {
			return out, err
		}
		zp, err := q.vector(quantZeroPoint)
		if err != nil {
			return out, err
		}
		// Per-tensor quantization only; per-axis scales are reported by
		// their first entry, as the C API does.
		if scale.n > 0 {
			s, err := scale.u32(0)
			if err != nil {
				return out, err
			}
			qp := &manifest.Quantization{Scale: math.Float32frombits(s)}
			if zp.n > 0 {
				z, err := zp.i64(0)
				if err != nil {
					return out, err
				}
				qp.ZeroPoint = z
			}
			if qp.Scale != 0 {
				out.Quantization = qp
			}
		}
	}
	return out, nil
}

// buf is the whole flatbuffer; every read is bounds-checked.
type buf []byte

func (b buf) u32at(off int) (uint32, error) {
	if off < 0 || off > len(b)-4 {
		return 0, fmt.Errorf("%w: offset %d out of range", ErrFormat, off)
	}
	return binary.LittleEndian.Uint32(b[off:]), nil
}

func (b buf) u16at(off int) (uint16, error) {
	if off < 0 || off > len(b)-2 {
		return 0, fmt.Errorf("%w: offset %d out of range", ErrFormat, off)
	}
	return binary.LittleEndian.Uint16(b[off:]), nil
}

// indirect follows the uoffset stored at off.
func (b buf) indirect(off int) (int, error) {
	u, err := b.u32at(off)
	if err != nil {
		return 0, err
	}
	t := int64(off) + int64(u)
	if t >= int64(len(b)) {
		return 0, fmt.Errorf("%w: offset %d out of range", ErrFormat, t)
	}
	return int(t), nil
}

func (b buf) root() (table, error) {
	pos, err := b.indirect(0)
	if err != nil {
		return table{}, err
	}
	return b.table(pos)
}

// table is a flatbuffer table: its position and its vtable.
type table struct {
	b      buf
	pos    int
	vt     int
	vtSize int
}

func (b buf) table(pos int) (table, error) {
	s, err := b.u32at(pos)
	if err != nil {
		return table{}, err
	}
	vt := int64(pos) - int64(int32(s))
	if vt < 0 || vt > int64(len(b))-4 {
		return table{}, fmt.Errorf("%w: vtable out of range", ErrFormat)
	}
	size, _ := b.u16at(int(vt))
	if size < 4 || size%2 != 0 || vt+int64(size) > int64(len(b)) {
		return table{}, fmt.Errorf("%w: bad vtable size %d", ErrFormat, size)
	}
	return table{b: b, pos: pos, vt: int(vt), vtSize: int(size)}, nil
}

// field returns the absolute position of field slot, or 0 if absent.
func (t table) field(slot int) int {
	o := 4 + 2*slot
	if o+2 > t.vtSize {
		return 0
	}
	v, _ := t.b.u16at(t.vt + o)
	if v == 0 {
		return 0
	}
	return t.pos + int(v)
}

func (t table) u32(slot int) (uint32, error) {
	p := t.field(slot)
	if p == 0 {
		return 0, nil
	}
	return t.b.u32at(p)
}

func (t table) u8(slot int) (byte, error) {
	p := t.field(slot)
	if p == 0 {
		return 0, nil
	}
	if p >= len(t.b) {
		return 0, fmt.Errorf("%w: offset %d out of range", ErrFormat, p)
	}
	return t.b[p], nil
}

func (t table) str(slot int) (string, error) {
	v, err := t.vectorOf(slot, 1)
	if err != nil {
		return "", err
	}
	return string(t.b[v.start : v.start+v.n]), nil
}

func (t table) subtable(slot int) (table, bool, error) {
	p := t.field(slot)
	if p == 0 {
		return table{}, false, nil
	}
	pos, err := t.b.indirect(p)
	if err != nil {
		return table{}, false, err
	}
	st, err := t.b.table(pos)
	return st, err == nil, err
}

// vector is a flatbuffer vector of n elements of size elem.
type vector struct {
	b     buf
	start int
	n     int
	elem  int
}

func (t table) vector(slot int) (vector, error) { return t.vectorOf(slot, 4) }

func (t table) vectorOf(slot, elem int) (vector, error) {
	p := t.field(slot)
	if p == 0 {
		return vector{b: t.b, elem: elem}, nil
	}
	pos, err := t.b.indirect(p)
	if err != nil {
		return vector{}, err
	}
	n, err := t.b.u32at(pos)
	if err != nil {
		return vector{}, err
	}
	start := pos + 4
	if n > maxElems || int64(start)+int64(n)*int64(elem) > int64(len(t.b)) {
		return vector{}, fmt.Errorf("%w: vector of %d out of range", ErrFormat, n)
	}
	return vector{b: t.b, start: start, n: int(n), elem: elem}, nil
}

func (v vector) u32(i int) (uint32, error) { return v.b.u32at(v.start + 4*i) }

func (v vector) i32(i int) (int32, error) {
	u, err := v.u32(i)
	return int32(u), err
}

func (v vector) i64(i int) (int64, error) {
	// zero_point is a vector of longs: 8 bytes each, so re-check the span.
	off := v.start + 8*i
	if off < 0 || off > len(v.b)-8 {
		return 0, fmt.Errorf("%w: offset %d out of range", ErrFormat, off)
	}
	return int64(binary.LittleEndian.Uint64(v.b[off:])), nil
}

func (v vector) table(i int) (table, error) {
	pos, err := v.b.indirect(v.start + 4*i)
	if err != nil {
		return table{}, err
	}
	return v.b.table(pos)
}

func (t table) ints(slot int) ([]int, error) {
	v, err := t.vector(slot)
	if err != nil {
		return nil, err
	}
	if v.n > 16 {
		return nil, fmt.Errorf("%w: %d dimensions", ErrFormat, v.n)
	}
	var out []int
	for i := 0; i < v.n; i++ {
		d, err := v.i32(i)
		if err != nil {
			return nil, err
		}
		out = append(out, int(d))
	}
	return out, nil
}
