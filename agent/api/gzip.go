package api

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
)

// errUnsupportedEncoding is a Content-Encoding other than gzip and identity
// (415).
var errUnsupportedEncoding = errors.New("unsupported content encoding")

var gzipReaders sync.Pool // of *gzip.Reader, reset per request

// readGzipBody reads a gzip request body into c.body. MaxBodyBytes bounds
// both what comes over the wire and what it decompresses to, so a small
// bomb is a 413 after MaxBodyBytes of output, not an exhausted memory.
func (s *Server) readGzipBody(w http.ResponseWriter, r *http.Request, c *call, enc string) error {
	if !strings.EqualFold(strings.TrimSpace(enc), "gzip") {
		return fmt.Errorf("%w %q: send gzip or identity", errUnsupportedEncoding, enc)
	}
	if r.ContentLength > s.opts.MaxBodyBytes {
		return &http.MaxBytesError{Limit: s.opts.MaxBodyBytes}
	}
	wire := http.MaxBytesReader(w, r.Body, s.opts.MaxBodyBytes)
	zr, _ := gzipReaders.Get().(*gzip.Reader)
	var err error
	if zr == nil {
		zr, err = gzip.NewReader(wire)
	} else {
		err = zr.Reset(wire)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return fmt.Errorf("%w: gzip body: %v", errBadRequest, err)
	}
	defer gzipReaders.Put(zr)
	// One byte more than allowed tells a body of exactly the limit from a
	// longer one.
	err = s.readAll(io.LimitReader(zr, s.opts.MaxBodyBytes+1), c)
	if err == nil && int64(len(c.body)) > s.opts.MaxBodyBytes {
		err = &http.MaxBytesError{Limit: s.opts.MaxBodyBytes}
	}
	var mbe *http.MaxBytesError
	if err != nil && !errors.As(err, &mbe) && !errors.Is(err, errBadRequest) {
		err = fmt.Errorf("%w: gzip body: %v", errBadRequest, err)
	}
	return err
}
