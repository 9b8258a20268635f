package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/internal/buildinfo"
	"github.com/outpost-edge/outpost/models/testmodel"
)

// TestCLIHabits runs the real agent binary: help on stdout with exit 0 for
// the binary and every command, a bad flag as one line with exit 2,
// version, inspect -o json with nothing on stderr (TFLite's own INFO line
// included), a config error that names the file, line and key, and
// --log-format json.
func TestCLIHabits(t *testing.T) {
	b := build(t)
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		r := run(t, nil, b.agent, args...)
		assert.Equal(t, 0, r.code, "%v: %s", args, r.stderr)
		assert.Contains(t, r.stdout, "usage: outpost-agent", args)
		assert.Empty(t, r.stderr, args)
	}
	for _, c := range program.Commands {
		for _, args := range [][]string{{c.Name, "-h"}, {c.Name, "--help"}, {"help", c.Name}} {
			r := run(t, nil, b.agent, args...)
			assert.Equal(t, 0, r.code, "%v: %s", args, r.stderr)
			assert.Contains(t, r.stdout, "-", args)
			assert.Empty(t, r.stderr, args)
		}
		r := run(t, nil, b.agent, c.Name, "--no-such-flag")
		assert.Equal(t, 2, r.code, c.Name)
		assert.Equal(t, "outpost-agent "+c.Name+": flag provided but not defined: -no-such-flag (see outpost-agent "+c.Name+" -h)\n", r.stderr)
		assert.Empty(t, r.stdout)
	}

	r := run(t, nil, b.agent, "version")
	require.Equal(t, 0, r.code, r.stderr)
	for _, want := range []string{"outpost-agent dev\n", "commit:", runtime.Version(), "build tags: outposttest", "cgo:        on"} {
		assert.Contains(t, r.stdout, want)
	}
	r = run(t, nil, b.agent, "version", "-o", "json")
	var in buildinfo.Info
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &in), r.stdout)
	assert.Equal(t, "outposttest", in.Tags)
	assert.True(t, in.CGO)

	model := testmodel.Path(t, testmodel.FaceShort)
	for _, args := range [][]string{{"inspect", "-o", "json", model}, {"inspect", "--json", model}} {
		r = run(t, nil, b.agent, args...)
		require.Equal(t, 0, r.code, r.stderr)
		assert.Empty(t, r.stderr, "TFLite's chatter is not ours to print")
		var rep inspectReport
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &rep), r.stdout)
		assert.Len(t, rep.Inputs, 1)
	}
	r = run(t, nil, b.agent, "inspect", model)
	assert.Contains(t, r.stdout, "DATATYPE")
	assert.Empty(t, r.stderr)
	r = run(t, nil, b.agent, "inspect", "-o", "yaml", model)
	assert.Equal(t, 2, r.code)

	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, []byte("listen: 127.0.0.1:0\nworkers: 1\nthread: 3\n"), 0o644))
	r = run(t, nil, b.agent, "serve", "--config", cfg)
	assert.Equal(t, 1, r.code)
	assert.Equal(t, "outpost-agent serve: config: "+cfg+":3: unknown key \"thread\"\n", r.stderr)
	require.NoError(t, os.WriteFile(cfg, []byte("listen: 127.0.0.1:0\napi:\n  request_timeout: soon\n"), 0o644))
	r = run(t, nil, b.agent, "serve", "--config", cfg)
	assert.Contains(t, r.stderr, cfg+":3: \"soon\" is not a duration")
	assert.NotContains(t, r.stderr, "time.Duration")

	for _, bad := range [][]string{{"--log-format", "xml"}, {"--log-level", "loud"}} {
		r = run(t, nil, b.agent, append([]string{"serve", "--model", model}, bad...)...)
		assert.Equal(t, 2, r.code, "%v: %s", bad, r.stderr)
		assert.Contains(t, r.stderr, bad[0])
	}
}

// TestServeLogsJSON: with --log-format json every line on stderr is a JSON
// object, the request log and the TFLite library's own line included at
// --log-level debug.
func TestServeLogsJSON(t *testing.T) {
	b := build(t)
	cmd := exec.Command(b.agent, "serve", "--listen", "127.0.0.1:0", "--model", testmodel.Path(t, testmodel.FaceShort),
		"--workers", "1", "--log-format", "json", "--log-level", "debug")
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	lines := make(chan string, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		for range lines {
		}
		cmd.Wait()
	})
	var addr string
	var requestLogged, tfliteLogged bool
	timeout := time.After(60 * time.Second)
	for !requestLogged {
		select {
		case line, ok := <-lines:
			require.True(t, ok, "serve exited")
			var rec map[string]any
			require.NoError(t, json.Unmarshal([]byte(line), &rec), "not JSON: %q", line)
			switch {
			case rec["component"] == "tflite":
				// The library's "INFO: Created TensorFlow Lite XNNPACK
				// delegate for CPU." as one of our records, at debug.
				assert.Equal(t, "DEBUG", rec["level"], line)
				tfliteLogged = true
			case rec["msg"] == "listening":
				addr, _ = rec["addr"].(string)
			case rec["msg"] == "serving":
				resp, err := http.Get("http://" + addr + "/v2/models/face_detection_short_range")
				require.NoError(t, err)
				resp.Body.Close()
				require.Equal(t, 200, resp.StatusCode)
			case rec["msg"] == "request" && rec["path"] == "/v2/models/face_detection_short_range":
				assert.Equal(t, "DEBUG", rec["level"])
				requestLogged = true
			}
		case <-timeout:
			t.Fatal("no request log line within a minute")
		}
	}
	assert.True(t, tfliteLogged, "TFLite's own line did not come through the logger")
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	for line := range lines {
		var rec map[string]any
		assert.NoError(t, json.Unmarshal([]byte(line), &rec), "not JSON: %q", line)
	}
	assert.NoError(t, cmd.Wait())
}
