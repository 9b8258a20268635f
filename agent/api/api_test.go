//go:build cgo

package api

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
)

func modelPath(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("OUTPOST_MODELS")
	if dir == "" {
		dir = filepath.Join("..", "..", ".deps", "models")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test model missing (run `make setup`): %v", err)
	}
	return p
}

const face = "face_detection_short_range.tflite"

// agent is a real API server over a real registry with the face model.
type agent struct {
	url string
	reg *serving.Registry
	srv *Server
}

func startAgent(t testing.TB, opts Options, rt runtime.Options) *agent {
	t.Helper()
	reg := serving.New(serving.Options{Runtime: rt})
	_, err := reg.LoadFile(context.Background(), "face", 1, modelPath(t, face))
	require.NoError(t, err)
	opts.Backend = reg
	opts.Listen = "127.0.0.1:0"
	srv, err := New(opts)
	require.NoError(t, err)
	srv.SetReady(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
		reg.Close()
	})
	return &agent{url: "http://" + srv.Addr().String(), reg: reg, srv: srv}
}

// input is a deterministic face-model input in [-1, 1].
func input(seed float64) []float32 {
	v := make([]float32, 128*128*3)
	for i := range v {
		v[i] = float32(math.Sin(float64(i)*0.37 + seed))
	}
	return v
}

func le(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return b
}

