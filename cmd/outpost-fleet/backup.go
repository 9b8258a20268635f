package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var backupCommand = subcommand.Command{
	Name:    "backup",
	Summary: "copy the embedded store consistently while serve runs (restore: docs/STORE.md)",
	Run:     runBackup,
}

func runBackup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("backup", stderr)
	config := fs.String("config", "", "fleet.yaml (for data_dir and store)")
	dataDir := fs.String("data-dir", "", "the data dir of serve (default outpost-fleet-data)")
	store := fs.String("store", "", "the store of serve, if not the embedded one in the data dir")
	out := fs.String("out", "", "the backup file to write (must not exist)")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if *out == "" {
		fs.Usage()
		return subcommand.UsageError("--out is required")
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
	if err := registry.Backup(ctx, cfg.Store, *out); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "outpost-fleet: backup of %s written to %s\n", cfg.Store, *out)
	return nil
}
