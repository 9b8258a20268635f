package api

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Every request is logged at debug; every 5xx (our own failure, an
// overload, a timeout) at warn, with the start of the error body, so an
// operator sees a failing agent without turning debug on.

// statusWriter records what a handler answered. Unwrap lets
// http.ResponseController reach the connection beneath.
type statusWriter struct {
	http.ResponseWriter
	code  int
	bytes int64
	body  []byte // the start of a 5xx body
}

var statusWriters = sync.Pool{New: func() any { return new(statusWriter) }}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if w.code >= 500 && len(w.body) < 256 {
		w.body = append(w.body, b[:min(len(b), 256-len(w.body))]...)
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// logged wraps h with the access log.
func (s *Server) logged(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := statusWriters.Get().(*statusWriter)
		*sw = statusWriter{ResponseWriter: w, body: sw.body[:0]}
		defer func() {
			code := sw.code
			if code == 0 {
				code = http.StatusOK
			}
			level := slog.LevelDebug
			if code >= 500 {
				level = slog.LevelWarn
			}
			if s.log.Enabled(context.Background(), level) {
				attrs := []slog.Attr{
					slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Int("status", code),
					slog.Duration("duration", time.Since(start)), slog.Int64("bytes", sw.bytes), slog.String("remote", r.RemoteAddr),
				}
				if level == slog.LevelWarn {
					attrs = append(attrs, slog.String("body", string(sw.body)))
				}
				s.log.LogAttrs(context.Background(), level, "request", attrs...)
			}
			*sw = statusWriter{body: sw.body[:0]}
			statusWriters.Put(sw)
		}()
		h.ServeHTTP(sw, r)
	})
}
