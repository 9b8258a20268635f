// Package export makes offline bundles: it describes a .tflite or .onnx file
// (digest, length, runtime, tensor signature read by models/tflite or
// models/onnx), signs the release with the fleet's keyring and writes the
// bundle directory a device installs from.
package export

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/models/bundle"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/onnx"
	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/models/tflite"
)

// DefaultExpires is how long a release stays installable by default.
const DefaultExpires = 30 * 24 * time.Hour

// Options describe one export. Name, Version, Model and Out are required.
type Options struct {
	Name    string
	Version int64
	// Model is the path of the .tflite file.
	Model string
	// Out is the bundle directory to create.
	Out string
	// Expires is how long the release may be installed; zero means
	// DefaultExpires.
	Expires time.Duration
	// Golden test vectors to sign into the manifest.
	Golden []manifest.Golden
	// MinAgentVersion is the oldest agent allowed to run the model.
	MinAgentVersion string
	// Rollback marks the release as a signed instruction that devices may go
	// back to this version from a newer one.
	Rollback bool
	// Reference is the model's reference profile to sign into the manifest
	// (made by `outpost-agent profile`); nil for none.
	Reference *profile.Profile
}

// Export signs and writes a bundle; it returns the signed manifest.
func Export(k *keyring.Keyring, opts Options) (*manifest.Manifest, error) {
	if opts.Expires <= 0 {
		opts.Expires = DefaultExpires
	}
	b, err := os.ReadFile(opts.Model)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	// An ONNX ModelProto starts with its ir_version (tag byte 0x08); a
	// TFLite flatbuffer never does (its first 4 bytes are a root offset).
	runtime, inputs, outputs := manifest.RuntimeTFLite, []manifest.Tensor(nil), []manifest.Tensor(nil)
	if len(b) > 0 && b[0] == 0x08 {
		sig, err := onnx.Read(b)
		if err != nil {
			return nil, fmt.Errorf("export: %s: %w", opts.Model, err)
		}
		runtime = manifest.RuntimeONNX
		inputs, outputs = sig.Manifest()
	} else {
		sig, err := tflite.Read(b)
		if err != nil {
			return nil, fmt.Errorf("export: %s: %w", opts.Model, err)
		}
		inputs, outputs = sig.Inputs, sig.Outputs
	}
	sum := sha256.Sum256(b)
	m := manifest.Manifest{
		Name:            opts.Name,
		Version:         opts.Version,
		SHA256:          hex.EncodeToString(sum[:]),
		Length:          int64(len(b)),
		Runtime:         runtime,
		Inputs:          inputs,
		Outputs:         outputs,
		Golden:          opts.Golden,
		MinAgentVersion: opts.MinAgentVersion,
		Rollback:        opts.Rollback,
		Reference:       opts.Reference,
	}
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	release, err := k.SignRelease(m, opts.Expires)
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	roots, err := k.Roots()
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	if err := bundle.Write(opts.Out, roots, release, bytes.NewReader(b)); err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	return &m, nil
}
