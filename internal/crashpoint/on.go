//go:build outposttest

package crashpoint

import (
	"os"
	"syscall"
)

// Enabled says whether this binary was built with the crash points.
const Enabled = true

// At kills the process with SIGKILL if OUTPOST_CRASHPOINT is name, and
// otherwise returns at once.
func At(name string) {
	if os.Getenv("OUTPOST_CRASHPOINT") == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
}
