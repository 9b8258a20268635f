package batch

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// kind says how an item's bytes are to be decoded.
type kind int

const (
	kindJSON kind = iota // an Open Inference Protocol v2 request body
	kindNpy              // a whole .npy file holding one item
	kindRaw              // the single input's bytes, little-endian
	kindRow              // one row of an .npy file, already checked
)

// item is one unit of input, read but not decoded.
type item struct {
	index int
	key   string
	kind  kind
	data  []byte
	err   error // wraps ErrItem: reading it failed, the run goes on
}

// source yields the input's items in a fixed order, so that a resumed run
// sees the same item at the same index. It is used by one goroutine.
type source interface {
	// Total is the number of items.
	Total() int
	// Key is the key of item i, without reading it.
	Key(i int) string
	// Seek makes the next item i. Only forward seeks from the start are
	// needed (resume skips what the output already holds).
	Seek(i int) error
	// Next reads the next item into a buffer it may reuse from buf; io.EOF
	// ends the input. Other errors are fatal.
	Next(buf []byte) (item, error)
	Close() error
}

// openSource picks the source for path: a directory, a .jsonl file or an
// .npy file. maxItem bounds the bytes of one item.
func openSource(path string, maxItem int) (source, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInput, err)
	}
	switch {
	case fi.IsDir():
		return openDir(path, maxItem)
	case strings.HasSuffix(path, ".jsonl") || strings.HasSuffix(path, ".ndjson"):
		return openJSONL(path, maxItem)
	case strings.HasSuffix(path, ".npy"):
		return openNpyRows(path)
	}
	return nil, fmt.Errorf("%w: %s: want a directory, a .jsonl file or an .npy file", ErrInput, path)
}

// dirSource: every regular, non-hidden file of a directory (not recursive),
// sorted by name, is one item; .json holds a v2 request, .npy one tensor,
// .bin or .raw the raw bytes of a single-input model's input.
type dirSource struct {
	dir     string
	names   []string
	next    int
	maxItem int
}

func openDir(dir string, maxItem int) (*dirSource, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInput, err)
	}
	s := &dirSource{dir: dir, maxItem: maxItem}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || !e.Type().IsRegular() {
			continue
		}
		s.names = append(s.names, e.Name())
	}
	slices.Sort(s.names)
	return s, nil
}

func (s *dirSource) Total() int       { return len(s.names) }
func (s *dirSource) Key(i int) string { return s.names[i] }
func (s *dirSource) Close() error     { return nil }

func (s *dirSource) Seek(i int) error {
	if i > len(s.names) {
		return fmt.Errorf("batch: seek to item %d of %d", i, len(s.names))
	}
	s.next = i
	return nil
}

func (s *dirSource) Next(buf []byte) (item, error) {
	if s.next >= len(s.names) {
		return item{}, io.EOF
	}
	name := s.names[s.next]
	it := item{index: s.next, key: name}
	s.next++
	switch strings.ToLower(filepath.Ext(name)) {
	case ".json":
		it.kind = kindJSON
	case ".npy":
		it.kind = kindNpy
	case ".bin", ".raw":
		it.kind = kindRaw
	default:
		it.err = itemErrorf("%s: unsupported file type (want .json, .npy, .bin or .raw)", name)
		return it, nil
	}
	it.data, it.err = readFileInto(filepath.Join(s.dir, name), buf, s.maxItem)
	return it, nil
}

// readFileInto reads a whole file into buf's memory when it fits; a file
// that vanished, cannot be read or is too large is an item error.
func readFileInto(path string, buf []byte, maxItem int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, itemErrorf("%v", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, itemErrorf("%v", err)
	}
	if fi.Size() > int64(maxItem) {
		return nil, itemErrorf("%s: %d bytes, more than the %d-byte item limit", filepath.Base(path), fi.Size(), maxItem)
	}
	n := int(fi.Size())
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, itemErrorf("%s: %v", filepath.Base(path), err)
	}
	return buf, nil
}

// jsonlSource: every non-blank line of a .jsonl file is one item, a v2
// inference request; its key is "line N" (counting from 1).
type jsonlSource struct {
	f       *os.File
	r       *bufio.Reader
	lines   []int // line number of each item (1-based)
	next    int   // next item
	line    int   // lines consumed so far
	maxItem int
}

func openJSONL(path string, maxItem int) (*jsonlSource, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInput, err)
	}
	s := &jsonlSource{f: f, maxItem: maxItem}
	// One pass to know the items (for the progress bar and resume's keys):
	// it reads the file at disk speed and keeps one int per item.
	s.r = bufio.NewReaderSize(f, 1<<16)
	for {
		blank, err := s.skipLine()
		if err == io.EOF {
			break
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%w: %v", ErrInput, err)
		}
		if !blank {
			s.lines = append(s.lines, s.line)
		}
	}
	if err := s.Seek(0); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// skipLine consumes one line and says whether it was blank.
