package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/agent/version"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/models/bundle"
	"github.com/outpost-edge/outpost/models/trust"
)

var installCommand = subcommand.Command{
	Name:    "install",
	Summary: "verify a signed model bundle and make it the current model",
	Run:     runInstall,
}

func runInstall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("install", stderr)
	rootPath := fs.String("root", "", "trusted root.json (required until the data dir holds a root)")
	dataDir := fs.String("data-dir", "", "the agent's data directory (required)")
	verbose := fs.Bool("v", false, "log store events to stderr")
	clock := testClock(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-agent install --root ROOT.json --data-dir DIR BUNDLE\n\nVerifies the bundle, then installs it as the current model, refusing rollbacks.")
		fs.PrintDefaults()
	}
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *dataDir == "" {
		fs.Usage()
		return subcommand.UsageError("expected --data-dir and exactly one bundle directory")
	}
	log := slog.New(slog.DiscardHandler)
	if *verbose {
		log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	st, err := store.OpenDataDir(*dataDir, store.Options{Logger: log})
	if err != nil {
		return err
	}
	anchor, err := deviceAnchor(st, *rootPath)
	if err != nil {
		return err
	}
	now, err := clock()
	if err != nil {
		return err
	}
	v, err := bundle.Verify(pos[0], anchor, bundle.Options{Now: now, AgentVersion: version.Version})
	if err != nil {
		return refused(err)
	}
	// Keep the newest root even if the install below is refused: the keys
	// it revoked stay revoked on this device.
	if err := st.SaveRoot(v.Root); err != nil {
		return err
	}
	model, err := v.Open()
	if err != nil {
		return err
	}
	defer model.Close()
	m := v.Manifest()
	_, err = st.Install(store.InstallRequest{Manifest: *m, Serial: v.Release.Serial, Release: v.Raw, Model: model})
	switch {
	case errors.Is(err, store.ErrInstalled):
		fmt.Fprintf(stdout, "already installed: %s v%d\n", m.Name, m.Version)
		return nil
	case err != nil:
		return refused(err)
	}
	prev := "none"
	if p, err := st.Previous(m.Name); err == nil {
		prev = fmt.Sprintf("v%d", p.Manifest.Version)
	}
	fmt.Fprintf(stdout, "installed: %s v%d sha256:%s (previous %s)\n", m.Name, m.Version, m.SHA256, prev)
	return nil
}

// deviceAnchor picks the trust anchor. Once the data dir holds a root (saved
// by an earlier install, possibly newer than the provisioned one), that root
// is the anchor and --root is not consulted: a root handed on the command
// line must not undo a rotation the device already followed. A stored root
// that cannot be read fails closed, since it may carry revocations.
func deviceAnchor(st *store.Store, rootPath string) (*trust.Root, error) {
	b, err := st.Root()
	switch {
	case errors.Is(err, store.ErrNotFound):
		if rootPath == "" {
			return nil, subcommand.UsageError("--root is required: the data dir holds no trusted root yet")
		}
		return loadAnchor(rootPath)
	case err != nil:
		return nil, err
	}
	stored, err := trust.LoadRoot(b)
	if err != nil {
		return nil, fmt.Errorf("stored root in the data dir is unreadable, refusing to guess: %w", err)
	}
	return stored, nil
}
