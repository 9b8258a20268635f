// Package catalog describes the models an agent serves: identity (name,
// version, digest), tensor signature and the delegate running them. It is
// shared by the serving registry, the HTTP API and telemetry, and has no cgo.
package catalog

import (
	"errors"
	"time"

	"github.com/outpost-edge/outpost/agent/tensor"
)

// Errors for lookups; callers use errors.Is.
var (
	// ErrModelNotFound: no model of that name is served.
	ErrModelNotFound = errors.New("model not found")
	// ErrVersionNotFound: the model is served, but not at that version.
	ErrVersionNotFound = errors.New("model version not found")
	// ErrOverloaded: too many calls wait for the model; retry later.
	ErrOverloaded = errors.New("overloaded")
	// ErrBadInput: the inputs do not fit the model's signature.
	ErrBadInput = errors.New("bad input")
)

// Entry is one served model.
type Entry struct {
	Name string `json:"name"`
	// Version is a positive integer, as in TF Serving.
	Version int64 `json:"version"`
	// Digest is "sha256:<hex>" of the model file.
	Digest  string        `json:"digest"`
	Inputs  []tensor.Info `json:"inputs"`
	Outputs []tensor.Info `json:"outputs"`
	// Runtime is "tflite" or "onnx" (as a signed manifest names it).
	Runtime string `json:"runtime"`
	// Delegate is what runs it: "xnnpack", "cpu" or "external(<path>)"
	// (TFLite), "cpu", "cuda" or "tensorrt" (ONNX Runtime),
	// with the nodes it took out of the graph's total.
	Delegate       string    `json:"delegate"`
	DelegatedNodes int       `json:"delegated_nodes"`
	TotalNodes     int       `json:"total_nodes"`
	Workers        int       `json:"workers"`
	Source         string    `json:"source,omitempty"`
	LoadedAt       time.Time `json:"loaded_at"`
}

// Timing splits one inference into waiting for an interpreter and running it.
type Timing struct {
	Queue, Invoke time.Duration
}