func (s *jsonlSource) skipLine() (blank bool, err error) {
	blank = true
	got := false
	for {
		chunk, err := s.r.ReadSlice('\n')
		if len(chunk) > 0 {
			got = true
			if len(bytes.TrimSpace(chunk)) > 0 {
				blank = false
			}
		}
		switch {
		case err == nil:
			s.line++
			return blank, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && got:
			s.line++
			return blank, nil
		default:
			return blank, err
		}
	}
}

func (s *jsonlSource) Total() int       { return len(s.lines) }
func (s *jsonlSource) Key(i int) string { return "line " + strconv.Itoa(s.lines[i]) }
func (s *jsonlSource) Close() error     { return s.f.Close() }

func (s *jsonlSource) Seek(i int) error {
	if i > len(s.lines) {
		return fmt.Errorf("batch: seek to item %d of %d", i, len(s.lines))
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("batch: %w", err)
	}
	s.r.Reset(s.f)
	s.next, s.line = 0, 0
	for s.next < i {
		want := s.lines[s.next]
		for s.line < want {
			if _, err := s.skipLine(); err != nil {
				return fmt.Errorf("batch: seek: %w", err)
			}
		}
		s.next++
	}
	return nil
}

func (s *jsonlSource) Next(buf []byte) (item, error) {
	for {
		if s.next >= len(s.lines) {
			return item{}, io.EOF
		}
		line, tooLong, err := s.readLine(buf[:0])
		if err != nil {
			return item{}, fmt.Errorf("batch: read: %w", err)
		}
		if s.line != s.lines[s.next] {
			continue // a blank line
		}
		it := item{index: s.next, key: s.Key(s.next), kind: kindJSON, data: line}
		s.next++
		if tooLong {
			it.data, it.err = nil, itemErrorf("line longer than the %d-byte item limit", s.maxItem)
		}
		return it, nil
	}
}

// readLine appends the next line (without its newline) to dst, or reports
// it too long after skipping it.
func (s *jsonlSource) readLine(dst []byte) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := s.r.ReadSlice('\n')
		if !tooLong {
			if len(dst)+len(chunk) > s.maxItem+1 {
				tooLong, dst = true, dst[:0]
			} else {
				dst = append(dst, chunk...)
			}
		}
		switch {
		case err == nil:
			s.line++
			return bytes.TrimRight(dst, "\r\n"), tooLong, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && (len(chunk) > 0 || len(dst) > 0 || tooLong):
			s.line++
			return dst, tooLong, nil
		default:
			return nil, false, err
		}
	}
}

// npyRows: an .npy file whose first dimension counts the items; each row is
// one item of the model's single input. Its key is "row N" (from 0).
type npyRows struct {
	f       *os.File
	hdr     npyHeader
	rows    int
	rowSize int
	next    int
}

func openNpyRows(path string) (*npyRows, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInput, err)
	}
	h, err := readNpyHeader(bufio.NewReader(f))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrInput, path, err)
	}
	if len(h.Shape) == 0 {
		f.Close()
		return nil, fmt.Errorf("%w: %s: a scalar has no rows; the first dimension counts the items", ErrInput, path)
	}
	rowSize, _ := tensor.Info{DataType: h.DataType, Shape: h.Shape[1:]}.ByteSize()
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %v", ErrInput, err)
	}
	if need := h.DataOffset + int64(rowSize)*int64(h.Shape[0]); fi.Size() < need {
		f.Close()
		return nil, fmt.Errorf("%w: %s: %d bytes, its header needs %d", ErrInput, path, fi.Size(), need)
	}
	return &npyRows{f: f, hdr: h, rows: h.Shape[0], rowSize: rowSize}, nil
}

func (s *npyRows) Total() int       { return s.rows }
func (s *npyRows) Key(i int) string { return "row " + strconv.Itoa(i) }
func (s *npyRows) Close() error     { return s.f.Close() }

func (s *npyRows) Seek(i int) error {
	if i > s.rows {
		return fmt.Errorf("batch: seek to item %d of %d", i, s.rows)
	}
	s.next = i
	return nil
}

func (s *npyRows) Next(buf []byte) (item, error) {
	if s.next >= s.rows {
		return item{}, io.EOF
	}
	if cap(buf) < s.rowSize {
		buf = make([]byte, s.rowSize)
	}
	buf = buf[:s.rowSize]
	off := s.hdr.DataOffset + int64(s.next)*int64(s.rowSize)
	if _, err := s.f.ReadAt(buf, off); err != nil {
		return item{}, fmt.Errorf("batch: read row %d: %w", s.next, err)
	}
	it := item{index: s.next, key: s.Key(s.next), kind: kindRow, data: buf}
	s.next++
	return it, nil
}
