package manifest

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
)

// Errors of the reader returned by Bytes.
var (
	// ErrTooLong: the source has more bytes than the manifest's Length.
	ErrTooLong = errors.New("manifest: model longer than signed")
	// ErrTooShort: the source ended before Length bytes.
	ErrTooShort = errors.New("manifest: model shorter than signed")
	// ErrDigest: the bytes do not hash to the manifest's SHA256.
	ErrDigest = errors.New("manifest: model digest mismatch")
)

// Bytes returns a reader over the model bytes in r that never reads past the
// signed Length (plus one byte, to detect a longer source) and returns io.EOF
// only after Length bytes that hash to SHA256 were read. Any other ending is
// ErrTooLong, ErrTooShort or ErrDigest, so a consumer that copies to EOF
// without error holds exactly the signed bytes.
func (m *Manifest) Bytes(r io.Reader) io.Reader {
	return &checked{m: m, r: io.LimitReader(r, m.Length), src: r, h: sha256.New()}
}

type checked struct {
	m   *Manifest
	r   io.Reader // limited to m.Length
	src io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (c *checked) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	if err == io.EOF {
		c.err = c.finish()
		if n > 0 && c.err == io.EOF {
			return n, nil
		}
		return n, c.err
	}
	return n, err
}

func (c *checked) finish() error {
	if c.n < c.m.Length {
		return fmt.Errorf("%w: %d of %d bytes", ErrTooShort, c.n, c.m.Length)
	}
	var one [1]byte
	if k, _ := io.ReadFull(c.src, one[:]); k > 0 {
		return fmt.Errorf("%w: more than %d bytes", ErrTooLong, c.m.Length)
	}
	var sum [32]byte
	c.h.Sum(sum[:0])
	if want, err := c.m.Digest(); err != nil || sum != want {
		return fmt.Errorf("%w: got sha256 %x", ErrDigest, sum)
	}
	return io.EOF
}
