package testmodel

import "google.golang.org/protobuf/encoding/protowire"

// TinyONNX builds a one-node ONNX model in memory: y = x + x, with x and y
// FP32 of shape [1, 4], importing the default operator set at version opset
// (13 runs everywhere; an absurd one exercises the runtime's refusal).
func TinyONNX(opset int64) []byte {
	msg := func(fields ...[]byte) []byte {
		var b []byte
		for _, f := range fields {
			b = append(b, f...)
		}
		return b
	}
	bytesField := func(num protowire.Number, v []byte) []byte {
		b := protowire.AppendTag(nil, num, protowire.BytesType)
		return protowire.AppendBytes(b, v)
	}
	str := func(num protowire.Number, s string) []byte { return bytesField(num, []byte(s)) }
	varint := func(num protowire.Number, v int64) []byte {
		b := protowire.AppendTag(nil, num, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(v))
	}
	dim := func(v int64) []byte { return bytesField(1, varint(1, v)) }
	value := func(name string) []byte {
		shape := msg(dim(1), dim(4))
		tensorType := msg(varint(1, 1), bytesField(2, shape)) // FLOAT, shape
		return msg(str(1, name), bytesField(2, bytesField(1, tensorType)))
	}
	node := msg(str(1, "x"), str(1, "x"), str(2, "y"), str(3, "add"), str(4, "Add"))
	graph := msg(bytesField(1, node), str(2, "tiny"), bytesField(11, value("x")), bytesField(12, value("y")))
	return msg(
		varint(1, 8), // ir_version
		str(2, "outpost-testmodel"),
		bytesField(7, graph),
		bytesField(8, msg(str(1, ""), varint(2, opset))),
	)
}
