// Package npy writes numpy's .npy files (format version 1.0): a magic
// string, a header naming the dtype and shape as a Python dict literal,
// padded with spaces to a multiple of 64 bytes, then the array's bytes in
// C order. Tensors are named by their Open Inference Protocol datatype
// ("FP32", "UINT8", ...) and their data is little-endian, as on the wire.
package npy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrDatatype: a datatype .npy cannot hold here (BYTES, or unknown).
var ErrDatatype = errors.New("npy: datatype without a numpy dtype")

// descrs maps Open Inference Protocol datatypes to numpy dtype descrs
// (little-endian; '|' for single bytes, whose order does not matter).
var descrs = map[string]string{
	"BOOL": "|b1", "UINT8": "|u1", "INT8": "|i1",
	"UINT16": "<u2", "INT16": "<i2", "FP16": "<f2",
	"UINT32": "<u4", "INT32": "<i4", "FP32": "<f4",
	"UINT64": "<u8", "INT64": "<i8", "FP64": "<f8",
}

// ElemSize returns the byte size of one element of datatype, or 0 if
// .npy cannot hold it.
func ElemSize(datatype string) int {
	d, ok := descrs[datatype]
	if !ok {
		return 0
	}
	n, _ := strconv.Atoi(d[2:])
	return n
}

// Append appends an .npy file holding data, an array of datatype and
// shape, to dst. data must hold exactly the shape's elements.
func Append(dst []byte, datatype string, shape []int64, data []byte) ([]byte, error) {
	descr, ok := descrs[datatype]
	if !ok {
		return dst, fmt.Errorf("%w: %q", ErrDatatype, datatype)
	}
	n := int64(1)
	dims := make([]string, len(shape))
	for i, d := range shape {
		if d < 0 {
			return dst, fmt.Errorf("npy: shape %v: dimension %d is not known", shape, i)
		}
		n *= d
		dims[i] = strconv.FormatInt(d, 10)
	}
	if size := int64(ElemSize(datatype)); n*size != int64(len(data)) {
		return dst, fmt.Errorf("npy: shape %v of %s is %d bytes, the data %d", shape, datatype, n*size, len(data))
	}
	tuple := strings.Join(dims, ", ")
	if len(shape) == 1 {
		tuple += ","
	}
	dict := "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + tuple + "), }"
	// magic (6) + version (2) + header length (2) + dict + '\n', padded
	// with spaces to a multiple of 64.
	total := 10 + len(dict) + 1
	dict += strings.Repeat(" ", (64-total%64)%64) + "\n"
	dst = append(dst, "\x93NUMPY\x01\x00"...)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(dict)))
	dst = append(dst, dict...)
	return append(dst, data...), nil
}
