package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/agent/batch"
	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/runtime"
	registry "github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/onnx"
	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/models/tflite"
)

var profileCommand = subcommand.Command{
	Name:    "profile",
	Summary: "run a model over reference inputs and write its reference profile (docs/MONITORING.md)",
	Run:     runProfile,
}

func runProfile(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("profile", stderr)
	model := fs.String("model", "", "the .tflite or .onnx file (required)")
	reference := fs.String("reference", "", "reference inputs: a directory (.bin/.raw: the inputs' raw little-endian bytes concatenated in the model's input order; .npy: one tensor; .json: a v2 request), a .jsonl file of v2 requests or an .npy file whose rows are the requests (required)")
	out := fs.String("out", "", "profile JSON to write (default: standard output)")
	bins := fs.Int("bins", profile.DefaultBins, "bins per feature (edges at the reference's quantiles), at least 20")
	skipBad := fs.Bool("skip-bad", false, "leave out reference items that cannot be read or run instead of failing")
	threads := fs.Int("threads", 0, "threads per interpreter (default 1)")
	every := fs.Duration("progress-every", 5*time.Second, "period of the progress lines on standard error (0: none)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-agent profile --model MODEL --reference PATH [--out profile.json] [--bins N]")
		fs.PrintDefaults()
	}
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 || *model == "" || *reference == "" {
		fs.Usage()
		return subcommand.UsageError("--model and --reference are required, and nothing else")
	}
	if *bins < profile.DefaultBins {
		// Fewer bins make drift scores erratic on the small shifts that
		// matter (docs/MONITORING.md).
		return subcommand.UsageError(fmt.Sprintf("--bins must be at least %d", profile.DefaultBins))
	}
	data, err := os.ReadFile(*model)
	if err != nil {
		return err
	}
	sig, x, err := extractorOf(data)
	if err != nil {
		return fmt.Errorf("%s: %w", *model, err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	reg := registry.New(registry.Options{Runtime: runtime.Options{Workers: 1, Threads: *threads}, Logger: log})
	defer reg.Close()
	name := "reference"
	e, err := reg.Load(ctx, name, 1, data, "file")
	if err != nil {
		return err
	}
	if err := checkOrder(sig, e); err != nil {
		return err
	}
	p, err := buildProfile(ctx, reg, e, x, profileRun{path: *reference, bins: *bins, skipBad: *skipBad, every: *every, progress: stderr})
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(p, "", " ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if *out == "" {
		_, err = stdout.Write(b)
		return err
	}
	if err := atomicfile.WriteFile(*out, b, atomicfile.Options{}); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	fmt.Fprintf(stderr, "outpost-agent: profile: %d features over %d requests written to %s\n", len(p.Features), p.Requests, *out)
	return nil
}

// extractorOf reads the model's signature as the fleet does when it signs
// the manifest, so the profile's features are the ones the manifest's
// signature gives.
func extractorOf(data []byte) (*manifest.Manifest, *profile.Extractor, error) {
	var m manifest.Manifest
	if len(data) > 0 && data[0] == 0x08 { // an ONNX ModelProto (as fleet/export tells them)
		sig, err := onnx.Read(data)
		if err != nil {
			return nil, nil, err
		}
		m.Inputs, m.Outputs = sig.Manifest()
	} else {
		sig, err := tflite.Read(data)
		if err != nil {
			return nil, nil, err
		}
		m.Inputs, m.Outputs = sig.Inputs, sig.Outputs
	}
	x, err := m.Extractor()
	return &m, x, err
}

// checkOrder makes sure the runtime serves the tensors in the signature's
// order, which the features follow.
func checkOrder(m *manifest.Manifest, e catalog.Entry) error {
	for _, side := range []struct {
		ms []manifest.Tensor
		ts []tensor.Info
	}{{m.Inputs, e.Inputs}, {m.Outputs, e.Outputs}} {
		if len(side.ms) != len(side.ts) {
			return fmt.Errorf("profile: the runtime serves %d tensors where the signature has %d", len(side.ts), len(side.ms))
		}
		for i := range side.ms {
			if side.ms[i].Name != side.ts[i].Name {
				return fmt.Errorf("profile: the runtime serves tensor %q where the signature has %q", side.ts[i].Name, side.ms[i].Name)
			}
		}
	}
	return nil
}

type profileRun struct {
	path     string
	bins     int
	skipBad  bool
	every    time.Duration
	progress io.Writer
}

// buildProfile runs every reference item through the model and builds the
// profile from their features. Bad items are named one per line; they fail
// the run unless skipBad.
func buildProfile(ctx context.Context, reg *registry.Registry, e catalog.Entry, x *profile.Extractor, r profileRun) (*profile.Profile, error) {
	b := profile.NewBuilder(x.Names())
	vals := make([]float64, x.Len())
	outs := make([][]byte, len(e.Outputs))
	var bad, seen int
	start, last := time.Now(), time.Now()
	err := batch.Each(r.path, e, 0, func(key string, ins [][]byte, err error) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		seen++
		if err == nil {
			err = profileOne(ctx, reg, e, x, ins, outs, vals)
		}
		if err != nil {
			bad++
			msg := strings.TrimPrefix(strings.TrimPrefix(err.Error(), batch.ErrItem.Error()+": "), key+": ")
			if !r.skipBad {
				return fmt.Errorf("profile: %s: %s (--skip-bad leaves such items out)", key, msg)
			}
			fmt.Fprintf(r.progress, "outpost-agent: profile: skipped %s: %s\n", key, msg)
			return nil
		}
		if err := b.Add(vals); err != nil {
			return err
		}
		if r.every > 0 && time.Since(last) >= r.every {
			last = time.Now()
			fmt.Fprintf(r.progress, "outpost-agent: profile: %d requests (%.0f/s), %d bad\n", b.Requests(), float64(seen)/time.Since(start).Seconds(), bad)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, batch.ErrInput) {
			return nil, fmt.Errorf("profile: --reference %s: %w", r.path, err)
		}
		return nil, err
	}
	p, err := b.Build(r.bins)
	if errors.Is(err, profile.ErrTooFew) {
		return nil, fmt.Errorf("%w (%s held %d items, %d bad)", err, filepath.Base(r.path), seen, bad)
	}
	return p, err
}

// profileOne runs one request and writes its features into vals.
func profileOne(ctx context.Context, reg *registry.Registry, e catalog.Entry, x *profile.Extractor, ins, outs [][]byte, vals []float64) error {
	_, _, err := reg.Infer(ctx, e.Name, e.Version,
		func(catalog.Entry) ([][]byte, error) { return ins, nil },
		func(i int, data []byte) error {
			if i < len(outs) {
				outs[i] = append(outs[i][:0], data...)
			}
			return nil
		})
	if err != nil {
		return err
	}
	return x.Extract(ins, outs, vals)
}
