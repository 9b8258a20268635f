package runtime

import (
	"context"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// outputAddr runs m once and returns the address of output 0's memory,
// which tells the interpreters apart; hold, if not nil, runs while the
// interpreter is still taken.
func outputAddr(t *testing.T, m *Model, hold func()) uintptr {
	var addr uintptr
	_, err := m.InvokeFunc(context.Background(), inputsFor(m, 0), func(i int, b []byte) error {
		if i == 0 {
			addr = uintptr(unsafe.Pointer(unsafe.SliceData(b)))
			if hold != nil {
				hold()
			}
		}
		return nil
	}, len(m.Outputs()))
	require.NoError(t, err)
	return addr
}

// The pool hands out the interpreter released last, so one caller at a time
// keeps using one warm interpreter instead of alternating between them.
func TestPoolMostRecentlyUsed(t *testing.T) {
	m, err := LoadFile(modelPath(t, "face_detection_short_range.tflite"), Options{Workers: 2})
	require.NoError(t, err)
	defer m.Close()

	first := outputAddr(t, m, nil)
	for i := range 5 {
		assert.Equal(t, first, outputAddr(t, m, nil), "sequential call %d ran on another interpreter", i)
	}

	// While one call holds an interpreter, another runs on the second one;
	// the held one, released last, serves the next call.
	var held, other uintptr
	held = outputAddr(t, m, func() { other = outputAddr(t, m, nil) })
	require.NotEqual(t, held, other, "two concurrent calls shared an interpreter")
	assert.Equal(t, held, outputAddr(t, m, nil), "next call did not take the interpreter released last")
}
