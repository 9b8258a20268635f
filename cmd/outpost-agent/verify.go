package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/agent/version"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/models/bundle"
	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
)

var verifyCommand = subcommand.Command{
	Name:    "verify",
	Summary: "check a signed model bundle against a trusted root",
	Run:     runVerify,
}

func runVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify", stderr)
	rootPath := fs.String("root", "", "trusted root.json the device was provisioned with (required)")
	clock := testClock(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-agent verify --root ROOT.json BUNDLE\n\nExits 0 only for a bundle whose signatures, expiry and model bytes check out.")
		fs.PrintDefaults()
	}
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *rootPath == "" {
		fs.Usage()
		return subcommand.UsageError("expected --root and exactly one bundle directory")
	}
	anchor, err := loadAnchor(*rootPath)
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
	printVerified(stdout, v)
	return nil
}

func loadAnchor(path string) (*trust.Root, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	r, err := trust.LoadRoot(b)
	if err != nil {
		return nil, fmt.Errorf("root %s is not a valid self-signed root: %w", path, err)
	}
	return r, nil
}

func printVerified(w io.Writer, v *bundle.Verified) {
	m := v.Manifest()
	fmt.Fprintf(w, "ok: %s v%d sha256:%s %d bytes (release %d, expires %s, root v%d)\n",
		m.Name, m.Version, m.SHA256, m.Length, v.Release.Serial, v.Release.Expires.Format(time.RFC3339), v.Root.Doc.Version)
}

// refused turns a verification or install error into the one line an
// operator reads: what was refused, then the detail.
func refused(err error) error {
	reasons := []struct {
		err error
		why string
	}{
		{dsse.ErrThreshold, "not signed by enough trusted keys"},
		{dsse.ErrPayloadType, "wrong kind of signed document"},
		{dsse.ErrMalformed, "malformed signed metadata"},
		{trust.ErrExpired, "signed metadata expired"},
		{trust.ErrRootVersion, "broken root chain"},
		{trust.ErrInvalid, "invalid signed metadata"},
		{manifest.ErrDigest, "model bytes do not match the signed digest"},
		{manifest.ErrTooLong, "model longer than signed"},
		{manifest.ErrTooShort, "model shorter than signed"},
		{manifest.ErrInvalid, "invalid manifest"},
		{bundle.ErrAgentTooOld, "agent too old for this model"},
		{store.ErrRollback, "rollback to an older version"},
		{store.ErrConflict, "same version, different bytes"},
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return fmt.Errorf("refused: %s: %w", r.why, err)
		}
	}
	return fmt.Errorf("refused: %w", err)
}
