// Package testmodel finds the TFLite and ONNX test models that `make setup`
// fetches, for tests in any package, and builds tiny ONNX models in memory. It looks in $OUTPOST_MODELS, else in .deps/models
// at the repository root, and fails the test (never skips) when a model is
// missing, so CI cannot pass without them.
package testmodel

import (
	"os"
	"path/filepath"
	"testing"
)

// Names of the test models.
const (
	FaceShort = "face_detection_short_range"
	FaceFull  = "face_detection_full_range"
	Hand      = "hand_landmark_lite"
	// HandFull has Hand's signature, answers differently and is slower:
	// the candidate that a trial must tell apart from Hand.
	HandFull = "hand_landmark_full"
	Selfie   = "selfie_segmentation"
	// SileroVAD is Silero VAD v5, a stateful ONNX model (name with extension).
	SileroVAD = "silero_vad_v5.onnx"
)

// Dir returns the directory holding the test models.
func Dir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("OUTPOST_MODELS"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatalf("testmodel: %v", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return filepath.Join(d, ".deps", "models")
		}
		if filepath.Dir(d) == d {
			t.Fatalf("testmodel: no go.mod above %s and OUTPOST_MODELS unset: run make setup", wd)
		}
	}
}

// Path returns the path of model name: without an extension it is a
// .tflite model.
func Path(t testing.TB, name string) string {
	t.Helper()
	if filepath.Ext(name) == "" {
		name += ".tflite"
	}
	p := filepath.Join(Dir(t), name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("testmodel: %v: run make setup", err)
	}
	return p
}

// Read returns the bytes of model name.
func Read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(Path(t, name))
	if err != nil {
		t.Fatalf("testmodel: %v: run make setup", err)
	}
	return b
}
