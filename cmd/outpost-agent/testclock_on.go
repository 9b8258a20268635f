//go:build outposttest

package main

import (
	"flag"
	"time"

	"github.com/outpost-edge/outpost/internal/subcommand"
)

// testClock adds --test-now to a command's flags; only test builds
// (-tags outposttest) have it, so a release binary always checks expiry
// against the real clock. The returned function gives the time to check
// against, the zero time for the real clock.
func testClock(fs *flag.FlagSet) func() (time.Time, error) {
	at := fs.String("test-now", "", "test builds only: check expiry as of this RFC 3339 time")
	return func() (time.Time, error) {
		if *at == "" {
			return time.Time{}, nil
		}
		t, err := time.Parse(time.RFC3339Nano, *at)
		if err != nil {
			return time.Time{}, subcommand.UsageError("bad --test-now: " + err.Error())
		}
		return t, nil
	}
}
