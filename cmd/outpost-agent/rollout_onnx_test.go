package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/models/manifest"
)

// sileroYAML serves Silero VAD v5 on 512-sample frames at 16 kHz.
const sileroYAML = `
inputs:
  input: {shape: [1, 512]}
  state: {shape: [2, 1, 128]}
  sr: {warm: 16000}
`

// The fleet rolls out a signed ONNX bundle (Silero VAD, runtime onnx in the
// manifest, a golden vector the device checks before going live) to a real
// agent that already serves a TFLite model from its configuration; the agent
// then serves both side by side over the same HTTP API, and the VAD's state
// output fed back through HTTP carries from frame to frame.
func TestFleetRolloutONNX(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end rollout: several processes")
	}
	b := build(t)
	f := startFleet(t, b, "", "")
	d := newDevice(t, f, "gw-onnx")
	cfg, err := os.ReadFile(d.config)
	require.NoError(t, err)
	cfg = fmt.Appendf(cfg, "models:\n  - {name: face, path: %s}\n%s", testModel(t, "face_detection_short_range.tflite"), sileroYAML)
	require.NoError(t, os.WriteFile(d.config, cfg, 0o644))
	agent := startServe(t, b.agent, "--config", d.config)
	pollEvery(t, 200*time.Millisecond, func() bool {
		return strings.Contains(f.cli(t, "devices", "list"), "gw-onnx")
	}, 60*time.Second, "the device never registered")

	vad := testModel(t, "silero_vad_v5.onnx")
	frame := toneFrame(0)
	golden := sileroGolden(t, vad, frame)
	goldenPath := filepath.Join(t.TempDir(), "golden.json")
	gb, err := json.Marshal([]manifest.Golden{golden})
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(goldenPath, gb, 0o644))

	out := f.cli(t, "models", "push", "--keys", f.keys, "--name", "vad", "--version", "1", "--golden", goldenPath, vad)
	require.Contains(t, out, "pushed vad v1")
	id, status := f.rollout(t, "--model", "vad", "--version", "1", "--selector", "site=north", "--waves", "100", "--max-failure-ratio", "0.1")
	require.Contains(t, status, "completed", "rollout %s:\n%s", id, status)
	pollEvery(t, 200*time.Millisecond, func() bool {
		v, _ := served(t, agent, "vad")
		return v == "1"
	}, 30*time.Second, "the agent never served vad v1")

	// Metadata shows the served (fixed) shapes.
	resp, err := http.Get(agent.url + "/v2/models/vad")
	require.NoError(t, err)
	meta, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Contains(t, string(meta), `"shape":[1,512]`)
	assert.Contains(t, string(meta), `"platform":"onnxruntime_onnx"`)

	// Both runtimes answer side by side.
	resp, err = http.Post(agent.url+"/v2/models/face/infer", "application/json", strings.NewReader(faceJSON))
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	assert.Equal(t, 200, resp.StatusCode, "face: %s", body)

	state := make([]float32, 256)
	var probs []float64
	for i := range 4 {
		p, next := vadInfer(t, agent.url, toneFrame(i), state)
		probs = append(probs, p)
		state = next
	}
	t.Logf("speech probabilities over HTTP: %v", probs)
	assert.InDelta(t, golden0(t, golden), probs[0], 1e-6, "the first frame answers as the golden vector says")
	assert.NotEqual(t, probs[0], probs[3], "the state fed back changes the answer")
	devices := f.cli(t, "devices", "list")
	assert.Contains(t, devices, "vad v1")
}

// toneFrame is 512 samples of a voiced harmonic tone, frame i of a stream.
func toneFrame(i int) []float32 {
	s := make([]float32, 512)
	for j := range s {
		t := float64(i*512+j) / 16000
		s[j] = float32(0.4*math.Sin(2*math.Pi*150*t) + 0.2*math.Sin(2*math.Pi*300*t))
	}
	return s
}

