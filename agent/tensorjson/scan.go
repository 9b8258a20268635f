// Package tensorjson reads and writes tensor elements as JSON, fast and
// strictly: numbers are range-checked for the tensor's datatype and parsed
// straight into the packed little-endian bytes of a tensor.Tensor. The Open
// Inference Protocol codec (agent/oip) and the TF Serving codec
// (agent/tfserving) share it, so both accept and produce the same values.
//
// It also carries the small JSON scanner those codecs build their request
// parsers on: it works on a byte slice, never allocates for numbers or
// unescaped strings, limits nesting depth and reports errors with the byte
// offset where they were found.
//
// Errors from this package do not name a package: callers embed them in
// their own messages (which name the tensor) and keep them reachable with
// errors.Is against ErrSyntax and ErrValue.
package tensorjson

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

var (
	// ErrSyntax marks input that is not well-formed JSON, or nests deeper
	// than MaxDepth.
	ErrSyntax = errors.New("malformed JSON")
	// ErrValue marks well-formed JSON holding a value the tensor cannot
	// take: the wrong kind, out of range for the datatype, or shaped wrongly.
	ErrValue = errors.New("bad tensor value")
)

// MaxDepth bounds how deeply arrays and objects may nest. Tensors of rank
// eight inside a request object need about a dozen levels.
const MaxDepth = 64

// SyntaxError says where the JSON went wrong; errors.Is(err, ErrSyntax) holds.
type SyntaxError struct {
	Offset int // byte offset into the scanned input
	Msg    string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("malformed JSON at offset %d: %s", e.Offset, e.Msg)
}

func (e *SyntaxError) Is(target error) bool { return target == ErrSyntax }

// valueError is a message matching ErrValue.
type valueError struct{ msg string }

func (e *valueError) Error() string        { return e.msg }
func (e *valueError) Is(target error) bool { return target == ErrValue }

func valueErrorf(format string, args ...any) error {
	return &valueError{msg: fmt.Sprintf(format, args...)}
}

// Scanner reads JSON values from a byte slice. The zero value is not usable;
// call Reset. Values returned as []byte alias the input unless they had to be
// unescaped.
type Scanner struct {
	buf   []byte
	pos   int
	base  int // added to offsets in errors, for scanners over a sub-slice
	depth int
}

// NewScanner returns a Scanner over b.
func NewScanner(b []byte) *Scanner {
	s := &Scanner{}
	s.Reset(b, 0)
	return s
}

// Reset points s at b; base is b's offset within the larger input, so that
// error offsets stay meaningful.
func (s *Scanner) Reset(b []byte, base int) {
	*s = Scanner{buf: b, base: base}
}

// Offset is the position of the next unread byte, relative to the input
// given to Reset plus its base.
func (s *Scanner) Offset() int { return s.base + s.pos }

// Errorf builds a SyntaxError at the current position.
func (s *Scanner) Errorf(format string, args ...any) error {
	return &SyntaxError{Offset: s.base + s.pos, Msg: fmt.Sprintf(format, args...)}
}

func (s *Scanner) errAt(pos int, format string, args ...any) error {
	return &SyntaxError{Offset: s.base + pos, Msg: fmt.Sprintf(format, args...)}
}

