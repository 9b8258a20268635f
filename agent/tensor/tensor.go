// Package tensor describes model tensors in terms every part of the agent
// shares: datatypes named as the Open Inference Protocol names them, shapes and
// quantization. It has no cgo, so the API, the updater and their tests build
// with CGO_ENABLED=0.
package tensor

import (
	"errors"
	"fmt"
	"strings"
)

// DataType is a tensor element type, spelled as in the Open Inference Protocol
// v2 ("FP32", "UINT8", ...).
type DataType string

// The datatypes a TFLite model can declare. BYTES holds TFLite strings.
const (
	Invalid DataType = ""
	Bool    DataType = "BOOL"
	Uint8   DataType = "UINT8"
	Uint16  DataType = "UINT16"
	Uint32  DataType = "UINT32"
	Uint64  DataType = "UINT64"
	Int8    DataType = "INT8"
	Int16   DataType = "INT16"
	Int32   DataType = "INT32"
	Int64   DataType = "INT64"
	FP16    DataType = "FP16"
	FP32    DataType = "FP32"
	FP64    DataType = "FP64"
	Bytes   DataType = "BYTES"
)

var elemSize = map[DataType]int{
	Bool: 1, Uint8: 1, Int8: 1,
	Uint16: 2, Int16: 2, FP16: 2,
	Uint32: 4, Int32: 4, FP32: 4,
	Uint64: 8, Int64: 8, FP64: 8,
}

// Size is the size of one element in bytes, or 0 for BYTES and unknown types,
// whose elements have no fixed size.
func (d DataType) Size() int { return elemSize[d] }

// Valid reports whether d is one of the datatypes above.
func (d DataType) Valid() bool { return d == Bytes || elemSize[d] > 0 }

// ParseDataType accepts a datatype name in any letter case.
func ParseDataType(s string) (DataType, error) {
	d := DataType(strings.ToUpper(s))
	if !d.Valid() {
		return Invalid, fmt.Errorf("tensor: unknown datatype %q", s)
	}
	return d, nil
}

// Quantization holds the affine parameters of a quantized tensor:
// real = Scale * (q - ZeroPoint). Scale is 0 for tensors that are not quantized.
type Quantization struct {
	Scale     float32 `json:"scale"`
	ZeroPoint int32   `json:"zero_point"`
}

// Info describes one input or output tensor of a model.
type Info struct {
	Name     string   `json:"name"`
	DataType DataType `json:"datatype"`
	// Shape has one entry per dimension; -1 marks a dimension the model
	// leaves open (TFLite's shape signature), none for a scalar.
	Shape        []int         `json:"shape"`
	Quantization *Quantization `json:"quantization,omitempty"`
}

// ErrShape reports a shape that cannot describe a tensor.
var ErrShape = errors.New("tensor: invalid shape")

// NumElements is the number of elements of a tensor of the given shape. It
// rejects negative dimensions and counts that overflow.
func NumElements(shape []int) (int, error) {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: dimension %d in %v", ErrShape, d, shape)
		}
		if d != 0 && n > (1<<53)/d {
			return 0, fmt.Errorf("%w: %v has too many elements", ErrShape, shape)
		}
		n *= d
	}
	return n, nil
}

// ByteSize is the size in bytes of a dense tensor of this info's type and
// shape; it fails for BYTES, open dimensions and overflow.
func (i Info) ByteSize() (int, error) {
	n, err := NumElements(i.Shape)
	if err != nil {
		return 0, err
	}
	s := i.DataType.Size()
	if s == 0 {
		return 0, fmt.Errorf("tensor: %s has no fixed element size", i.DataType)
	}
	return n * s, nil
}

// SameShape reports whether got matches want, where -1 in want matches any size.
func SameShape(want, got []int) bool {
	if len(want) != len(got) {
		return false
	}
	for i := range want {
		if want[i] != -1 && want[i] != got[i] {
			return false
		}
	}
	return true
}

// Tensor is a named tensor with its data, as requests carry it and responses
// return it. Data holds the elements in little-endian byte order, packed
// (BOOL one byte per element, FP16 as IEEE half); BYTES tensors use Strings
// instead, one entry per element.
type Tensor struct {
	Name     string
	DataType DataType
	Shape    []int
	Data     []byte
	Strings  [][]byte
}