func f32bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// sileroGolden computes the golden vector in this process with the runtime
// the agent uses: frame from a zero state at 16 kHz.
func sileroGolden(t *testing.T, path string, frame []float32) manifest.Golden {
	t.Helper()
	m, err := runtime.LoadFile(path, runtime.Options{Workers: 1, Inputs: map[string]runtime.InputSpec{
		"input": {Shape: []int{1, 512}}, "state": {Shape: []int{2, 1, 128}}, "sr": {Warm: 16000}}})
	require.NoError(t, err)
	defer m.Close()
	sr := make([]byte, 8)
	binary.LittleEndian.PutUint64(sr, 16000)
	in := [][]byte{f32bytes(frame), make([]byte, 1024), sr}
	out := [][]byte{make([]byte, 4), make([]byte, 1024)}
	require.NoError(t, m.Invoke(context.Background(), in, out))
	return manifest.Golden{
		Inputs: []manifest.Data{
			{Name: "input", DataType: "FP32", Shape: []int{1, 512}, Data: in[0]},
			{Name: "state", DataType: "FP32", Shape: []int{2, 1, 128}, Data: in[1]},
			{Name: "sr", DataType: "INT64", Shape: []int{}, Data: in[2]},
		},
		Outputs: []manifest.Data{
			{Name: "output", DataType: "FP32", Shape: []int{1, 1}, Data: out[0]},
			{Name: "stateN", DataType: "FP32", Shape: []int{2, 1, 128}, Data: out[1]},
		},
		Tolerance: 1e-5,
	}
}

func golden0(t *testing.T, g manifest.Golden) float64 {
	t.Helper()
	return float64(math.Float32frombits(binary.LittleEndian.Uint32(g.Outputs[0].Data)))
}

// vadInfer sends one frame and state as v2 JSON and returns the speech
// probability and the next state.
func vadInfer(t *testing.T, url string, frame, state []float32) (float64, []float32) {
	t.Helper()
	req := map[string]any{"inputs": []map[string]any{
		{"name": "input", "datatype": "FP32", "shape": []int{1, 512}, "data": frame},
		{"name": "state", "datatype": "FP32", "shape": []int{2, 1, 128}, "data": state},
		{"name": "sr", "datatype": "INT64", "shape": []int{}, "data": []int64{16000}},
	}}
	body, err := json.Marshal(req)
	require.NoError(t, err)
	resp, err := http.Post(url+"/v2/models/vad/infer", "application/json", strings.NewReader(string(body)))
	require.NoError(t, err)
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	require.Equal(t, 200, resp.StatusCode, "vad infer: %s", rb)
	var got struct {
		Outputs []struct {
			Name string    `json:"name"`
			Data []float64 `json:"data"`
		} `json:"outputs"`
	}
	require.NoError(t, json.Unmarshal(rb, &got), "%s", rb)
	require.Len(t, got.Outputs, 2)
	next := make([]float32, len(got.Outputs[1].Data))
	for i, v := range got.Outputs[1].Data {
		next[i] = float32(v)
	}
	require.Len(t, next, 256)
	return got.Outputs[0].Data[0], next
}

// TestONNXRuntimeMappedOnlyWhenUsed: an agent that serves only TFLite never
// maps the ONNX Runtime library (docs/RUNTIMES.md); one serving an ONNX
// model does.
func TestONNXRuntimeMappedOnlyWhenUsed(t *testing.T) {
	b := build(t)
	mapped := func(s *serving) bool {
		t.Helper()
		maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", s.cmd.Process.Pid))
		require.NoError(t, err)
		return strings.Contains(string(maps), "libonnxruntime")
	}
	tfl := startServe(t, b.agent, "--model", testModel(t, "face_detection_short_range.tflite"), "--name", "face")
	assert.False(t, mapped(tfl), "a TFLite-only agent mapped ONNX Runtime")
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	require.NoError(t, os.WriteFile(cfg, fmt.Appendf(nil, "models:\n  - {name: vad, path: %s}\n%s", testModel(t, "silero_vad_v5.onnx"), sileroYAML), 0o644))
	onnx := startServe(t, b.agent, "--config", cfg)
	assert.True(t, mapped(onnx), "an agent serving an ONNX model did not map ONNX Runtime")
}
