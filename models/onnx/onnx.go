// Package onnx reads what Outpost needs of an ONNX model (its IR version,
// operator set imports and the graph's input and output signature) straight
// from the ModelProto bytes, in pure Go, so that tools without cgo (the fleet
// when it signs a bundle, the agent's format detection) can describe a model.
// It walks the protobuf wire format itself and skips everything else, so a
// large model's weights are never decoded. Input is untrusted: every length is
// checked against the buffer.
package onnx

import (
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/outpost-edge/outpost/models/manifest"
)

// ErrFormat wraps every reason a buffer is not a readable ONNX model.
var ErrFormat = errors.New("onnx: not a valid model")

// Model is what the reader extracts.
type Model struct {
	// IRVersion is the ONNX IR version the file was written with.
	IRVersion int64
	// Opsets maps an operator set domain ("" is the default ai.onnx domain)
	// to the version the model imports.
	Opsets map[string]int64
	// Producer is the producer name and version, when the file says.
	Producer string
	Inputs   []Tensor
	Outputs  []Tensor
}

// Tensor is one graph input or output.
type Tensor struct {
	Name string
	// DataType is the Open Inference Protocol spelling ("FP32", "INT64"), or
	// "ONNX_<n>" for element types the agent cannot serve.
	DataType string
	// Shape has one entry per dimension, -1 where the model leaves it open.
	Shape []int
	// DimNames names the open dimensions (ONNX dim_param), "" elsewhere.
	DimNames []string
}

// Opset is the version of the default (ai.onnx) operator set, 0 if absent.
func (m *Model) Opset() int64 { return m.Opsets[""] }

// ElemTypes maps ONNX TensorProto.DataType values to protocol names.
var ElemTypes = map[int64]string{
	1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32",
	7: "INT64", 8: "BYTES", 9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32",
	13: "UINT64",
}

// Field numbers of onnx.proto used here.
const (
	modelIRVersion       = 1
	modelProducerName    = 2
	modelProducerVersion = 3
	modelGraph           = 7
	modelOpsetImport     = 8

	opsetDomain  = 1
	opsetVersion = 2

	graphInitializer = 5
	graphInput       = 11
	graphOutput      = 12

	tensorProtoName = 8

	valueName = 1
	valueType = 2

	typeTensor  = 1
	tensorElem  = 1
	tensorShape = 2
	shapeDim    = 1
	dimValue    = 1
	dimParam    = 2
	maxTensors  = 4096
	maxDims     = 64
	maxOpsets   = 256
)

// Read extracts the signature from a .onnx file's bytes. The graph's inputs
// exclude initializers (older IR versions list weights as inputs too).
func Read(b []byte) (*Model, error) {
	m := &Model{Opsets: map[string]int64{}}
	var graph []byte
	var producer, producerVersion string
	sawGraph := false
	err := fields(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == modelIRVersion && typ == protowire.VarintType:
			m.IRVersion = int64(n)
		case num == modelProducerName && typ == protowire.BytesType:
			producer = string(v)
		case num == modelProducerVersion && typ == protowire.BytesType:
			producerVersion = string(v)
		case num == modelGraph && typ == protowire.BytesType:
			graph, sawGraph = v, true
		case num == modelOpsetImport && typ == protowire.BytesType:
			if len(m.Opsets) >= maxOpsets {
				return errors.New("too many opset imports")
			}
			var domain string
			var version int64
			if err := fields(v, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
				switch {
				case num == opsetDomain && typ == protowire.BytesType:
					domain = string(v)
				case num == opsetVersion && typ == protowire.VarintType:
					version = int64(n)
				}
				return nil
			}); err != nil {
				return fmt.Errorf("opset import: %w", err)
			}
			if domain == "ai.onnx" {
				domain = ""
			}
			m.Opsets[domain] = version
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if !sawGraph {
		return nil, fmt.Errorf("%w: no graph", ErrFormat)
	}
	if m.IRVersion <= 0 {
		return nil, fmt.Errorf("%w: no IR version", ErrFormat)
	}
	m.Producer = producer
	if producerVersion != "" {
		m.Producer += " " + producerVersion
	}
	var inputs, outputs []Tensor
	inits := map[string]bool{}
	err = fields(graph, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case graphInitializer:
			return fields(v, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
				if num == tensorProtoName && typ == protowire.BytesType {
					inits[string(v)] = true
				}
				return nil
			})
		case graphInput, graphOutput:
			if len(inputs)+len(outputs) >= maxTensors {
				return errors.New("too many inputs and outputs")
			}
			t, err := valueInfo(v)
			if err != nil {
				return err
			}
			if num == graphInput {
				inputs = append(inputs, t)
			} else {
				outputs = append(outputs, t)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: graph: %v", ErrFormat, err)
	}
	for _, t := range inputs {
		if !inits[t.Name] {
			m.Inputs = append(m.Inputs, t)
		}
	}
	m.Outputs = outputs
	if len(m.Outputs) == 0 {
		return nil, fmt.Errorf("%w: graph has no outputs", ErrFormat)
	}
	return m, nil
}

