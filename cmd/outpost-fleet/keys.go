package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/models/trust"
)

var keysInitCommand = subcommand.Command{
	Name:    "keys init",
	Summary: "create signing keys and root.json, the file devices are provisioned with",
	Run:     runKeysInit,
}

var keysRotateCommand = subcommand.Command{
	Name:    "keys rotate",
	Summary: "replace a role's keys with new ones in a new root version (revokes the old keys)",
	Run:     runKeysRotate,
}

func runKeysInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keys init", stderr)
	dir := fs.String("dir", "", "keys directory to create (required)")
	rootKeys := fs.Int("root-keys", 1, "number of root keys")
	rootThreshold := fs.Int("root-threshold", 1, "root signatures required")
	targetsKeys := fs.Int("targets-keys", 1, "number of targets (release signing) keys")
	targetsThreshold := fs.Int("targets-threshold", 1, "targets signatures required on each release")
	expires := fs.Duration("root-expires", 0, "how long each root version is valid (default 8760h)")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		fs.Usage()
		return subcommand.UsageError("--dir is required")
	}
	k, err := keyring.Init(*dir, keyring.Options{
		RootKeys: *rootKeys, RootThreshold: *rootThreshold,
		TargetsKeys: *targetsKeys, TargetsThreshold: *targetsThreshold,
		RootExpires: *expires,
	})
	if err != nil {
		return err
	}
	printKeys(stdout, k)
	return nil
}

func runKeysRotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("keys rotate", stderr)
	dir := fs.String("dir", "", "keys directory (required)")
	role := fs.String("role", trust.RoleTargets, "role whose keys to replace: targets or root")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if *dir == "" || (*role != trust.RoleTargets && *role != trust.RoleRoot) {
		fs.Usage()
		return subcommand.UsageError("--dir is required and --role is targets or root")
	}
	k, err := keyring.Open(*dir, keyring.Options{})
	if err != nil {
		return err
	}
	if _, err := k.Rotate(*role); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "rotated %s keys: root is now v%d; bundles exported from now on carry the chain\n", *role, k.Root().Doc.Version)
	printKeys(stdout, k)
	return nil
}

func printKeys(w io.Writer, k *keyring.Keyring) {
	d := k.Root().Doc
	fmt.Fprintf(w, "root v%d, expires %s: %s\n", d.Version, d.Expires.Format("2006-01-02"), filepath.Join(k.Dir(), "root.json"))
	fmt.Fprintln(w, "  provision devices with root.json")
	for _, f := range k.KeyFiles(trust.RoleRoot) {
		fmt.Fprintf(w, "  OFFLINE: %s  (root key: move it off this machine; needed only to rotate keys)\n", f)
	}
	for _, f := range k.KeyFiles(trust.RoleTargets) {
		fmt.Fprintf(w, "  online:  %s  (targets key: signs every release)\n", f)
	}
	r := d.Roles
	fmt.Fprintf(w, "  thresholds: root %d of %d, targets %d of %d\n",
		r[trust.RoleRoot].Threshold, len(r[trust.RoleRoot].KeyIDs), r[trust.RoleTargets].Threshold, len(r[trust.RoleTargets].KeyIDs))
}
