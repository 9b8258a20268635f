// Package subcommand is the command-line scaffolding both binaries share: a
// table of subcommands (some of two words, "keys init"), their usage, exit
// statuses, flag sets that report errors instead of exiting, and the
// context that SIGINT and SIGTERM cancel.
//
// Exit statuses: 0 on success or when the context was cancelled (a signal is
// a clean stop), 2 for bad command-line input (a UsageError, flag.ErrHelp, an
// unknown command), 1 for any other error.
package subcommand

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

// Command is one subcommand. Run parses its own flags from args (everything
// after the command's words) and returns nil on success.
type Command struct {
	Name    string // one word ("serve") or two ("keys init")
	Summary string // one line for the usage
	Run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// UsageError is bad command-line input: the message is printed after the
// command's name and the exit status is 2.
type UsageError string

func (e UsageError) Error() string { return string(e) }

// Program is a binary's command table.
type Program struct {
	Name     string // the binary, which starts messages and flag set names
	Commands []Command
	// Version, if set, is printed by "NAME version" and "NAME --version".
	Version string
}

// Main runs the command named by os.Args with a context that SIGINT and
// SIGTERM cancel, and exits with its status.
func (p *Program) Main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := p.Dispatch(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Dispatch runs the command args name and returns the exit status.
func (p *Program) Dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		p.PrintUsage(stderr)
		return 2
	}
	if p.Version != "" && (args[0] == "version" || args[0] == "--version") {
		fmt.Fprintln(stdout, p.Name, p.Version)
		return 0
	}
	for _, c := range p.Commands {
		words := strings.Fields(c.Name)
		if len(args) < len(words) || strings.Join(args[:len(words)], " ") != strings.Join(words, " ") {
			continue
		}
		err := c.Run(ctx, args[len(words):], stdout, stderr)
		var ue UsageError
		switch {
		case err == nil || errors.Is(err, context.Canceled):
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 2 // the flag set printed its usage
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "%s %s: %v\n", p.Name, c.Name, err)
			return 2
		default:
			fmt.Fprintf(stderr, "%s %s: %v\n", p.Name, c.Name, err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "%s: unknown command %q\n", p.Name, strings.Join(args[:min(p.maxWords(), len(args))], " "))
	p.PrintUsage(stderr)
	return 2
}

// maxWords is the number of words of the longest command name.
func (p *Program) maxWords() int {
	n := 1
	for _, c := range p.Commands {
		n = max(n, len(strings.Fields(c.Name)))
	}
	return n
}

// PrintUsage lists the commands with their summaries.
func (p *Program) PrintUsage(w io.Writer) {
	arg := "COMMAND"
	if p.maxWords() > 1 {
		arg = "GROUP COMMAND"
	}
	width := 10
	for _, c := range p.Commands {
		width = max(width, len(c.Name)+2)
	}
	fmt.Fprintf(w, "usage: %s %s [flags]\n\ncommands:\n", p.Name, arg)
	for _, c := range p.Commands {
		fmt.Fprintf(w, "  %-*s %s\n", width, c.Name, c.Summary)
	}
	if p.Version != "" {
		fmt.Fprintf(w, "  %-*s %s\n", width, "version", "print the version")
	}
}

// NewFlagSet returns a flag set named name ("outpost-agent serve") that
// writes to stderr and returns its errors instead of exiting.
func NewFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// ParseInterspersed parses flags that may come before or after positional
// arguments ("inspect MODEL --json" and "inspect --json MODEL" both work),
// and returns the positional arguments.
func ParseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
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
