package batch

import (
	"bytes"
	"encoding/binary"
	"io"
	"strconv"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// npyHeader is what an .npy file's header says about the array after it.
type npyHeader struct {
	DataType tensor.DataType
	Shape    []int
	// DataOffset is where the array's bytes start in the file.
	DataOffset int64
}

// maxNpyHeader bounds the header dictionary we read (numpy itself writes a
// few hundred bytes; version 2 allows 4 GB, which we refuse).
const maxNpyHeader = 1 << 16

// npyTypes maps the descr of a little-endian (or byte-sized) numpy dtype to
// ours. '=' is native order, which is little-endian on every board we run on.
var npyTypes = map[string]tensor.DataType{
	"b1": tensor.Bool, "u1": tensor.Uint8, "i1": tensor.Int8,
	"u2": tensor.Uint16, "i2": tensor.Int16, "f2": tensor.FP16,
	"u4": tensor.Uint32, "i4": tensor.Int32, "f4": tensor.FP32,
	"u8": tensor.Uint64, "i8": tensor.Int64, "f8": tensor.FP64,
}

// readNpyHeader parses the header of an .npy file (format versions 1 to 3)
// from r. Errors wrap ErrItem: they say what is wrong with the file.
func readNpyHeader(r io.Reader) (npyHeader, error) {
	var pre [10]byte
	if _, err := io.ReadFull(r, pre[:8]); err != nil {
		return npyHeader{}, itemErrorf("npy: short file: %v", err)
	}
	if string(pre[:6]) != "\x93NUMPY" {
		return npyHeader{}, itemErrorf("npy: not an .npy file (bad magic)")
	}
	var n, off int
	switch pre[6] {
	case 1:
		if _, err := io.ReadFull(r, pre[8:10]); err != nil {
			return npyHeader{}, itemErrorf("npy: short header: %v", err)
		}
		n, off = int(binary.LittleEndian.Uint16(pre[8:10])), 10
	case 2, 3:
		var l [4]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return npyHeader{}, itemErrorf("npy: short header: %v", err)
		}
		v := binary.LittleEndian.Uint32(l[:])
		if v > maxNpyHeader {
			return npyHeader{}, itemErrorf("npy: header of %d bytes is too long", v)
		}
		n, off = int(v), 12
	default:
		return npyHeader{}, itemErrorf("npy: unsupported format version %d.%d", pre[6], pre[7])
	}
	dict := make([]byte, n)
	if _, err := io.ReadFull(r, dict); err != nil {
		return npyHeader{}, itemErrorf("npy: short header: %v", err)
	}
	h, err := parseNpyDict(dict)
	if err != nil {
		return npyHeader{}, err
	}
	h.DataOffset = int64(off + n)
	return h, nil
}

// parseNpyDict parses the Python dict literal of an .npy header, such as
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }.
func parseNpyDict(b []byte) (npyHeader, error) {
	p := &pyParser{b: bytes.TrimRight(b, " \n\x00")}
	var h npyHeader
	var sawDescr, sawShape, sawOrder, fortran bool
	if err := p.expect('{'); err != nil {
		return h, err
	}
	for {
		p.space()
		if p.peek() == '}' {
			p.pos++
			break
		}
		key, err := p.str()
		if err != nil {
			return h, err
		}
		if err := p.expect(':'); err != nil {
			return h, err
		}
		switch key {
		case "descr":
			d, err := p.str()
			if err != nil {
				return h, err
			}
			if h.DataType, err = npyDataType(d); err != nil {
				return h, err
			}
			sawDescr = true
		case "fortran_order":
			v, err := p.boolean()
			if err != nil {
				return h, err
			}
			sawOrder, fortran = true, v
		case "shape":
			if h.Shape, err = p.tuple(); err != nil {
				return h, err
			}
			sawShape = true
		default:
			return h, itemErrorf("npy: unknown header key %q", key)
		}
		p.space()
		if p.peek() == ',' {
			p.pos++
			continue
		}
		if err := p.expect('}'); err != nil {
			return h, err
		}
		break
	}
	p.space()
	if p.pos != len(p.b) {
		return h, itemErrorf("npy: trailing bytes after the header dict")
	}
	if !sawDescr || !sawShape || !sawOrder {
		return h, itemErrorf("npy: header lacks descr, fortran_order or shape")
	}
	// Fortran order is the same as C order for up to one dimension.
	if fortran && len(h.Shape) > 1 {
		return h, itemErrorf("npy: fortran_order arrays are not supported")
	}
	if _, err := (tensor.Info{DataType: h.DataType, Shape: h.Shape}).ByteSize(); err != nil {
		return h, itemErrorf("npy: %v", err)
	}
	return h, nil
}

