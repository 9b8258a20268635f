package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/outpost-edge/outpost/fleet/dataset"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var samplesExportCommand = subcommand.Command{
	Name:    "samples export",
	Summary: "write the samples the controller kept as .npy files plus index.jsonl, for retraining",
	Run:     runSamplesExport,
}

// runSamplesExport reads the store directly, as backup does, so it works
// beside a running serve and without its admin API.
func runSamplesExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("samples export", stderr)
	config := fs.String("config", "", "fleet.yaml (for data_dir and store)")
	dataDir := fs.String("data-dir", "", "the data dir of serve (default outpost-fleet-data)")
	store := fs.String("store", "", "the store of serve, if not the embedded one in the data dir")
	model := fs.String("model", "", "the model whose samples to write (required)")
	version := fs.String("version", "", "only this version (default: every version)")
	since := fs.String("since", "", "only samples taken since this RFC 3339 time, or this long ago (24h)")
	out := fs.String("out", "", "the directory to write (must be empty or absent)")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if *model == "" || *out == "" {
		fs.Usage()
		return subcommand.UsageError("--model and --out are required")
	}
	f := registry.SampleFilter{Model: *model, Version: *version}
	if *since != "" {
		t, err := time.Parse(time.RFC3339, *since)
		if err != nil {
			d, derr := time.ParseDuration(*since)
			if derr != nil || d < 0 {
				return subcommand.UsageError(fmt.Sprintf("--since %q: want an RFC 3339 time or a duration such as 24h", *since))
			}
			t = time.Now().Add(-d)
		}
		f.Since = t
	}
	cfg, err := loadFleetConfig(*config)
	if err != nil {
		return subcommand.UsageError(err.Error())
	}
	if *dataDir != "" {
		cfg.DataDir = *dataDir
	}
	if *store != "" {
		cfg.Store = *store
	}
	if cfg.Store == "" {
		cfg.Store = filepath.Join(cfg.DataDir, registry.StoreFile)
	}
	// Read only, beside serve: no migration of a store serve is using.
	reg, err := registry.Open(cfg.DataDir, registry.Options{Store: cfg.Store, NoMigrate: true})
	if err != nil {
		return err
	}
	defer reg.Close()
	n, err := dataset.Write(reg, f, *out)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "outpost-fleet: %d samples of %s written to %s\n", n, *model, *out)
	return nil
}
