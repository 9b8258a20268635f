package tensorjson

import (
	"errors"
	"fmt"
)

// ErrBadRequest is wrapped by every error the codecs built on this package
// (agent/oip, agent/tfserving) return for a body the client got wrong; the
// message says what is wrong and where, and is meant for the client.
var ErrBadRequest = errors.New("bad request")

// BadRequests makes a codec's errors for the client; its value, the codec's
// name, starts every message. The errors match ErrBadRequest and, when there
// is one, their cause (ErrSyntax, ErrValue or an error of this package).
type BadRequests string

// Errorf returns an error for the client with the formatted message; cause
// may be nil.
func (c BadRequests) Errorf(cause error, format string, args ...any) error {
	return &badRequest{codec: string(c), msg: fmt.Sprintf(format, args...), cause: cause}
}

// WrongKind reports a value of the wrong JSON kind at s with the formatted
// message (matching ErrValue), or a syntax error when there is no value at
// all (matching ErrSyntax).
func (c BadRequests) WrongKind(s *Scanner, format string, args ...any) error {
	if s.Kind() == "invalid value" {
		return c.Errorf(ErrSyntax, "%v", s.Unexpected())
	}
	return c.Errorf(ErrValue, format, args...)
}

type badRequest struct {
	codec, msg string
	cause      error
}

func (e *badRequest) Error() string { return e.codec + ": " + e.msg }

func (e *badRequest) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrBadRequest}
	}
	return []error{ErrBadRequest, e.cause}
}
