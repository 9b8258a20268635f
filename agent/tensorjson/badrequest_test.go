package tensorjson

import (
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBadRequests(t *testing.T) {
	const bad = BadRequests("codec")
	err := bad.Errorf(nil, "request has no %s", "inputs")
	require.EqualError(t, err, "codec: request has no inputs")
	require.ErrorIs(t, err, ErrBadRequest)
	require.NotErrorIs(t, err, ErrValue)

	cause := errors.New("cause")
	err = bad.Errorf(cause, "input %d", 3)
	require.ErrorIs(t, err, ErrBadRequest)
	require.ErrorIs(t, err, cause)

	for _, tc := range []struct {
		body string
		want error
	}{
		{`"text"`, ErrValue},
		{`{"a": 1}`, ErrValue},
		{`@`, ErrSyntax},
		{`]`, ErrSyntax},
	} {
		err := bad.WrongKind(NewScanner([]byte(tc.body)), "inputs must be an array, not %s", "a string")
		require.ErrorIs(t, err, ErrBadRequest, "body %s", tc.body)
		require.ErrorIs(t, err, tc.want, "body %s: %v", tc.body, err)
	}
}
