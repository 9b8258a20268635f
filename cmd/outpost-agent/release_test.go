package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestReleaseCheck runs the release check for crash points
// (cross/no-crashpoints.sh, part of make release-check) on the agent built
// as a release is, which must pass, and built with -tags outposttest or
// phasetrace, which must fail.
func TestReleaseCheck(t *testing.T) {
	check, err := filepath.Abs("../../cross/no-crashpoints.sh")
	require.NoError(t, err)
	dir := t.TempDir()
	for _, tc := range []struct {
		tags string
		ok   bool
	}{{"", true}, {"outposttest", false}, {"phasetrace", false}} {
		out := filepath.Join(dir, "tags-"+tc.tags, "outpost-agent")
		require.NoError(t, os.MkdirAll(filepath.Dir(out), 0o755))
		cmd := exec.Command("go", "build", "-tags", tc.tags, "-o", out, ".")
		msg, err := cmd.CombinedOutput()
		require.NoError(t, err, "go build -tags %q: %s(for cgo: eval \"$(make -s env)\")", tc.tags, msg)
		msg, err = exec.Command(check, filepath.Dir(out)).CombinedOutput()
		if tc.ok {
			require.NoError(t, err, "check of a release build: %s", msg)
		} else {
			var ee *exec.ExitError
			require.ErrorAs(t, err, &ee, "check of a build with -tags %s passed: %s", tc.tags, msg)
			require.Equal(t, 1, ee.ExitCode(), "%s", msg)
		}
	}
}
