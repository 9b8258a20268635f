// Command outpost-fleet is the Outpost fleet controller and its offline tools.
//
//	outpost-fleet keys init --dir KEYS
//	outpost-fleet keys rotate --dir KEYS --role targets|root
//	outpost-fleet models export --keys KEYS --name N --version V [--expires DURATION] --out DIR MODEL.tflite
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// command is one subcommand ("keys init"): it parses its own flags and
// returns nil on success. flag.ErrHelp or a usageError exits 2.
type command struct {
	group, name string
	summary     string
	run         func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	keysInitCommand,
	keysRotateCommand,
	modelsExportCommand,
}

// usageError marks bad command-line input (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		printUsage(stderr)
		return 2
	}
	for _, c := range commands {
		if c.group != args[0] || c.name != args[1] {
			continue
		}
		err := c.run(ctx, args[2:], stdout, stderr)
		var ue usageError
		full := c.group + " " + c.name
		switch {
		case err == nil || errors.Is(err, context.Canceled):
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 2
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "outpost-fleet %s: %v\n", full, err)
			return 2
		default:
			fmt.Fprintf(stderr, "outpost-fleet %s: %v\n", full, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "outpost-fleet: unknown command %q\n", args[0]+" "+args[1])
	printUsage(stderr)
	return 2
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: outpost-fleet GROUP COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-16s %s\n", c.group+" "+c.name, c.summary)
	}
}

func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("outpost-fleet "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseInterspersed parses flags that may come before or after positional
// arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
