package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testModel(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("OUTPOST_MODELS")
	if dir == "" {
		dir = filepath.Join("..", "..", ".deps", "models")
	}
	p, err := filepath.Abs(filepath.Join(dir, name))
	require.NoError(t, err)
	_, err = os.Stat(p)
	require.NoError(t, err, "test model missing (run `make setup`)")
	return p
}

// serving is a running `outpost-agent serve` process.
type serving struct {
	cmd    *exec.Cmd
	url    string
	exited chan struct{} // closed once the process is reaped
	err    error         // its exit status, set before exited closes
}

// startServe runs the real binary and waits until it is ready.
func startServe(t *testing.T, bin string, args ...string) *serving {
	t.Helper()
	return startServeEnv(t, bin, nil, args...)
}

// startServeEnv is startServe with extra environment variables.
func startServeEnv(t *testing.T, bin string, env []string, args ...string) *serving {
	t.Helper()
	return startServeWait(t, bin, env, "/v2/health/ready", args...)
}

// startServeWait starts the agent and waits until path answers 200.
func startServeWait(t *testing.T, bin string, env []string, path string, args ...string) *serving {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, cmd.Start())
	s := &serving{cmd: cmd, exited: make(chan struct{})}
	addr := make(chan string, 1)
	// One goroutine reads stderr to its end and only then reaps the
	// process, as os/exec asks of pipe users.
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, "outpost-agent: listening on "); ok {
				addr <- a
			}
			t.Log(line)
		}
		s.err = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		dumpOnFailure(t, cmd.Process, s.exited)
		cmd.Process.Kill()
		<-s.exited
	})
	select {
	case a := <-addr:
		s.url = "http://" + a
	case <-s.exited:
		t.Fatalf("serve exited: %v", s.err)
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not report its address")
	}
	require.Eventually(t, func() bool {
		resp, err := http.Get(s.url + path)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, 30*time.Second, 5*time.Millisecond)
	t.Logf("ready %v after start", time.Since(start).Round(time.Millisecond))
	return s
}

// get fetches url and reads the whole body.
func get(url string) (*http.Response, []byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
	return resp.StatusCode
}

// SIGTERM lets a request in flight finish, then the process exits 0.
func TestServeDrainsOnSIGTERM(t *testing.T) {
	b := build(t)
	s := startServe(t, b.agent, "--model", testModel(t, "face_detection_short_range.tflite"), "--name", "face")

	// A request whose body is still arriving when SIGTERM comes.
	hdr := `{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"parameters":{"binary_data_size":196608}}]}`
	pr, pw := io.Pipe()
	req, err := http.NewRequest("POST", s.url+"/v2/models/face/infer", pr)
	require.NoError(t, err)
	req.ContentLength = int64(len(hdr) + 196608)
	req.Header.Set("Inference-Header-Content-Length", fmt.Sprint(len(hdr)))
	type answer struct {
		code int
		body string
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			got <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- answer{code: resp.StatusCode, body: string(b)}
	}()
	_, err = pw.Write([]byte(hdr))
	require.NoError(t, err)
	_, err = pw.Write(make([]byte, 1000))
	require.NoError(t, err)
	// The handler counts the request in flight before it reads the body.
	require.Eventually(t, func() bool {
		resp, b, err := get(s.url + "/metrics")
		return err == nil && resp.StatusCode == 200 && strings.Contains(string(b), "\noutpost_inflight_requests 1\n")
	}, 20*time.Second, 10*time.Millisecond, "the request never reached the handler")

	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	// Shutdown has begun once the listener is closed; the request is still
	// waiting for the rest of its body.
	addr := strings.TrimPrefix(s.url, "http://")
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	}, 20*time.Second, 10*time.Millisecond, "still accepting connections after SIGTERM")
	_, err = pw.Write(make([]byte, 196608-1000))
	require.NoError(t, err)
	pw.Close()

	a := <-got
	require.NoError(t, a.err)
	assert.Equal(t, 200, a.code, a.body)
	assert.Contains(t, a.body, `"model_version":"1"`)
	select {
	case <-s.exited:
		assert.NoError(t, s.err, "exit status after SIGTERM")
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not exit after SIGTERM")
	}
	_, err = http.Get(s.url + "/v2/health/live")
	assert.Error(t, err, "still accepting connections after exit")
}