func (s *Scanner) skipSpace() {
	for s.pos < len(s.buf) {
		switch s.buf[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// Peek skips whitespace and returns the next byte, or 0 at the end.
func (s *Scanner) Peek() byte {
	s.skipSpace()
	if s.pos < len(s.buf) {
		return s.buf[s.pos]
	}
	return 0
}

// End checks that nothing but whitespace is left.
func (s *Scanner) End() error {
	if s.Peek() != 0 || s.pos < len(s.buf) {
		return s.Errorf("unexpected %s after the top-level value", s.describe())
	}
	return nil
}

func (s *Scanner) describe() string {
	if s.pos >= len(s.buf) {
		return "end of input"
	}
	c := s.buf[s.pos]
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return fmt.Sprintf("byte 0x%02x", c)
}

// Unexpected reports a syntax error at the next byte, for callers that
// found something other than the value they wanted.
func (s *Scanner) Unexpected() error {
	s.skipSpace()
	return s.Errorf("expected value, found %s", s.describe())
}

// Kind names the JSON kind of the next value for error messages.
func (s *Scanner) Kind() string {
	switch s.Peek() {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return "number"
	}
	return "invalid value"
}

func (s *Scanner) enter() error {
	s.depth++
	if s.depth > MaxDepth {
		return s.Errorf("nested deeper than %d levels", MaxDepth)
	}
	return nil
}

// Object reads an object, calling member for each key; member must consume
// the value (with Skip if it does not want it). The key aliases the input
// when it has no escapes.
func (s *Scanner) Object(member func(key []byte) error) error {
	if s.Peek() != '{' {
		return s.Errorf("expected object, found %s", s.describe())
	}
	if err := s.enter(); err != nil {
		return err
	}
	s.pos++
	if s.Peek() == '}' {
		s.pos++
		s.depth--
		return nil
	}
	for {
		if s.Peek() != '"' {
			return s.Errorf("expected object key, found %s", s.describe())
		}
		key, err := s.String()
		if err != nil {
			return err
		}
		if s.Peek() != ':' {
			return s.Errorf("expected ':' after object key, found %s", s.describe())
		}
		s.pos++
		if err := member(key); err != nil {
			return err
		}
		switch s.Peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			s.depth--
			return nil
		default:
			return s.Errorf("expected ',' or '}' in object, found %s", s.describe())
		}
	}
}

// Array reads an array, calling elem with the index of each element; elem
// must consume the element.
func (s *Scanner) Array(elem func(i int) error) error {
	if s.Peek() != '[' {
		return s.Errorf("expected array, found %s", s.describe())
	}
	if err := s.enter(); err != nil {
		return err
	}
	s.pos++
	if s.Peek() == ']' {
		s.pos++
		s.depth--
		return nil
	}
	for i := 0; ; i++ {
		if err := elem(i); err != nil {
			return err
		}
		switch s.Peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			s.depth--
			return nil
		default:
			return s.Errorf("expected ',' or ']' in array, found %s", s.describe())
		}
	}
}

// Skip consumes one value of any kind, checking its syntax.
func (s *Scanner) Skip() error {
	switch s.Peek() {
	case '{':
		return s.Object(func([]byte) error { return s.Skip() })
	case '[':
		return s.Array(func(int) error { return s.Skip() })
	case '"':
		_, err := s.String()
		return err
	case 't', 'f':
		_, err := s.Bool()
		return err
	case 'n':
		return s.Null()
	default:
		_, err := s.Number()
		return err
	}
}

// Null consumes a null.
func (s *Scanner) Null() error {
	s.skipSpace()
	if !s.literal("null") {
		return s.Errorf("expected null, found %s", s.describe())
	}
	return nil
}

func (s *Scanner) literal(lit string) bool {
	if len(s.buf)-s.pos >= len(lit) && string(s.buf[s.pos:s.pos+len(lit)]) == lit {
		s.pos += len(lit)
		return true
	}
	return false
}

// Bool consumes true or false.
func (s *Scanner) Bool() (bool, error) {
	s.skipSpace()
	if s.literal("true") {
		return true, nil
	}
	if s.literal("false") {
		return false, nil
	}
	return false, s.Errorf("expected true or false, found %s", s.describe())
}

// Number consumes a number and returns its text, checked against JSON's
// grammar (strconv alone would also take "Inf", hex and underscores).
func (s *Scanner) Number() ([]byte, error) {
	s.skipSpace()
	start := s.pos
	b := s.buf
	i := s.pos
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		s.pos = i
		return nil, s.Errorf("expected value, found %s", s.describe())
	}
	if i < len(b) && b[i] == '.' {
		i++
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			s.pos = i
			return nil, s.Errorf("expected digit after decimal point, found %s", s.describe())
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		d := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == d {
			s.pos = i
			return nil, s.Errorf("expected digit in exponent, found %s", s.describe())
		}
	}
	s.pos = i
	return b[start:i], nil
}

// Int consumes an integer number (no fraction or exponent).
func (s *Scanner) Int() (int64, error) {
	start := s.Offset()
	num, err := s.Number()
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseInt(unsafeString(num), 10, 64)
	if err != nil {
		return 0, &SyntaxError{Offset: start, Msg: fmt.Sprintf("%s is not a 64-bit integer", num)}
	}
	return v, nil
}

// String consumes a string and returns its unescaped bytes. They alias the
// input when the string has no escapes; otherwise they are a new slice.
// Invalid UTF-8 is kept as is; invalid escapes are errors.
func (s *Scanner) String() ([]byte, error) {
	if s.Peek() != '"' {
		return nil, s.Errorf("expected string, found %s", s.describe())
	}
	start := s.pos
	s.pos++
	b := s.buf
	for i := s.pos; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			s.pos = i + 1
			return b[start+1 : i], nil
		case c == '\\':
			return s.unescape(start+1, i)
		case c < 0x20:
			return nil, s.errAt(i, "control character 0x%02x in string", c)
		}
	}
	return nil, s.errAt(start, "unterminated string")
}

func (s *Scanner) unescape(from, i int) ([]byte, error) {
	b := s.buf
	out := make([]byte, i-from, i-from+16)
	copy(out, b[from:i])
	for i < len(b) {
		c := b[i]
		switch {
		case c == '"':
			s.pos = i + 1
			return out, nil
		case c < 0x20:
			return nil, s.errAt(i, "control character 0x%02x in string", c)
		case c != '\\':
			out = append(out, c)
			i++
			continue
		}
		if i+1 >= len(b) {
			break
		}
		switch e := b[i+1]; e {
		case '"', '\\', '/':
			out = append(out, e)
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r, ok := hex4(b, i+2)
			if !ok {
				return nil, s.errAt(i, "invalid \\u escape")
			}
			i += 6
			if utf16.IsSurrogate(r) {
				if r2, ok := hex4(b, i+2); ok && i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
					if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
						out = utf8.AppendRune(out, d)
						i += 6
						continue
					}
				}
				r = utf8.RuneError
			}
			out = utf8.AppendRune(out, r)
			continue
		default:
			return nil, s.errAt(i, "invalid escape \\%c", e)
		}
		i += 2
	}
	return nil, s.errAt(from-1, "unterminated string")
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// unsafeString views b as a string without copying, for strconv; the string
// must not outlive the call it is passed to.
func unsafeString(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}
