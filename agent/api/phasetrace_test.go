//go:build cgo

package api

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The phase record BenchmarkOverheadPhases reads: binaries built with the
// phasetrace tag write every phase of the requests they answered, and a
// normal build, given the same environment, writes nothing.
func TestPhaseTrace(t *testing.T) {
	path := modelPath(t, face)
	body, hdr := binaryRequest(t, input(0))
	traced, plain := t.TempDir(), t.TempDir()
	agentBin, floorBin := buildBinaries(t, traced, "phasetrace")
	plainBin, _ := buildBinaries(t, plain)
	serve := func(bin, record string) string {
		p := startProcessEnv(t, []string{"OUTPOST_PHASETRACE=" + record}, bin, "serve", "--listen", "127.0.0.1:0",
			"--data-dir", t.TempDir(), "--model", path, "--name", "face")
		waitReady(t, p.url)
		return p.url + "/v2/models/face/infer"
	}
	agentRecord, thinRecord, plainRecord := filepath.Join(traced, "agent"), filepath.Join(traced, "thin"), filepath.Join(plain, "agent")
	agentURL, plainURL := serve(agentBin, agentRecord), serve(plainBin, plainRecord)
	thinURL := startFloorEnv(t, []string{"OUTPOST_PHASETRACE=" + thinRecord}, floorBin, agentURL, body, hdr, path)
	client := &http.Client{}
	defer client.CloseIdleConnections()
	// startFloorEnv asked the agent once: 1 + 199 = 200 agent requests.
	for i := range 200 {
		for _, u := range []string{agentURL, thinURL, plainURL} {
			if u == agentURL && i == 0 {
				continue
			}
			_, err := timedPost(client, u, body, hdr)
			require.NoError(t, err)
		}
	}
	agent, thin := readPhases(t, agentRecord), readPhases(t, thinRecord)
	for _, p := range []string{"read", "decode", "lookup", "prepare", "invoke", "release", "encode", "write", "observe"} {
		assert.Positive(t, agent[p], "agent phase %s", p)
	}
	assert.Len(t, agent, 9)
	assert.Equal(t, []string{"invoke", "read", "write"}, keys(thin))
	// Every phase of every request: 200 of each (the record is written
	// every 100 requests).
	for _, record := range []string{agentRecord, thinRecord} {
		data, err := os.ReadFile(record)
		require.NoError(t, err)
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			assert.True(t, strings.HasSuffix(line, " 200"), "%s: %q", filepath.Base(record), line)
		}
	}
	_, err := os.Stat(plainRecord)
	assert.ErrorIs(t, err, os.ErrNotExist, "a build without the tag records nothing")
}

func keys(m map[string]float64) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
