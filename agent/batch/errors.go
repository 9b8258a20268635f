package batch

import (
	"errors"
	"fmt"
)

// Errors callers tell apart with errors.Is.
var (
	// ErrItem: one input item is bad (unreadable, unparsable, or not the
	// model's shape or datatype). It becomes an error line in the output and
	// the run goes on.
	ErrItem = errors.New("batch: bad item")
	// ErrOutputExists: the output file has records and --resume was not
	// given; nothing was written.
	ErrOutputExists = errors.New("batch: output exists (resume it or remove it)")
	// ErrInputChanged: on resume, a record in the output names another item
	// than the input holds at that position.
	ErrInputChanged = errors.New("batch: input changed since the output was written")
	// ErrInput: the input as a whole cannot be read (missing, unsupported
	// kind, an .npy file whose rows do not fit the model).
	ErrInput = errors.New("batch: bad input")
	// ErrOutput: writing or syncing the output failed (a full disk, a file
	// size limit, an I/O error). The run stops; the records written before
	// are kept, and --resume continues once the output can be written.
	ErrOutput = errors.New("batch: output")
)

func itemErrorf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrItem, fmt.Sprintf(format, args...))
}