func fromLE(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// reference runs the model straight through the runtime.
func reference(t testing.TB, in []float32) [][]float32 {
	t.Helper()
	m, err := runtime.LoadFile(modelPath(t, face), runtime.Options{Workers: 1})
	require.NoError(t, err)
	defer m.Close()
	out := make([][]byte, len(m.OutputSizes()))
	for i, n := range m.OutputSizes() {
		out[i] = make([]byte, n)
	}
	require.NoError(t, m.Invoke(context.Background(), [][]byte{le(in)}, out))
	return [][]float32{fromLE(out[0]), fromLE(out[1])}
}

func assertClose(t testing.TB, want, got []float32, what string) {
	t.Helper()
	require.NoError(t, closeTo(want, got, what))
}

// closeTo is assertClose for goroutines other than the test's.
func closeTo(want, got []float32, what string) error {
	if len(got) != len(want) {
		return fmt.Errorf("%s has %d elements, want %d", what, len(got), len(want))
	}
	for i := range want {
		if math.Abs(float64(want[i]-got[i])) > 1e-5 {
			return fmt.Errorf("%s[%d] = %v, want %v", what, i, got[i], want[i])
		}
	}
	return nil
}

func do(t testing.TB, method, url string, body []byte, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	resp, b, err := request(method, url, body, hdr)
	require.NoError(t, err)
	return resp, b
}

// request is do for goroutines other than the test's.
func request(method, url string, body []byte, hdr map[string]string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func jsonBody(t testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

type v2Response struct {
	ModelName    string         `json:"model_name"`
	ModelVersion string         `json:"model_version"`
	ID           string         `json:"id"`
	Parameters   map[string]any `json:"parameters"`
	Outputs      []struct {
		Name       string         `json:"name"`
		Datatype   string         `json:"datatype"`
		Shape      []int          `json:"shape"`
		Data       []float32      `json:"data"`
		Parameters map[string]any `json:"parameters"`
	} `json:"outputs"`
}

func TestV2JSONInfer(t *testing.T) {
	a := startAgent(t, Options{}, runtime.Options{Workers: 2})
	in := input(0)
	want := reference(t, in)
	body := jsonBody(t, map[string]any{
		"id":     "req-1",
		"inputs": []map[string]any{{"name": "input", "datatype": "FP32", "shape": []int{1, 128, 128, 3}, "data": in}},
	})
	resp, b := do(t, "POST", a.url+"/v2/models/face/infer", body, nil)
	require.Equal(t, 200, resp.StatusCode, string(b))
	var r v2Response
	require.NoError(t, json.Unmarshal(b, &r))
	assert.Equal(t, "face", r.ModelName)
	assert.Equal(t, "1", r.ModelVersion)
	assert.Equal(t, "req-1", r.ID)
	assert.Equal(t, serving.Digest(mustRead(t, modelPath(t, face))), r.Parameters["model_digest"])
	require.Len(t, r.Outputs, 2)
	assert.Equal(t, "regressors", r.Outputs[0].Name)
	assert.Equal(t, []int{1, 896, 16}, r.Outputs[0].Shape)
	assertClose(t, want[0], r.Outputs[0].Data, "regressors")
	assertClose(t, want[1], r.Outputs[1].Data, "classificators")

	// Output selection, and a pinned version.
	body = jsonBody(t, map[string]any{
		"inputs":  []map[string]any{{"name": "input", "datatype": "FP32", "shape": []int{1, 128, 128, 3}, "data": in}},
		"outputs": []map[string]any{{"name": "classificators"}},
	})
	resp, b = do(t, "POST", a.url+"/v2/models/face/versions/1/infer", body, nil)
	require.Equal(t, 200, resp.StatusCode, string(b))
	r = v2Response{}
	require.NoError(t, json.Unmarshal(b, &r))
	require.Len(t, r.Outputs, 1)
	assertClose(t, want[1], r.Outputs[0].Data, "classificators")
}

func mustRead(t testing.TB, p string) []byte {
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return b
}

// binaryRequest builds a v2 request with the input as binary tensor data,
// asking for binary outputs.
func binaryRequest(t testing.TB, in []float32) ([]byte, map[string]string) {
	raw := le(in)
	hdr := jsonBody(t, map[string]any{
		"inputs": []map[string]any{{
			"name": "input", "datatype": "FP32", "shape": []int{1, 128, 128, 3},
			"parameters": map[string]any{"binary_data_size": len(raw)},
		}},
		"parameters": map[string]any{"binary_data_output": true},
	})
	return append(hdr, raw...), map[string]string{
		"Inference-Header-Content-Length": strconv.Itoa(len(hdr)),
		"Content-Type":                    "application/octet-stream",
	}
}

// splitBinaryResponse returns the JSON header and the binary outputs.
func splitBinaryResponse(t testing.TB, resp *http.Response, b []byte) (v2Response, [][]byte) {
	t.Helper()
	r, outs, err := splitBinary(resp, b)
	require.NoError(t, err)
	return r, outs
}

// splitBinary is splitBinaryResponse for goroutines other than the test's.
func splitBinary(resp *http.Response, b []byte) (v2Response, [][]byte, error) {
	var r v2Response
	n, err := strconv.Atoi(resp.Header.Get("Inference-Header-Content-Length"))
	if err != nil || n > len(b) {
		return r, nil, fmt.Errorf("Inference-Header-Content-Length %q for %d bytes: %v", resp.Header.Get("Inference-Header-Content-Length"), len(b), err)
	}
	if err := json.Unmarshal(b[:n], &r); err != nil {
		return r, nil, err
	}
	rest := b[n:]
	var outs [][]byte
	for _, o := range r.Outputs {
		if o.Data != nil { // sent as JSON
			outs = append(outs, nil)
			continue
		}
		size, ok := o.Parameters["binary_data_size"].(float64)
		if !ok || int(size) > len(rest) {
			return r, nil, fmt.Errorf("output %s: binary_data_size %v with %d bytes left", o.Name, o.Parameters["binary_data_size"], len(rest))
		}
		outs = append(outs, rest[:int(size)])
		rest = rest[int(size):]
	}
	if len(rest) != 0 {
		return r, nil, fmt.Errorf("%d bytes after the last output", len(rest))
	}
	return r, outs, nil
}

func TestV2BinaryInfer(t *testing.T) {
	a := startAgent(t, Options{}, runtime.Options{Workers: 1})
	in := input(1)
	want := reference(t, in)
	body, hdr := binaryRequest(t, in)
	resp, b := do(t, "POST", a.url+"/v2/models/face/infer", body, hdr)
	require.Equal(t, 200, resp.StatusCode, string(b))
	r, outs := splitBinaryResponse(t, resp, b)
	assert.Equal(t, "1", r.ModelVersion)
	require.Len(t, outs, 2)
	assertClose(t, want[0], fromLE(outs[0]), "regressors")
	assertClose(t, want[1], fromLE(outs[1]), "classificators")

	// Every output as binary data goes out of the interpreter straight
	// into the answer, after the JSON header; other requests build the
	// answer from a copy. Each way, the same answer.
	raw := le(in)
	for _, tc := range []struct {
		name    string
		id      string
		outputs []map[string]any
		want    []string // the binary outputs, in order
	}{
		{"all binary, listed in another order", "", []map[string]any{
			{"name": "classificators", "parameters": map[string]any{"binary_data": true}},
			{"name": "regressors", "parameters": map[string]any{"binary_data": true}}}, []string{"regressors", "classificators"}},
		{"one of two", "", []map[string]any{{"name": "classificators", "parameters": map[string]any{"binary_data": true}}}, []string{"classificators"}},
		{"one binary, one JSON", "", []map[string]any{
			{"name": "classificators", "parameters": map[string]any{"binary_data": true}}, {"name": "regressors"}}, []string{"classificators"}},
		{"a header longer than the room kept for it", strings.Repeat("x", 5000), nil, []string{"regressors", "classificators"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := map[string]any{
				"inputs": []map[string]any{{"name": "input", "datatype": "FP32", "shape": []int{1, 128, 128, 3},
					"parameters": map[string]any{"binary_data_size": len(raw)}}},
			}
			if tc.outputs != nil {
				req["outputs"] = tc.outputs
			} else {
				req["parameters"] = map[string]any{"binary_data_output": true}
			}
			if tc.id != "" {
				req["id"] = tc.id
			}
			js := jsonBody(t, req)
			resp, b := do(t, "POST", a.url+"/v2/models/face/infer", append(js, raw...),
				map[string]string{"Inference-Header-Content-Length": strconv.Itoa(len(js))})
			require.Equal(t, 200, resp.StatusCode, string(b))
			r, outs := splitBinaryResponse(t, resp, b)
			assert.Equal(t, tc.id, r.ID)
			var names []string
			for k, o := range r.Outputs {
				w := want[map[string]int{"regressors": 0, "classificators": 1}[o.Name]]
				if o.Data != nil {
					assertClose(t, w, o.Data, o.Name)
					continue
				}
				names = append(names, o.Name)
				assertClose(t, w, fromLE(outs[k]), o.Name)
			}
			assert.Equal(t, tc.want, names)
		})
	}
}

func TestTFServingPredict(t *testing.T) {
	a := startAgent(t, Options{}, runtime.Options{Workers: 1})
	in := input(2)
	want := reference(t, in)
	nested := make([][][]float32, 128) // one instance: [128][128][3]
	for y := range nested {
		nested[y] = make([][]float32, 128)
		for x := range nested[y] {
			nested[y][x] = in[(y*128+x)*3 : (y*128+x)*3+3]
		}
	}
	flatten := func(v any) []float32 {
		var out []float32
		var walk func(any)
		walk = func(v any) {
			switch x := v.(type) {
			case []any:
				for _, e := range x {
					walk(e)
				}
			case float64:
				out = append(out, float32(x))
			}
		}
		walk(v)
		return out
	}
	t.Run("row", func(t *testing.T) {
		resp, b := do(t, "POST", a.url+"/v1/models/face:predict", jsonBody(t, map[string]any{"instances": []any{nested}}), nil)
		require.Equal(t, 200, resp.StatusCode, string(b))
		assert.Equal(t, "1", resp.Header.Get("Outpost-Model-Version"))
		var r struct {
			Predictions []map[string]any `json:"predictions"`
		}
		require.NoError(t, json.Unmarshal(b, &r))
		require.Len(t, r.Predictions, 1)
		assertClose(t, want[0], flatten(r.Predictions[0]["regressors"]), "regressors")
		assertClose(t, want[1], flatten(r.Predictions[0]["classificators"]), "classificators")
	})
	t.Run("columnar", func(t *testing.T) {
		resp, b := do(t, "POST", a.url+"/v1/models/face/versions/1:predict", jsonBody(t, map[string]any{"inputs": []any{nested}}), nil)
		require.Equal(t, 200, resp.StatusCode, string(b))
		var r struct {
			Outputs map[string]any `json:"outputs"`
		}
		require.NoError(t, json.Unmarshal(b, &r))
		assertClose(t, want[0], flatten(r.Outputs["regressors"]), "regressors")
	})
	resp, b := do(t, "GET", a.url+"/v1/models/face", nil, nil)
	require.Equal(t, 200, resp.StatusCode)
	assert.Contains(t, string(b), `"state":"AVAILABLE"`)
}

func TestMetadataAndHealth(t *testing.T) {
	a := startAgent(t, Options{Version: "1.2.3"}, runtime.Options{Workers: 1})
	for _, tc := range []struct {
		path string
		code int
		has  string
	}{
		{"/v2", 200, `"version":"1.2.3"`},
		{"/v2/health/live", 200, `"live":true`},
		{"/v2/health/ready", 200, `"ready":true`},
		{"/v2/models/face", 200, `"shape":[1,128,128,3]`},
		{"/v2/models/face/versions/1", 200, `"model_digest":"sha256:`},
		{"/v2/models/face/ready", 200, `"ready":true`},
		{"/v2/models/face/versions/2", 404, "version 2"},
		{"/v2/models/nope", 404, `model \"nope\"`},
		{"/v2/models/face/versions/0", 400, "not a positive integer"},
		{"/v2/models/face/versions/x/infer", 400, "not a positive integer"},
		{"/v2/models/face/extra/thing", 404, "no such endpoint"},
		{"/agent/status", 200, `"delegate":"xnnpack"`},
		{"/v1/models/nope", 404, "not found"},
	} {
		resp, b := do(t, "GET", a.url+tc.path, nil, nil)
		assert.Equal(t, tc.code, resp.StatusCode, "%s: %s", tc.path, b)
		assert.Contains(t, string(b), tc.has, tc.path)
		assert.Equal(t, "application/json", resp.Header.Get("Content-Type"), tc.path)
	}
	a.srv.SetReady(false)
	resp, _ := do(t, "GET", a.url+"/v2/health/ready", nil, nil)
	assert.Equal(t, 503, resp.StatusCode)
}

func TestBadRequests(t *testing.T) {
	a := startAgent(t, Options{MaxBodyBytes: 1 << 20}, runtime.Options{Workers: 1})
	good := input(0)
	v2 := func(in map[string]any) []byte {
		return jsonBody(t, map[string]any{"inputs": []map[string]any{in}})
	}
	for _, tc := range []struct {
		name, method, path string
		body               []byte
		hdr                map[string]string
		code               int
		has                string
	}{
		{"malformed JSON", "POST", "/v2/models/face/infer", []byte(`{"inputs": [`), nil, 400, ""},
		{"not JSON at all", "POST", "/v2/models/face/infer", []byte("hello"), nil, 400, ""},
		{"wrong datatype", "POST", "/v2/models/face/infer", v2(map[string]any{"name": "input", "datatype": "INT32", "shape": []int{1, 128, 128, 3}, "data": make([]int, 49152)}), nil, 400, "datatype"},
		{"wrong shape", "POST", "/v2/models/face/infer", v2(map[string]any{"name": "input", "datatype": "FP32", "shape": []int{1, 64, 64, 3}, "data": good[:12288]}), nil, 400, "shape"},
		{"data short of shape", "POST", "/v2/models/face/infer", v2(map[string]any{"name": "input", "datatype": "FP32", "shape": []int{1, 128, 128, 3}, "data": good[:100]}), nil, 400, "input"},
		{"unknown input", "POST", "/v2/models/face/infer", v2(map[string]any{"name": "image", "datatype": "FP32", "shape": []int{1, 128, 128, 3}, "data": good}), nil, 400, `unknown input "image"`},
		{"unknown output", "POST", "/v2/models/face/infer", jsonBody(t, map[string]any{"inputs": []map[string]any{{"name": "input", "datatype": "FP32", "shape": []int{1, 128, 128, 3}, "data": good}}, "outputs": []map[string]any{{"name": "boxes"}}}), nil, 400, `unknown output "boxes"`},
		{"no inputs", "POST", "/v2/models/face/infer", []byte(`{"inputs": []}`), nil, 400, "no inputs"},
		{"unknown model", "POST", "/v2/models/nope/infer", v2(map[string]any{"name": "input", "datatype": "FP32", "shape": []int{1, 128, 128, 3}, "data": good}), nil, 404, "nope"},
		{"unknown version", "POST", "/v2/models/face/versions/7/infer", v2(map[string]any{"name": "input", "datatype": "FP32", "shape": []int{1, 128, 128, 3}, "data": good}), nil, 404, "version 7"},
		{"GET on infer", "GET", "/v2/models/face/infer", nil, nil, 405, "use POST"},
		{"POST on metadata", "POST", "/v2/models/face", nil, nil, 405, "use GET"},
		{"too large", "POST", "/v2/models/face/infer", make([]byte, 2<<20), nil, 413, ""},
		{"bad header length", "POST", "/v2/models/face/infer", []byte("{}"), map[string]string{"Inference-Header-Content-Length": "99"}, 400, "Inference-Header-Content-Length"},
		{"binary size mismatch", "POST", "/v2/models/face/infer", append([]byte(`{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"parameters":{"binary_data_size":8}}]}`), make([]byte, 8)...), map[string]string{"Inference-Header-Content-Length": "101"}, 400, ""},
		{"TF Serving malformed", "POST", "/v1/models/face:predict", []byte(`{"instances": [[1,2`), nil, 400, ""},
		{"TF Serving wrong shape", "POST", "/v1/models/face:predict", []byte(`{"instances": [[1,2,3]]}`), nil, 400, ""},
		{"TF Serving unknown model", "POST", "/v1/models/nope:predict", []byte(`{"instances": [[1]]}`), nil, 404, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, b := do(t, tc.method, a.url+tc.path, tc.body, tc.hdr)
			assert.Equal(t, tc.code, resp.StatusCode, "%s", b)
			var e struct{ Error string }
			require.NoError(t, json.Unmarshal(b, &e), "error body must be JSON: %s", b)
			assert.NotEmpty(t, e.Error)
			assert.Contains(t, e.Error, tc.has)
		})
	}
	// Still serving after all that.
	body, hdr := binaryRequest(t, good)
	resp, _ := do(t, "POST", a.url+"/v2/models/face/infer", body, hdr)
	assert.Equal(t, 200, resp.StatusCode)
}

func TestTokenAndRateLimit(t *testing.T) {
	// A slow refill, so the counts below do not depend on the machine's pace.
	a := startAgent(t, Options{Token: "s3cret", RateLimit: 0.01, RateBurst: 5}, runtime.Options{Workers: 1})
	resp, _ := do(t, "GET", a.url+"/v2/health/ready", nil, nil)
	assert.Equal(t, 200, resp.StatusCode, "health needs no token")
	resp, _ = do(t, "GET", a.url+"/v2/models/face", nil, nil)
	assert.Equal(t, 401, resp.StatusCode)
	resp, _ = do(t, "GET", a.url+"/v2/models/face", nil, map[string]string{"Authorization": "Bearer wrong"})
	assert.Equal(t, 401, resp.StatusCode)
	auth := map[string]string{"Authorization": "Bearer s3cret"}
	codes := map[int]int{}
	for range 6 {
		resp, _ = do(t, "GET", a.url+"/v2/models/face", nil, auth)
		codes[resp.StatusCode]++
		if resp.StatusCode == 429 {
			assert.NotEmpty(t, resp.Header.Get("Retry-After"))
		}
	}
	// The limit comes before the token check, so the two refused attempts
	// above spent two of the five: guessing tokens is rate limited too.
	assert.Equal(t, 3, codes[200], "burst of 5 less 2 allowed: %v", codes)
	assert.GreaterOrEqual(t, codes[429], 2, "then limited: %v", codes)
}

// A request that waits for the one interpreter longer than the request
// timeout gets 503 and says why; the others are answered. The timeout's
// timer starts only for a request that waits (requestDeadline).
func TestRequestTimeoutWhileQueued(t *testing.T) {
	a := startAgent(t, Options{RequestTimeout: time.Microsecond}, runtime.Options{Workers: 1})
	body, hdr := binaryRequest(t, input(0))
	var mu sync.Mutex
	codes := map[int]int{}
	var other []string
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 10 {
				resp, b := do(t, "POST", a.url+"/v2/models/face/infer", body, hdr)
				mu.Lock()
				codes[resp.StatusCode]++
				if resp.StatusCode == http.StatusServiceUnavailable && !strings.Contains(string(b), "deadline") {
					other = append(other, string(b))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	assert.Empty(t, other, "503s that do not name the timeout")
	assert.Equal(t, 160, codes[http.StatusOK]+codes[http.StatusServiceUnavailable], "only answers and timeouts: %v", codes)
	assert.Positive(t, codes[http.StatusOK], "%v", codes)
	require.Positive(t, codes[http.StatusServiceUnavailable], "16 callers on one interpreter never waited past 1 µs: %v", codes)
}

// With one interpreter and no room to wait, concurrent requests beyond the
// one running get 503 with Retry-After, never an error of another kind.
func TestOverloadIs503(t *testing.T) {
	a := startAgent(t, Options{}, runtime.Options{Workers: 1, MaxQueue: -1})
	body, hdr := binaryRequest(t, input(0))
	var wg sync.WaitGroup
	var ok, busy, other atomic.Int64
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 15 {
				resp, _, err := request("POST", a.url+"/v2/models/face/infer", body, hdr)
				if err != nil {
					t.Error(err)
					return
				}
				switch resp.StatusCode {
				case 200:
					ok.Add(1)
				case 503:
					busy.Add(1)
					assert.Equal(t, "1", resp.Header.Get("Retry-After"))
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	assert.Positive(t, ok.Load())
	assert.Positive(t, busy.Load(), "no request was turned away")
	assert.Zero(t, other.Load())
}

func TestMetrics(t *testing.T) {
	a := startAgent(t, Options{}, runtime.Options{Workers: 1})
	body, hdr := binaryRequest(t, input(0))
	for range 3 {
		resp, _ := do(t, "POST", a.url+"/v2/models/face/infer", body, hdr)
		require.Equal(t, 200, resp.StatusCode)
	}
	do(t, "POST", a.url+"/v2/models/face/infer", []byte("{"), nil)
	do(t, "POST", a.url+"/v2/models/nosuch/infer", body, hdr)
	do(t, "POST", a.url+"/v2/models/other/infer", body, hdr)
	_, b := do(t, "GET", a.url+"/metrics", nil, nil)
	m := string(b)
	assert.Contains(t, m, `outpost_requests_total{code="200",model="face",protocol="v2",version="1"} 3`)
	// A body that does not decode still counts against the model it named.
	assert.Contains(t, m, `outpost_requests_total{code="400",model="face",protocol="v2",version="1"} 1`)
	// Unknown names share one series: clients cannot grow the label set.
	assert.Contains(t, m, `outpost_requests_total{code="404",model="",protocol="v2",version=""} 2`)
	assert.Contains(t, m, `outpost_request_duration_seconds_count{model="face",version="1"} 3`)
	assert.Contains(t, m, `outpost_inference_phase_seconds_count{model="face",phase="invoke",version="1"} 3`)
	assert.Contains(t, m, `outpost_inference_phase_seconds_count{model="face",phase="queue",version="1"} 3`)
	assert.NotContains(t, m, `phase="total"`)
	assert.Contains(t, m, `outpost_model_info{delegate="xnnpack",digest="sha256:`)
	assert.Contains(t, m, "outpost_inflight_requests 0")
}

// Concurrent load through repeated model swaps: no request fails, and every
// answer names a version that was serving.
func TestSwapUnderLoadDropsNothing(t *testing.T) {
	a := startAgent(t, Options{}, runtime.Options{Workers: 2})
	body, hdr := binaryRequest(t, input(3))
	want := reference(t, input(3))
	data := mustRead(t, modelPath(t, face))
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var total, failed atomic.Int64
	versions := sync.Map{}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, b, err := request("POST", a.url+"/v2/models/face/infer", body, hdr)
				total.Add(1)
				if err != nil || resp.StatusCode != 200 {
					failed.Add(1)
					continue
				}
				r, outs, err := splitBinary(resp, b)
				if err == nil {
					err = closeTo(want[1], fromLE(outs[1]), "classificators")
				}
				if err != nil {
					t.Error(err)
					return
				}
				versions.Store(r.ModelVersion, true)
			}
		}()
	}
	const swaps = 10
	for v := int64(2); v <= swaps+1; v++ {
		_, err := a.reg.Load(context.Background(), "face", v, data, "test")
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	wg.Wait()
	assert.Zero(t, failed.Load(), "failed requests out of %d", total.Load())
	n := 0
	versions.Range(func(k, _ any) bool {
		v, err := strconv.Atoi(k.(string))
		assert.NoError(t, err)
		assert.True(t, v >= 1 && v <= swaps+1, "version %d", v)
		n++
		return true
	})
	assert.Greater(t, n, 1, "answers came from more than one version")
	t.Logf("%d requests through %d swaps, %d failed", total.Load(), swaps, failed.Load())
}

func TestParseRoute(t *testing.T) {
	for _, tc := range []struct {
		path string
		want route
		ok   bool
	}{
		{"/v2/models/face/infer", route{kind: "v2", model: "face", action: "infer"}, true},
		{"/v2/models/face/versions/3/infer", route{kind: "v2", model: "face", version: 3, action: "infer"}, true},
		{"/v2/models/face/versions/3", route{kind: "v2", model: "face", version: 3, action: "metadata"}, true},
		{"/v1/models/face:predict", route{kind: "v1", model: "face", action: "predict"}, true},
		{"/v1/models/face/versions/2:predict", route{kind: "v1", model: "face", version: 2, action: "predict"}, true},
		{"/v1/models/face", route{kind: "v1", model: "face", action: "status"}, true},
		{"/v2/repository/models/face/load", route{kind: "repo-load", model: "face"}, true},
		{"/v2/models/", route{}, false},
		{"/v2/models/face/versions", route{}, false},
		{"/v1/models/face/x/y", route{}, false},
		{"/v3", route{}, false},
	} {
		got, ok := parseRoute(tc.path)
		assert.Equal(t, tc.ok, ok, tc.path)
		if tc.ok {
			assert.Equal(t, tc.want, got, tc.path)
		}
	}
}

func FuzzParseRoute(f *testing.F) {
	for _, s := range []string{"/v2/models/a/versions/1/infer", "/v1/models/a:predict", "/v2/repository/models/x/load", "/v2//models"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		r, ok := parseRoute(p)
		if !ok || r.kind == "bad-version" {
			return
		}
		if (r.kind == "v1" || r.kind == "v2" || strings.HasPrefix(r.kind, "repo-") && r.kind != "repo-index") &&
			(r.model == "" || strings.Contains(r.model, "/")) {
			t.Fatalf("parseRoute(%q) gave model %q", p, r.model)
		}
		if r.version < 0 {
			t.Fatalf("parseRoute(%q) gave version %d", p, r.version)
		}
	})
}
