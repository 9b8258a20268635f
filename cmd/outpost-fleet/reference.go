package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/outpost-edge/outpost/models/profile"
)

// referenceFlags are --reference and --agent-bin of models export and push.
type referenceFlags struct {
	path, agentBin *string
}

func addReferenceFlags(fs *flag.FlagSet) referenceFlags {
	return referenceFlags{
		path:     fs.String("reference", "", "reference profile to sign into the manifest: a profile JSON made by outpost-agent profile, or reference inputs (a directory, a .jsonl or an .npy file) that outpost-agent profile runs the model over"),
		agentBin: fs.String("agent-bin", "", "outpost-agent binary that computes the profile from reference inputs (default: next to this binary, then on PATH)"),
	}
}

// load returns the reference profile the flags name, nil without
// --reference. A .json file is a profile already made; anything else is
// reference inputs, profiled by running outpost-agent profile on the model
// (the controller has no model runtime: it has no cgo).
func (f referenceFlags) load(ctx context.Context, model string, stderr io.Writer) (*profile.Profile, error) {
	path := *f.path
	if path == "" {
		return nil, nil
	}
	if fi, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("--reference: %w", err)
	} else if !fi.IsDir() && strings.EqualFold(filepath.Ext(path), ".json") {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--reference: %w", err)
		}
		p, err := profile.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("--reference %s (a .json file is a profile made by outpost-agent profile): %w", path, err)
		}
		return p, nil
	}
	agent, err := f.agent()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "outpost-profile-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "profile.json")
	cmd := exec.CommandContext(ctx, agent, "profile", "--model", model, "--reference", path, "--out", out)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("--reference %s: %s profile: %w", path, agent, err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("--reference %s: %w", path, err)
	}
	p, err := profile.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("--reference %s: the profile %s made: %w", path, agent, err)
	}
	return p, nil
}

// agent finds outpost-agent: --agent-bin, else next to this binary, else on
// PATH.
func (f referenceFlags) agent() (string, error) {
	if *f.agentBin != "" {
		if _, err := os.Stat(*f.agentBin); err != nil {
			return "", fmt.Errorf("--agent-bin: %w", err)
		}
		return *f.agentBin, nil
	}
	self, err := os.Executable()
	if err == nil {
		next := filepath.Join(filepath.Dir(self), "outpost-agent")
		if fi, err := os.Stat(next); err == nil && !fi.IsDir() {
			return next, nil
		}
	}
	if p, err := exec.LookPath("outpost-agent"); err == nil {
		return p, nil
	} else if !errors.Is(err, exec.ErrNotFound) {
		return "", err
	}
	return "", fmt.Errorf("--reference %s holds inputs, and outpost-agent, which runs the model over them (this binary has no model runtime), is not next to %s nor on PATH: give --agent-bin, or a profile JSON made by outpost-agent profile", *f.path, self)
}
