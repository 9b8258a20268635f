package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/outpost-edge/outpost/fleet/export"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/models/manifest"
)

var modelsExportCommand = subcommand.Command{
	Name:    "models export",
	Summary: "sign a model version and write an offline bundle (the USB-stick path)",
	Run:     runModelsExport,
}

func runModelsExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("models export", stderr)
	keys := fs.String("keys", "", "keys directory made by keys init (required)")
	name := fs.String("name", "", "model name (required)")
	ver := fs.Int64("version", 0, "model version, a positive integer (required)")
	expires := fs.Duration("expires", export.DefaultExpires, "how long the bundle may be installed")
	out := fs.String("out", "", "bundle directory to write (required)")
	golden := fs.String("golden", "", "JSON file with golden test vectors to sign into the manifest")
	minAgent := fs.String("min-agent", "", "oldest agent version allowed to run the model")
	rollback := fs.Bool("rollback", false, "sign a rollback instruction: devices may go back to this version")
	ref := addReferenceFlags(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-fleet models export --keys KEYS --name N --version V [--expires DURATION] [--reference PROFILE.json|INPUTS] --out DIR MODEL.tflite")
		fs.PrintDefaults()
	}
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *keys == "" || *name == "" || *ver < 1 || *out == "" {
		fs.Usage()
		return subcommand.UsageError("--keys, --name, --version (positive), --out and one model file are required")
	}
	reference, err := ref.load(ctx, pos[0], stderr)
	if err != nil {
		return err
	}
	m, err := exportBundle(*keys, *golden, export.Options{Name: *name, Version: *ver, Model: pos[0], Out: *out,
		Expires: *expires, MinAgentVersion: *minAgent, Rollback: *rollback, Reference: reference})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "exported %s v%d sha256:%s %d bytes to %s\n", m.Name, m.Version, m.SHA256, m.Length, *out)
	describe(stdout, "input", m.Inputs)
	describe(stdout, "output", m.Outputs)
	describeReference(stdout, m)
	return nil
}

// describeReference says what reference profile was signed in, if any.
func describeReference(w io.Writer, m *manifest.Manifest) {
	if p := m.Reference; p != nil {
		fmt.Fprintf(w, "  reference: %d features from %d requests\n", len(p.Features), p.Requests)
	}
}

// exportBundle signs a bundle with the keys in keysDir, with the golden
// vectors in goldenPath (JSON) when it is not empty.
func exportBundle(keysDir, goldenPath string, opts export.Options) (*manifest.Manifest, error) {
	if goldenPath != "" {
		b, err := os.ReadFile(goldenPath)
		if err != nil {
			return nil, err
		}
		if err := json.Unmarshal(b, &opts.Golden); err != nil {
			return nil, fmt.Errorf("golden %s: %w", goldenPath, err)
		}
	}
	k, err := keyring.Open(keysDir, keyring.Options{})
	if err != nil {
		return nil, err
	}
	return export.Export(k, opts)
}

func describe(w io.Writer, kind string, ts []manifest.Tensor) {
	for _, t := range ts {
		fmt.Fprintf(w, "  %s %s %s %v\n", kind, t.Name, t.DataType, t.Shape)
	}
}