func npyDataType(d string) (tensor.DataType, error) {
	if d == "|b1" || d == "|u1" || d == "|i1" {
		return npyTypes[d[1:]], nil
	}
	if len(d) == 3 && (d[0] == '<' || d[0] == '=') {
		if dt, ok := npyTypes[d[1:]]; ok && dt.Size() > 1 {
			return dt, nil
		}
	}
	if len(d) == 3 && d[0] == '>' {
		return tensor.Invalid, itemErrorf("npy: big-endian dtype %q is not supported", d)
	}
	return tensor.Invalid, itemErrorf("npy: unsupported dtype %q", d)
}

// pyParser reads the small subset of Python literals an .npy header uses.
type pyParser struct {
	b   []byte
	pos int
}

func (p *pyParser) space() {
	for p.pos < len(p.b) && (p.b[p.pos] == ' ' || p.b[p.pos] == '\t' || p.b[p.pos] == '\n') {
		p.pos++
	}
}

func (p *pyParser) peek() byte {
	if p.pos < len(p.b) {
		return p.b[p.pos]
	}
	return 0
}

func (p *pyParser) expect(c byte) error {
	p.space()
	if p.peek() != c {
		return itemErrorf("npy: bad header: expected %q at byte %d", c, p.pos)
	}
	p.pos++
	return nil
}

func (p *pyParser) str() (string, error) {
	p.space()
	q := p.peek()
	if q != '\'' && q != '"' {
		return "", itemErrorf("npy: bad header: expected a string at byte %d", p.pos)
	}
	end := bytes.IndexByte(p.b[p.pos+1:], q)
	if end < 0 {
		return "", itemErrorf("npy: bad header: unterminated string")
	}
	s := string(p.b[p.pos+1 : p.pos+1+end])
	p.pos += end + 2
	return s, nil
}

func (p *pyParser) boolean() (bool, error) {
	p.space()
	switch {
	case bytes.HasPrefix(p.b[p.pos:], []byte("True")):
		p.pos += 4
		return true, nil
	case bytes.HasPrefix(p.b[p.pos:], []byte("False")):
		p.pos += 5
		return false, nil
	}
	return false, itemErrorf("npy: bad header: expected True or False at byte %d", p.pos)
}

// tuple reads a tuple of non-negative integers: (), (3,), (2, 3).
func (p *pyParser) tuple() ([]int, error) {
	if err := p.expect('('); err != nil {
		return nil, err
	}
	shape := []int{}
	for {
		p.space()
		if p.peek() == ')' {
			p.pos++
			return shape, nil
		}
		start := p.pos
		for p.pos < len(p.b) && p.b[p.pos] >= '0' && p.b[p.pos] <= '9' {
			p.pos++
		}
		// Python 2 numpy wrote long dimensions as 3L.
		digits := p.b[start:p.pos]
		if p.peek() == 'L' {
			p.pos++
		}
		d, err := strconv.Atoi(string(digits))
		if err != nil || len(digits) > 12 {
			return nil, itemErrorf("npy: bad header: bad dimension at byte %d", start)
		}
		if len(shape) >= 32 {
			return nil, itemErrorf("npy: bad header: more than 32 dimensions")
		}
		shape = append(shape, d)
		p.space()
		switch p.peek() {
		case ',':
			p.pos++
		case ')':
		default:
			return nil, itemErrorf("npy: bad header: expected , or ) at byte %d", p.pos)
		}
	}
}
