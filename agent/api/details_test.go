//go:build cgo

package api

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/runtime"
)

// TestMetricsAndHealthNotRateLimited: scrapers and probes on loopback share
// one client address; they must not spend the inference clients' bucket
// nor be refused by it.
func TestMetricsAndHealthNotRateLimited(t *testing.T) {
	a := startAgent(t, Options{RateLimit: 0.01, RateBurst: 2}, runtime.Options{Workers: 1})
	for range 10 {
		for _, p := range []string{"/metrics", "/v2/health/live", "/v2/health/ready"} {
			resp, _ := do(t, "GET", a.url+p, nil, nil)
			require.Equal(t, 200, resp.StatusCode, p)
		}
	}
	codes := map[int]int{}
	for range 4 {
		resp, _ := do(t, "GET", a.url+"/v2/models/face", nil, nil)
		codes[resp.StatusCode]++
	}
	assert.Equal(t, map[int]int{200: 2, 429: 2}, codes, "the burst of 2 is whole after the scrapes, then limited")
}

func TestBuildInfoAndLatencyMetrics(t *testing.T) {
	a := startAgent(t, Options{Version: "1.2.3"}, runtime.Options{Workers: 1})
	body, hdr := binaryRequest(t, input(0))
	for range 2 {
		resp, _ := do(t, "POST", a.url+"/v2/models/face/infer", body, hdr)
		require.Equal(t, 200, resp.StatusCode)
	}
	_, b := do(t, "GET", a.url+"/metrics", nil, nil)
	m := string(b)
	assert.Regexp(t, `outpost_build_info\{commit="[^"]+",goversion="go[^"]+",version="1.2.3"\} 1`, m)
	assert.Contains(t, m, `outpost_request_duration_seconds_count{model="face",version="1"} 2`)
	assert.Contains(t, m, `outpost_inference_phase_seconds_count{model="face",phase="invoke",version="1"} 2`)
	assert.Contains(t, m, `outpost_inference_phase_seconds_count{model="face",phase="queue",version="1"} 2`)
	assert.NotContains(t, m, `phase="total"`)
}

func TestTFServingMetadata(t *testing.T) {
	a := startAgent(t, Options{}, runtime.Options{Workers: 1})
	for _, p := range []string{"/v1/models/face/metadata", "/v1/models/face/versions/1/metadata"} {
		resp, b := do(t, "GET", a.url+p, nil, nil)
		require.Equal(t, 200, resp.StatusCode, "%s: %s", p, b)
		var md struct {
			ModelSpec struct{ Name, Version string } `json:"model_spec"`
			Metadata  struct {
				SignatureDef struct {
					SignatureDef map[string]struct {
						Inputs, Outputs map[string]tfsTensorInfo
						MethodName      string `json:"method_name"`
					} `json:"signature_def"`
				} `json:"signature_def"`
			} `json:"metadata"`
		}
		require.NoError(t, json.Unmarshal(b, &md), "%s", b)
		assert.Equal(t, "face", md.ModelSpec.Name)
		assert.Equal(t, "1", md.ModelSpec.Version)
		sig, ok := md.Metadata.SignatureDef.SignatureDef["serving_default"]
		require.True(t, ok, "%s", b)
		assert.Equal(t, "tensorflow/serving/predict", sig.MethodName)
		in, ok := sig.Inputs["input"]
		require.True(t, ok, "%s", b)
		assert.Equal(t, "DT_FLOAT", in.DType)
		assert.Equal(t, "input", in.Name)
		var dims []string
		for _, d := range in.TensorShape.Dim {
			dims = append(dims, d.Size)
		}
		assert.Equal(t, []string{"1", "128", "128", "3"}, dims)
		assert.Len(t, sig.Outputs, 2)
	}
	for _, tc := range []struct {
		method, path string
		code         int
	}{
		{"GET", "/v1/models/face/versions/2/metadata", 404},
		{"GET", "/v1/models/nope/metadata", 404},
		{"POST", "/v1/models/face/metadata", 405},
	} {
		resp, b := do(t, tc.method, a.url+tc.path, nil, nil)
		assert.Equal(t, tc.code, resp.StatusCode, "%s %s: %s", tc.method, tc.path, b)
	}
}

