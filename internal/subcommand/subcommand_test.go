package subcommand

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDispatch(t *testing.T) {
	var got []string // the args each command ran with
	cmd := func(name string, err error) Command {
		return Command{Name: name, Summary: "does " + name, Run: func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
			got = append([]string{name}, args...)
			return err
		}}
	}
	flags := Command{Name: "keys rotate", Summary: "rotates", Run: func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		fs := NewFlagSet("prog keys rotate", stderr)
		dir := fs.String("dir", "", "")
		pos, err := ParseInterspersed(fs, args)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, *dir, pos)
		return nil
	}}
	p := &Program{Name: "prog", Version: "v1.2.3", Commands: []Command{
		cmd("serve", nil),
		cmd("keys init", UsageError("--dir is required")),
		cmd("broken", errors.New("disk on fire")),
		cmd("stopped", fmt.Errorf("serve: %w", context.Canceled)),
		cmd("batch", errors.New("batch: no such model")),
		flags,
	}}
	for _, tc := range []struct {
		args     []string
		code     int
		ran      []string
		out, err string
	}{
		{args: nil, code: 2, err: "usage: prog GROUP COMMAND [flags]"},
		{args: []string{"--help"}, code: 0, out: "keys rotate"},
		{args: []string{"-h"}, code: 0, out: "usage: prog GROUP COMMAND [flags]"},
		{args: []string{"help"}, code: 0, out: "keys rotate"},
		{args: []string{"help", "keys", "rotate"}, code: 0, out: "Usage of prog keys rotate"},
		{args: []string{"version", "-o", "json"}, code: 0, out: `"version": "v1.2.3"`},
		{args: []string{"version", "-o", "yaml"}, code: 2, err: `-o "yaml": want table or json`},
		{args: []string{"version"}, code: 0, out: "prog v1.2.3\n  commit:"},
		{args: []string{"serve", "--x", "y"}, code: 0, ran: []string{"serve", "--x", "y"}},
		{args: []string{"keys", "init", "a"}, code: 2, ran: []string{"keys init", "a"}, err: "prog keys init: --dir is required\n"},
		{args: []string{"keys"}, code: 2, err: `prog: unknown command "keys"`},
		{args: []string{"keys", "destroy", "now"}, code: 2, err: `prog: unknown command "keys destroy"`},
		{args: []string{"broken"}, code: 1, ran: []string{"broken"}, err: "prog broken: disk on fire\n"},
		{args: []string{"stopped"}, code: 0, ran: []string{"stopped"}},
		// The command's name said once, not "prog batch: batch: ...".
		{args: []string{"batch"}, code: 1, ran: []string{"batch"}, err: "prog batch: no such model\n"},
		{args: []string{"keys", "rotate", "a", "--dir", "d", "b"}, code: 0, out: "d [a b]\n"},
		{args: []string{"keys", "rotate", "--nope"}, code: 2, err: "prog keys rotate: flag provided but not defined: -nope (see prog keys rotate -h)\n"},
		{args: []string{"keys", "rotate", "--dir"}, code: 2, err: "flag needs an argument: -dir"},
		{args: []string{"keys", "rotate", "-h"}, code: 0, out: "Usage of prog keys rotate"},
		{args: []string{"keys", "rotate", "a", "--help"}, code: 0, out: "-dir string"},
	} {
		got = nil
		var stdout, stderr strings.Builder
		code := p.Dispatch(context.Background(), tc.args, &stdout, &stderr)
		require.Equal(t, tc.code, code, "args %q: exit status\nstderr: %s", tc.args, stderr.String())
		require.Equal(t, tc.ran, got, "args %q: command run", tc.args)
		require.Contains(t, stdout.String(), tc.out, "args %q: stdout", tc.args)
		require.Contains(t, stderr.String(), tc.err, "args %q: stderr", tc.args)
		if tc.code == 0 {
			require.Empty(t, stderr.String(), "args %q: stderr on success", tc.args)
		}
		if tc.code == 2 && strings.Contains(tc.err, "flag ") {
			// One error, not the error and then the whole usage.
			require.Equal(t, 1, strings.Count(stderr.String(), "\n"), "args %q: stderr %q", tc.args, stderr.String())
		}
	}
}

func TestUsageErrorThroughWrap(t *testing.T) {
	p := &Program{Name: "prog", Commands: []Command{{Name: "x", Run: func(context.Context, []string, io.Writer, io.Writer) error {
		return fmt.Errorf("config: %w", UsageError("bad --log-level"))
	}}}}
	require.Equal(t, 2, p.Dispatch(context.Background(), []string{"x"}, io.Discard, io.Discard))
	// Without a Version there is no version command.
	require.Equal(t, 2, p.Dispatch(context.Background(), []string{"version"}, io.Discard, io.Discard))
}
