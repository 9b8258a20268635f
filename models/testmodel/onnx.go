package testmodel

import (
	"encoding/binary"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// TinyONNX builds a one-node ONNX model in memory: y = x + x, with x and y
// FP32 of shape [1, 4], importing the default operator set at version opset
// (13 runs everywhere; an absurd one exercises the runtime's refusal).
func TinyONNX(opset int64) []byte {
	node := msg(str(1, "x"), str(1, "x"), str(2, "y"), str(3, "add"), str(4, "Add"))
	graph := msg(bytesField(1, node), str(2, "tiny"), bytesField(11, value("x")), bytesField(12, value("y")))
	return model(graph, opset)
}

// TrapONNX builds a model with TinyONNX's signature that fails on some
// inputs, as a model with a bug does on live data: y = x + table[trunc(x)]
// with table = [0, 1, ..., 7], so y = x + x for whole numbers in [0, 8)
// (and for -8 .. -1, which Gather counts from the end: y = x + x + 8), and
// the run fails (ONNX Runtime's Gather refuses the index) for any element at
// or beyond 8 or below -8.
func TrapONNX() []byte {
	table := make([]byte, 0, 32)
	for i := range 8 {
		table = binary.LittleEndian.AppendUint32(table, math.Float32bits(float32(i)))
	}
	// TensorProto: dims, data_type FLOAT, name, raw_data.
	init := msg(varint(1, 8), varint(2, 1), str(8, "table"), bytesField(9, table))
	// Cast's attribute `to` = INT64 (7): AttributeProto name, i, type INT (2).
	to := msg(str(1, "to"), varint(3, 7), varint(20, 2))
	cast := msg(str(1, "x"), str(2, "idx"), str(3, "cast"), str(4, "Cast"), bytesField(5, to))
	gather := msg(str(1, "table"), str(1, "idx"), str(2, "g"), str(3, "gather"), str(4, "Gather"))
	add := msg(str(1, "x"), str(1, "g"), str(2, "y"), str(3, "add"), str(4, "Add"))
	graph := msg(bytesField(1, cast), bytesField(1, gather), bytesField(1, add), str(2, "trap"),
		bytesField(5, init), bytesField(11, value("x")), bytesField(12, value("y")))
	return model(graph, 13)
}

// ScalarONNX builds a model whose output is a scalar: s = ReduceSum(x)
// over every axis, x FP32 [1, 4] (keepdims 0). The agent refuses to serve
// scalar outputs, saying so.
func ScalarONNX() []byte {
	keep := msg(str(1, "keepdims"), varint(3, 0), varint(20, 2)) // AttributeProto: INT 0
	sum := msg(str(1, "x"), str(2, "s"), str(3, "sum"), str(4, "ReduceSum"), bytesField(5, keep))
	tensorType := msg(varint(1, 1), bytesField(2, msg())) // FLOAT, a shape of no dimensions
	scalar := msg(str(1, "s"), bytesField(2, bytesField(1, tensorType)))
	graph := msg(bytesField(1, sum), str(2, "scalar"), bytesField(11, value("x")), bytesField(12, scalar))
	return model(graph, 13)
}

// model wraps a GraphProto in a ModelProto importing the default operator
// set at opset.
func model(graph []byte, opset int64) []byte {
	return msg(
		varint(1, 8), // ir_version
		str(2, "outpost-testmodel"),
		bytesField(7, graph),
		bytesField(8, msg(str(1, ""), varint(2, opset))),
	)
}

// value is a ValueInfoProto: FP32 of shape [1, 4].
func value(name string) []byte {
	shape := msg(dim(1), dim(4))
	tensorType := msg(varint(1, 1), bytesField(2, shape)) // FLOAT, shape
	return msg(str(1, name), bytesField(2, bytesField(1, tensorType)))
}

func dim(v int64) []byte { return bytesField(1, varint(1, v)) }

func msg(fields ...[]byte) []byte {
	var b []byte
	for _, f := range fields {
		b = append(b, f...)
	}
	return b
}

func bytesField(num protowire.Number, v []byte) []byte {
	b := protowire.AppendTag(nil, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func str(num protowire.Number, s string) []byte { return bytesField(num, []byte(s)) }

func varint(num protowire.Number, v int64) []byte {
	b := protowire.AppendTag(nil, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}
