// Command outpost-fleet is the Outpost fleet controller and its offline tools.
//
//	outpost-fleet keys init --dir KEYS
//	outpost-fleet keys rotate --dir KEYS --role targets|root
//	outpost-fleet models export --keys KEYS --name N --version V [--expires DURATION] --out DIR MODEL.tflite
//	outpost-fleet serve [--config fleet.yaml] [--broker URL] [--listen-mqtt ADDR] [--admin ADDR] [--data-dir DIR] [--keys KEYS] [--fleet NAME]
//	outpost-fleet models push --keys KEYS --name N --version V MODEL.tflite
//	outpost-fleet models list
//	outpost-fleet devices list
//	outpost-fleet rollout create --model N --version V [--selector k=v,...] [--waves 10,50,100] [--max-failure-ratio 0.1] [--bake 5m]
//	outpost-fleet rollout status [--watch] [ID]
//	outpost-fleet rollout pause|resume|abort ID
//
// The client commands (models push/list, devices, rollout) talk to the
// admin API of a running serve (--admin, default http://127.0.0.1:8490).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// command is one subcommand ("keys init", or "serve" with an empty name):
// it parses its own flags and returns nil on success. flag.ErrHelp or a
// usageError exits 2.
type command struct {
	group, name string
	summary     string
	run         func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands = []command{
	keysInitCommand,
	keysRotateCommand,
	modelsExportCommand,
	serveCommand,
	modelsPushCommand,
	modelsListCommand,
	devicesListCommand,
	rolloutCreateCommand,
	rolloutStatusCommand,
	rolloutPauseCommand,
	rolloutResumeCommand,
	rolloutAbortCommand,
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
	if len(args) < 1 {
		printUsage(stderr)
		return 2
	}
	for _, c := range commands {
		rest := args[1:]
		if c.group != args[0] {
			continue
		}
		if c.name != "" {
			if len(args) < 2 || c.name != args[1] {
				continue
			}
			rest = args[2:]
		}
		err := c.run(ctx, rest, stdout, stderr)
		var ue usageError
		full := strings.TrimSpace(c.group + " " + c.name)
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
	fmt.Fprintf(stderr, "outpost-fleet: unknown command %q\n", strings.Join(args[:min(2, len(args))], " "))
	printUsage(stderr)
	return 2
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: outpost-fleet GROUP COMMAND [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-16s %s\n", strings.TrimSpace(c.group+" "+c.name), c.summary)
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
