package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/oip"
	"github.com/outpost-edge/outpost/agent/tensorjson"
	"github.com/outpost-edge/outpost/agent/tfserving"
)

// errorBody is every error response: {"error": "..."}.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	if code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests {
		if w.Header().Get("Retry-After") == "" {
			w.Header().Set("Retry-After", "1")
		}
	}
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encoding the response failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// StatusFor maps an inference error to its HTTP status; 500 is left for
// our own bugs. Other transports map their status codes from it.
func StatusFor(err error) int {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errUnsupportedEncoding):
		return http.StatusUnsupportedMediaType
	case errors.Is(err, catalog.ErrModelNotFound), errors.Is(err, catalog.ErrVersionNotFound):
		return http.StatusNotFound
	case errors.Is(err, errBadRequest), errors.Is(err, catalog.ErrBadInput),
		errors.Is(err, oip.ErrBadRequest), errors.Is(err, tfserving.ErrBadRequest),
		errors.Is(err, tensorjson.ErrSyntax), errors.Is(err, tensorjson.ErrValue):
		return http.StatusBadRequest
	case errors.Is(err, catalog.ErrOverloaded), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.Canceled):
		return 499 // the client went away; nobody reads this
	default:
		return http.StatusInternalServerError
	}
}

// errBadRequest marks client errors found by this package (as opposed to
// the codecs, whose sentinels StatusFor also maps).
var errBadRequest = errors.New("bad request")
