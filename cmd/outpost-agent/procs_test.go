package main

import (
	"path/filepath"
	"regexp"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/models/testmodel"
)

// The agent runs Go with two Ps per CPU (runtime.RaiseProcs) and still one
// interpreter per CPU; GOMAXPROCS in the environment is left as set. Seen
// from outside: the start line of batch and serve, and the workers in a
// served model's metadata.
func TestGoSchedulerProcs(t *testing.T) {
	b := build(t)
	in := filepath.Join(t.TempDir(), "in.npy")
	writeFaceRows(t, in, 2)
	line := regexp.MustCompile(`msg="go scheduler" cpus=(\d+) gomaxprocs=(\d+)`)
	procs := func(stderr string) (cpus, gomaxprocs int) {
		t.Helper()
		m := line.FindStringSubmatch(stderr)
		require.NotNil(t, m, "no scheduler line in:\n%s", stderr)
		cpus, _ = strconv.Atoi(m[1])
		gomaxprocs, _ = strconv.Atoi(m[2])
		return cpus, gomaxprocs
	}
	batch := func(env ...string) string {
		out := filepath.Join(t.TempDir(), "out.jsonl")
		r := run(t, env, b.agent, "batch", "--model", testmodel.Path(t, testmodel.FaceShort), "--input", in, "--output", out, "--progress", "none")
		require.Equal(t, 0, r.code, r.stderr)
		require.Contains(t, r.stderr, "2 items written (0 errors)")
		return r.stderr
	}

	n, gomaxprocs := procs(batch("GOMAXPROCS="))
	require.GreaterOrEqual(t, n, 1)
	require.Equal(t, 2*n, gomaxprocs, "GOMAXPROCS unset: two Ps per CPU")

	cpus, gomaxprocs := procs(batch("GOMAXPROCS=3"))
	require.Equal(t, [2]int{3, 3}, [2]int{cpus, gomaxprocs}, "GOMAXPROCS set: left as set")

	// serve: the pool has one interpreter per CPU, not per P.
	s := startServeEnv(t, b.agent, []string{"GOMAXPROCS="}, "--model", testmodel.Path(t, testmodel.FaceShort), "--name", "face", "--data-dir", t.TempDir())
	var meta struct {
		Parameters struct {
			Workers int `json:"workers"`
		} `json:"parameters"`
	}
	require.Equal(t, 200, getJSON(t, s.url+"/v2/models/face", &meta))
	require.Equal(t, n, meta.Parameters.Workers, "interpreters per model")
}
