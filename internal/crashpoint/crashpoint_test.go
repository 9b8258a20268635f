package crashpoint

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// TestAt runs At in a helper process with OUTPOST_CRASHPOINT set: a build
// with -tags outposttest dies there by SIGKILL, any other build goes on.
func TestAt(t *testing.T) {
	if os.Getenv("OUTPOST_CRASHPOINT_HELPER") != "" {
		At("elsewhere") // never kills
		At("here")
		os.Exit(0)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAt$")
	cmd.Env = append(os.Environ(), "OUTPOST_CRASHPOINT_HELPER=1", "OUTPOST_CRASHPOINT=here")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	killed := errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
	switch {
	case Enabled && !killed:
		t.Fatalf("built with the crash points, the helper was not killed at its point: %v\n%s", err, out)
	case !Enabled && err != nil:
		t.Fatalf("built without the crash points, the helper failed: %v\n%s", err, out)
	}
}
