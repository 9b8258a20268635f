//go:build cgo

package api

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
)

// TestCanaryRoutingKey: with a candidate in canary, a request's
// Outpost-Routing-Key sends it to the same version every time, over OIP v2
// and TF Serving alike; every answer names the version that gave it, and
// the metrics count each version's requests apart.
func TestCanaryRoutingKey(t *testing.T) {
	a := startAgent(t, Options{}, runtime.Options{Workers: 1})
	_, err := a.reg.StartTrial(context.Background(), "face", 2, mustRead(t, modelPath(t, face)), serving.Trial{Mode: serving.Canary, Percent: 50})
	require.NoError(t, err)
	in := input(0)
	body, hdr := binaryRequest(t, in)
	nested := make([][][]float32, 128)
	for y := range nested {
		nested[y] = make([][]float32, 128)
		for x := range nested[y] {
			nested[y][x] = in[(y*128+x)*3 : (y*128+x)*3+3]
		}
	}
	predict := jsonBody(t, map[string]any{"instances": []any{nested}})
	versions := map[string]int{}
	for k := range 16 {
		h := map[string]string{"Outpost-Routing-Key": fmt.Sprintf("camera-%d", k)}
		for name, v := range hdr {
			h[name] = v
		}
		var first string
		for i := range 3 {
			resp, b := do(t, "POST", a.url+"/v2/models/face/infer", body, h)
			require.Equal(t, 200, resp.StatusCode, string(b))
			r, _ := splitBinaryResponse(t, resp, b)
			if i == 0 {
				first = r.ModelVersion
			}
			require.Equal(t, first, r.ModelVersion, "key %d moved", k)
		}
		resp, b := do(t, "POST", a.url+"/v1/models/face:predict", predict, map[string]string{"Outpost-Routing-Key": h["Outpost-Routing-Key"]})
		require.Equal(t, 200, resp.StatusCode, string(b))
		assert.Equal(t, first, resp.Header.Get("Outpost-Model-Version"), "key %d: TF Serving went to another arm than OIP v2", k)
		versions[first]++
	}
	assert.Positive(t, versions["1"], "no key went to the serving version")
	assert.Positive(t, versions["2"], "no key went to the candidate")

	// Metadata for the candidate's version, and per-version metrics.
	resp, b := do(t, "GET", a.url+"/v2/models/face/versions/2", nil, nil)
	require.Equal(t, 200, resp.StatusCode, "metadata of the canary's version: %s", b)
	_, b = do(t, "GET", a.url+"/metrics", nil, nil)
	for _, v := range []string{"1", "2"} {
		assert.Contains(t, string(b), `outpost_request_duration_seconds_count{model="face",version="`+v+`"}`)
	}
	a.reg.EndTrial("face")
	resp, b = do(t, "POST", a.url+"/v2/models/face/infer", body, map[string]string{"Outpost-Routing-Key": "camera-1", "Inference-Header-Content-Length": hdr["Inference-Header-Content-Length"]})
	require.Equal(t, 200, resp.StatusCode, string(b))
	r, _ := splitBinaryResponse(t, resp, b)
	assert.Equal(t, "1", r.ModelVersion, "the trial ended: the serving version answers every key")
}

// TestErrorNamesVersion: an error from a version that took the request
// names that version, a canary's as well as the serving one's, over OIP v2
// and TF Serving; an error no version took names none.
func TestErrorNamesVersion(t *testing.T) {
	a := startAgent(t, Options{}, runtime.Options{Workers: 1})
	bad := jsonBody(t, map[string]any{"inputs": []map[string]any{{
		"name": "input", "datatype": "FP32", "shape": []int{1, 2}, "data": []float32{1, 2}}}})
	badPredict := jsonBody(t, map[string]any{"instances": []any{[]float32{1, 2}}})
	check := func(want string) {
		t.Helper()
		resp, b := do(t, "POST", a.url+"/v2/models/face/infer", bad, nil)
		require.Equal(t, 400, resp.StatusCode, string(b))
		assert.Equal(t, want, resp.Header.Get("Outpost-Model-Version"), "v2: %s", b)
		resp, b = do(t, "POST", a.url+"/v1/models/face:predict", badPredict, nil)
		require.Equal(t, 400, resp.StatusCode, string(b))
		assert.Equal(t, want, resp.Header.Get("Outpost-Model-Version"), "TF Serving: %s", b)
	}
	check("1")
	_, err := a.reg.StartTrial(context.Background(), "face", 2, mustRead(t, modelPath(t, face)), serving.Trial{Mode: serving.Canary, Percent: 100})
	require.NoError(t, err)
	check("2")
	resp, b := do(t, "POST", a.url+"/v2/models/nope/infer", bad, nil)
	require.Equal(t, 404, resp.StatusCode, string(b))
	assert.Empty(t, resp.Header.Get("Outpost-Model-Version"))
}
