package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func inspect(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := runInspect(context.Background(), args, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestInspectONNX(t *testing.T) {
	vad := testModel(t, "silero_vad_v5.onnx")
	out, err := inspect(t, vad, "--input", "input=1,512", "--input", "state=2,1,128", "--input", "sr=@16000", "--delegate", "cuda")
	require.NoError(t, err)
	for _, want := range []string{
		"format:   onnx", "runtime:  onnxruntime 1.30.0", "opset ai.onnx 16",
		"[? ?]", "[2 ? 128]", "[? ? ?]", // declared, open dimensions shown
		"[1 512]", "[2 1 128]", // served
		"delegate: cpu", "skipped cuda",
	} {
		assert.Contains(t, out, want)
	}

	// Without the inputs fixed it still describes the file and says why it
	// cannot run so.
	out, err = inspect(t, vad, "--json")
	require.NoError(t, err)
	var rep inspectReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	assert.Equal(t, "onnx", rep.Format)
	require.NotNil(t, rep.ONNX)
	assert.Equal(t, int64(16), rep.ONNX.Opsets[""])
	assert.Len(t, rep.ONNX.Inputs, 3)
	assert.Contains(t, rep.LoadError, "warm-up")
	assert.Empty(t, rep.Inputs)
}

func TestInspectTFLite(t *testing.T) {
	out, err := inspect(t, testModel(t, "face_detection_short_range.tflite"))
	require.NoError(t, err)
	assert.Contains(t, out, "format:   tflite")
	assert.Contains(t, out, "delegate: xnnpack")
	assert.Contains(t, out, "[1 128 128 3]")
}

func TestInspectBad(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"inspect_test.go"}, "nor an ONNX model"},
		{[]string{testModel(t, "silero_vad_v5.onnx"), "--input", "input=1,x"}, "not a positive integer"},
		{[]string{testModel(t, "silero_vad_v5.onnx"), "--input", "nameonly"}, "NAME=SHAPE"},
	} {
		_, err := inspect(t, tc.args...)
		assert.ErrorContains(t, err, tc.want, "%v", tc.args)
	}
}