func gz(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	require.NoError(t, err)
	_, err = zw.Write(b)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

// TestGzipBodies: gzip bodies give the answers plain ones do; the body
// limit applies to what they decompress to (a bomb is a 413); a broken
// stream is a 400 and an encoding we do not speak a 415.
func TestGzipBodies(t *testing.T) {
	a := startAgent(t, Options{MaxBodyBytes: 1 << 20}, runtime.Options{Workers: 1})
	body, hdr := binaryRequest(t, input(1))
	resp, plain := do(t, "POST", a.url+"/v2/models/face/infer", body, hdr)
	require.Equal(t, 200, resp.StatusCode)
	gzHdr := map[string]string{"Content-Encoding": "gzip"}
	for k, v := range hdr {
		gzHdr[k] = v
	}
	resp, zipped := do(t, "POST", a.url+"/v2/models/face/infer", gz(t, body), gzHdr)
	require.Equal(t, 200, resp.StatusCode, "%s", zipped)
	assert.Equal(t, plain, zipped)

	js := jsonBody(t, map[string]any{"inputs": []map[string]any{{"name": "input", "datatype": "FP32", "shape": []int{1, 128, 128, 3}, "data": input(2)}}})
	resp, b := do(t, "POST", a.url+"/v2/models/face/infer", gz(t, js), map[string]string{"Content-Encoding": "GZIP", "Content-Type": "application/json"})
	assert.Equal(t, 200, resp.StatusCode, "%s", b)

	bomb := gz(t, make([]byte, 64<<20))
	require.Less(t, len(bomb), 1<<20, "the bomb must fit the limit compressed")
	for _, tc := range []struct {
		name string
		body []byte
		enc  string
		code int
	}{
		{"bomb", bomb, "gzip", 413},
		{"just over the limit", gz(t, make([]byte, 1<<20+1)), "gzip", 413},
		{"not gzip", []byte("hello"), "gzip", 400},
		{"truncated", gz(t, js)[:1000], "gzip", 400},
		{"brotli", js, "br", 415},
	} {
		resp, b := do(t, "POST", a.url+"/v2/models/face/infer", tc.body, map[string]string{"Content-Encoding": tc.enc})
		assert.Equal(t, tc.code, resp.StatusCode, "%s: %s", tc.name, b)
		var e struct{ Error string }
		assert.NoError(t, json.Unmarshal(b, &e), "%s: %s", tc.name, b)
		assert.NotEmpty(t, e.Error, tc.name)
	}
	resp, _ = do(t, "POST", a.url+"/v2/models/face/infer", body, hdr)
	assert.Equal(t, 200, resp.StatusCode, "still serving")
}

// lockedLog collects log output from the server's goroutines.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) records(t *testing.T) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.b.String()), "\n") {
		var r map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &r), line)
		out = append(out, r)
	}
	return out
}

// TestAccessLog: every request at debug, a 5xx at warn with its error.
func TestAccessLog(t *testing.T) {
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
		var logs lockedLog
		log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: level}))
		a := startAgent(t, Options{Logger: log}, runtime.Options{Workers: 1})
		resp, _ := do(t, "GET", a.url+"/v2/models/face", nil, nil)
		require.Equal(t, 200, resp.StatusCode)
		a.srv.SetReady(false)
		resp, _ = do(t, "GET", a.url+"/v2/health/ready", nil, nil)
		require.Equal(t, 503, resp.StatusCode)
		// The handler logs before the response is complete on the wire,
		// so both records are there once the client has its answers.
		var got []string
		for _, r := range logs.records(t) {
			if r["msg"] != "request" {
				continue
			}
			got = append(got, r["level"].(string)+" "+r["path"].(string))
			if r["level"] == "WARN" {
				assert.EqualValues(t, 503, r["status"])
				assert.Contains(t, r["body"], `"ready":false`)
			}
		}
		want := []string{"WARN /v2/health/ready"}
		if level == slog.LevelDebug {
			want = []string{"DEBUG /v2/models/face", "WARN /v2/health/ready"}
		}
		assert.Equal(t, want, got, "at level %s", level)
	}
}

func TestParseMetadataRoutes(t *testing.T) {
	for path, want := range map[string]route{
		"/v1/models/face/metadata":            {kind: "v1", model: "face", action: "metadata"},
		"/v1/models/face/versions/4/metadata": {kind: "v1", model: "face", version: 4, action: "metadata"},
	} {
		got, ok := parseRoute(path)
		assert.True(t, ok, path)
		assert.Equal(t, want, got, path)
	}
	for _, path := range []string{"/v1/models/face/metadata:predict", "/v1/models/face/metadata/x", "/v1/models/face/versions/metadata"} {
		if got, ok := parseRoute(path); ok && got.action == "metadata" {
			t.Errorf("%s: got %+v", path, got)
		}
	}
}