func valueInfo(b []byte) (Tensor, error) {
	t := Tensor{}
	var typ []byte
	err := fields(b, func(num protowire.Number, wt protowire.Type, v []byte, _ uint64) error {
		switch {
		case num == valueName && wt == protowire.BytesType:
			t.Name = string(v)
		case num == valueType && wt == protowire.BytesType:
			typ = v
		}
		return nil
	})
	if err != nil {
		return t, fmt.Errorf("value info: %w", err)
	}
	var tt []byte
	if err := fields(typ, func(num protowire.Number, wt protowire.Type, v []byte, _ uint64) error {
		if num == typeTensor && wt == protowire.BytesType {
			tt = v
		}
		return nil
	}); err != nil {
		return t, fmt.Errorf("value %q type: %w", t.Name, err)
	}
	if tt == nil {
		return t, fmt.Errorf("value %q is not a tensor (sequences, maps and optionals are not served)", t.Name)
	}
	var elem int64
	var shape []byte
	hasShape := false
	if err := fields(tt, func(num protowire.Number, wt protowire.Type, v []byte, n uint64) error {
		switch {
		case num == tensorElem && wt == protowire.VarintType:
			elem = int64(n)
		case num == tensorShape && wt == protowire.BytesType:
			shape, hasShape = v, true
		}
		return nil
	}); err != nil {
		return t, fmt.Errorf("value %q tensor type: %w", t.Name, err)
	}
	if dt, ok := ElemTypes[elem]; ok {
		t.DataType = dt
	} else {
		t.DataType = fmt.Sprintf("ONNX_%d", elem)
	}
	if !hasShape {
		// Rank unknown: describe as one open dimension.
		t.Shape, t.DimNames = []int{-1}, []string{""}
		return t, nil
	}
	t.Shape = []int{}
	t.DimNames = []string{}
	err = fields(shape, func(num protowire.Number, wt protowire.Type, v []byte, _ uint64) error {
		if num != shapeDim || wt != protowire.BytesType {
			return nil
		}
		if len(t.Shape) >= maxDims {
			return errors.New("too many dimensions")
		}
		d, name := -1, ""
		if err := fields(v, func(num protowire.Number, wt protowire.Type, v []byte, n uint64) error {
			switch {
			case num == dimValue && wt == protowire.VarintType:
				if int64(n) < 0 || n > math.MaxInt32 {
					return fmt.Errorf("dimension %d out of range", int64(n))
				}
				d = int(n)
			case num == dimParam && wt == protowire.BytesType:
				name = string(v)
			}
			return nil
		}); err != nil {
			return err
		}
		if d >= 0 {
			name = ""
		}
		t.Shape = append(t.Shape, d)
		t.DimNames = append(t.DimNames, name)
		return nil
	})
	if err != nil {
		return t, fmt.Errorf("value %q shape: %w", t.Name, err)
	}
	return t, nil
}

// fields calls fn for each field of one protobuf message: v is the payload of
// a length-delimited field, n the value of a varint or fixed field.
func fields(b []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error) error {
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return fmt.Errorf("bad tag: %v", protowire.ParseError(l))
		}
		b = b[l:]
		var v []byte
		var n uint64
		switch typ {
		case protowire.VarintType:
			n, l = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var x uint32
			x, l = protowire.ConsumeFixed32(b)
			n = uint64(x)
		case protowire.Fixed64Type:
			n, l = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			v, l = protowire.ConsumeBytes(b)
		default:
			// Groups are not used by onnx.proto.
			return fmt.Errorf("field %d: unexpected wire type %d", num, typ)
		}
		if l < 0 {
			return fmt.Errorf("field %d: %v", num, protowire.ParseError(l))
		}
		b = b[l:]
		if err := fn(num, typ, v, n); err != nil {
			return err
		}
	}
	return nil
}

// Manifest converts the signature to the manifest's tensor descriptions.
func (m *Model) Manifest() (inputs, outputs []manifest.Tensor) {
	conv := func(ts []Tensor) []manifest.Tensor {
		out := make([]manifest.Tensor, len(ts))
		for i, t := range ts {
			out[i] = manifest.Tensor{Name: t.Name, DataType: t.DataType, Shape: append([]int(nil), t.Shape...)}
		}
		return out
	}
	return conv(m.Inputs), conv(m.Outputs)
}