// SIGHUP reloads a model whose file changed; the admin call does the same.
func TestServeReloads(t *testing.T) {
	b := build(t)
	dir := t.TempDir()
	model := filepath.Join(dir, "model.tflite")
	copyFile(t, testModel(t, "face_detection_short_range.tflite"), model)
	s := startServe(t, b.agent, "--model", model, "--name", "face")
	var meta struct {
		Inputs []struct {
			Shape []int `json:"shape"`
		} `json:"inputs"`
		Parameters map[string]any `json:"parameters"`
	}
	require.Equal(t, 200, getJSON(t, s.url+"/v2/models/face", &meta))
	require.Equal(t, []int{1, 128, 128, 3}, meta.Inputs[0].Shape)
	first := meta.Parameters["model_digest"]

	copyFile(t, testModel(t, "face_detection_full_range.tflite"), model)
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGHUP))
	// The agent answered ready, so its SIGHUP handler is in place: the
	// signal must reload, however slow the machine.
	require.Eventually(t, func() bool {
		resp, err := http.Get(s.url + "/v2/models/face")
		if err != nil {
			return false // no require here: Eventually runs this in its own goroutine
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(&meta) == nil && meta.Parameters["model_digest"] != first
	}, 20*time.Second, 20*time.Millisecond, "SIGHUP did not reload")
	assert.Equal(t, []int{1, 192, 192, 3}, meta.Inputs[0].Shape)

	copyFile(t, testModel(t, "face_detection_short_range.tflite"), model)
	resp, err := http.Post(s.url+"/v2/repository/models/face/load", "application/json", nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 200, resp.StatusCode)
	getJSON(t, s.url+"/v2/models/face", &meta)
	assert.Equal(t, first, meta.Parameters["model_digest"])

	// A broken file does not take the serving model down.
	require.NoError(t, os.WriteFile(model, []byte("not a model"), 0o644))
	resp, err = http.Post(s.url+"/v2/repository/models/face/load", "application/json", nil)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, 400, resp.StatusCode)
	assert.Contains(t, string(body), "not a TFLite flatbuffer")
	assert.Equal(t, 200, getJSON(t, s.url+"/v2/models/face", &meta))
	assert.Equal(t, first, meta.Parameters["model_digest"])
}

func TestServeUsage(t *testing.T) {
	var out, errb strings.Builder
	code := program.Dispatch(context.Background(), []string{"serve"}, &out, &errb)
	assert.Equal(t, 2, code)
	assert.Contains(t, errb.String(), "--model FILE or --config FILE")
	errb.Reset()
	code = program.Dispatch(context.Background(), []string{"serve", "--config", filepath.Join(t.TempDir(), "missing.yaml")}, &out, &errb)
	assert.Equal(t, 1, code)
	assert.Contains(t, errb.String(), "no such file")
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	tmp := to + ".tmp"
	require.NoError(t, os.WriteFile(tmp, b, 0o644))
	require.NoError(t, os.Rename(tmp, to))
}

// Under systemd (Type=notify) the agent says READY once it serves, pings the
// watchdog from its main loop, shows its status and says STOPPING on SIGTERM:
// here a unixgram socket stands where systemd's would be.
func TestServeNotifiesSystemd(t *testing.T) {
	b := build(t)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	require.NoError(t, err)
	msgs := make(chan string, 100)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(msgs)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			select {
			case msgs <- string(buf[:n]):
			case <-done:
				return
			}
		}
	}()
	defer func() {
		close(done)
		conn.Close()
		wg.Wait()
	}()
	next := func(want string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case m, ok := <-msgs:
				if !ok {
					t.Fatalf("notify socket closed before %q", want)
				}
				if m == want {
					return
				}
			case <-deadline:
				t.Fatalf("no %q from the agent", want)
			}
		}
	}
	s := startServeEnv(t, b.agent, []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=200000"},
		"--model", testModel(t, "face_detection_short_range.tflite"), "--name", "face")
	next("STATUS=serving 1 of 1 models")
	next("READY=1")
	next("WATCHDOG=1")
	next("WATCHDOG=1") // and again: a ticker, not a one-off
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	next("STOPPING=1")
	<-s.exited
	assert.NoError(t, s.err)
}

// Readiness is strict: a configured model that does not load leaves the agent
// not ready (while the others serve) until a reload fixes it.
func TestServeReadyNeedsEveryModel(t *testing.T) {
	b := build(t)
	dir := t.TempDir()
	broken := filepath.Join(dir, "hand.tflite")
	require.NoError(t, os.WriteFile(broken, []byte("not a model"), 0o644))
	cfg := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, "models:\n  - {name: face, path: %s}\n  - {name: hand, path: %s}\n",
		testModel(t, "face_detection_short_range.tflite"), broken), 0o644))
	s := startServeWait(t, b.agent, nil, "/v2/models/face/ready", "--config", cfg)
	status := func(path string) int {
		resp, err := http.Get(s.url + path)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, 503, status("/v2/health/ready"), "a configured model failed to load")
	assert.Equal(t, 404, status("/v2/models/hand/ready"))

	copyFile(t, testModel(t, "hand_landmark_lite.tflite"), broken)
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return status("/v2/health/ready") == 200 }, 20*time.Second, 20*time.Millisecond)
	assert.Equal(t, 200, status("/v2/models/hand/ready"))
}
