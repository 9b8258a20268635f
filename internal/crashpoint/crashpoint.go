// Package crashpoint lets crash tests kill a process at a named point: when
// the environment variable OUTPOST_CRASHPOINT names the point At is called
// with, the process sends itself SIGKILL there.
//
// The hook exists only in binaries built with -tags outposttest, the tag of
// test-only hooks (make test and the tests that build the real binaries pass
// it). Without the tag At does nothing, Enabled is false and the binary does
// not contain the variable's name; `make release-check` checks the release
// binaries for it (cross/no-crashpoints.sh).
package crashpoint
