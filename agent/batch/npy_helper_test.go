package batch

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// appendNpy appends an .npy (version 1) file holding data of the given type
// and shape to dst. Tests and benchmarks use it to write inputs.
func appendNpy(dst []byte, dt tensor.DataType, shape []int, data []byte) []byte {
	descr := ""
	for k, v := range npyTypes {
		if v == dt {
			descr = "<" + k
			if dt.Size() == 1 {
				descr = "|" + k
			}
		}
	}
	dims := ""
	for i, d := range shape {
		if i > 0 {
			dims += ", "
		}
		dims += strconv.Itoa(d)
	}
	if len(shape) == 1 {
		dims += ","
	}
	dict := fmt.Sprintf("{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", descr, dims)
	// numpy pads the header with spaces to a multiple of 64 bytes, ending in \n.
	total := 10 + len(dict) + 1
	pad := (64 - total%64) % 64
	dict += string(bytes.Repeat([]byte{' '}, pad)) + "\n"
	dst = append(dst, "\x93NUMPY\x01\x00"...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(dict)))
	dst = append(dst, dict...)
	return append(dst, data...)
}
