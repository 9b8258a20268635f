package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/models/bundle"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/models/trust"
)

func TestDispatch(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	out := filepath.Join(t.TempDir(), "bundle")
	model := testmodel.Path(t, testmodel.FaceShort)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no command", nil, 2, "usage"},
		{"unknown", []string{"keys", "destroy"}, 2, "unknown command"},
		{"init without dir", []string{"keys", "init"}, 2, "--dir is required"},
		{"init", []string{"keys", "init", "--dir", keys}, 0, "OFFLINE"},
		{"init twice", []string{"keys", "init", "--dir", keys}, 1, "already exist"},
		{"export version zero", []string{"models", "export", "--keys", keys, "--name", "face", "--version", "0", "--out", out, model}, 2, "positive"},
		{"export bad name", []string{"models", "export", "--keys", keys, "--name", "Face!", "--version", "1", "--out", out, model}, 1, "name"},
		{"export not a model", []string{"models", "export", "--keys", keys, "--name", "face", "--version", "1", "--out", out, filepath.Join(keys, "root.json")}, 1, "tflite"},
		{"export", []string{"models", "export", "--keys", keys, "--name", "face", "--version", "1", "--out", out, model}, 0, "exported face v1"},
		{"export into a used directory", []string{"models", "export", "--keys", keys, "--name", "face", "--version", "2", "--out", out, model}, 1, "not empty"},
		{"rotate", []string{"keys", "rotate", "--dir", keys, "--role", "targets"}, 0, "root is now v2"},
		{"rotate unknown role", []string{"keys", "rotate", "--dir", keys, "--role", "snapshot"}, 2, "--role"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := program.Dispatch(context.Background(), tt.args, &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("got exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout.String(), stderr.String())
			}
			if got := stdout.String() + stderr.String(); !strings.Contains(got, tt.want) {
				t.Fatalf("got output %q, want it to contain %q", got, tt.want)
			}
		})
	}
	k, err := keyring.Open(keys, keyring.Options{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := os.ReadFile(filepath.Join(keys, "roots", "1.json"))
	if err != nil {
		t.Fatal(err)
	}
	root, err := k.Root().Chain(nil)
	if err != nil {
		t.Fatal(err)
	}
	if root.Doc.Version != 2 {
		t.Fatalf("got root v%d after one rotation, want v2", root.Doc.Version)
	}
	v1, err := trust.LoadRoot(first)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundle.Verify(out, v1, bundle.Options{}); err != nil {
		t.Fatalf("bundle exported before the rotation: %v", err)
	}
}
