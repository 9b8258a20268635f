// Package subcommand is the command-line scaffolding both binaries share: a
// table of subcommands (some of two words, "keys init"), their usage, exit
// statuses, flag sets that report errors instead of exiting, and the
// context that SIGINT and SIGTERM cancel.
//
// Exit statuses: 0 on success, when help was asked for, or when the context
// was cancelled (a signal is a clean stop); 2 for bad command-line input (a
// UsageError, a bad flag, an unknown command, no command); 1 for any other
// error.
//
// Help goes to stdout: "NAME help", "NAME -h", "NAME --help" list the
// commands, and "NAME help CMD", "NAME CMD -h", "NAME CMD --help" print the
// command's usage (its flag set's Usage). A bad flag is one line on stderr,
// "NAME CMD: flag provided but not defined: -x (see NAME CMD -h)", without
// the usage.
package subcommand

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/outpost-edge/outpost/internal/buildinfo"
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
	// Version, if set, is printed with the commit, the Go version and the
	// build tags by "NAME version [-o json]" and "NAME --version".
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
	if len(args) == 0 {
		p.PrintUsage(stderr)
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help":
		p.PrintUsage(stdout)
		return 0
	case "help":
		if len(args) == 1 {
			p.PrintUsage(stdout)
			return 0
		}
		// "help CMD" is "CMD -h".
		args = append(slices.Clone(args[1:]), "-h")
	}
	if p.Version != "" && (args[0] == "version" || args[0] == "--version") {
		return p.version(args[1:], stdout, stderr)
	}
	for _, c := range p.Commands {
		words := strings.Fields(c.Name)
		if len(args) < len(words) || strings.Join(args[:len(words)], " ") != strings.Join(words, " ") {
			continue
		}
		rest := args[len(words):]
		help := wantsHelp(rest)
		errw := stderr
		if help {
			// The flag set prints its usage to what the command calls
			// stderr: asked for, it is the answer, so it goes to stdout.
			errw = stdout
		}
		err := c.Run(ctx, rest, stdout, errw)
		var ue UsageError
		var fe flagError
		switch {
		case err == nil || errors.Is(err, context.Canceled):
			return 0
		case errors.Is(err, flag.ErrHelp):
			if help {
				return 0
			}
			return 2
		case errors.As(err, &fe):
			fmt.Fprintf(stderr, "%s %s: %v (see %s %s -h)\n", p.Name, c.Name, err, p.Name, c.Name)
			return 2
		case errors.As(err, &ue):
			fmt.Fprintf(stderr, "%s %s: %v\n", p.Name, c.Name, err)
			return 2
		default:
			// Errors of the package a command is named after start with
			// its name ("batch: ..."): said once after "outpost-agent batch: ".
			msg := strings.TrimPrefix(err.Error(), c.Name+": ")
			fmt.Fprintf(stderr, "%s %s: %s\n", p.Name, c.Name, msg)
			return 1
		}
	}
	fmt.Fprintf(stderr, "%s: unknown command %q\n", p.Name, strings.Join(args[:min(p.maxWords(), len(args))], " "))
	p.PrintUsage(stderr)
	return 2
}

// wantsHelp reports whether args ask for help: -h, -help or --help before
// a "--" that ends the flags.
func wantsHelp(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

// version prints the build, for people or (-o json) for programs.
func (p *Program) version(args []string, stdout, stderr io.Writer) int {
	fs := NewFlagSet(p.Name+" version", stderr)
	out := OutputFlag(fs)
	if wantsHelp(args) {
		fs.SetOutput(stdout)
	}
	if _, err := ParseInterspersed(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "%s version: %v\n", p.Name, err)
		return 2
	}
	if err := out.Check(); err != nil {
		fmt.Fprintf(stderr, "%s version: %v\n", p.Name, err)
		return 2
	}
	in := buildinfo.Read(p.Version)
	if out.JSON() {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(in)
		return 0
	}
	in.Write(stdout, p.Name)
	return 0
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

// flagError is a flag the flag set refused: bad input, reported in one line.
type flagError struct{ err error }

func (e flagError) Error() string { return e.err.Error() }
func (e flagError) Unwrap() error { return e.err }

// ParseInterspersed parses flags that may come before or after positional
// arguments ("inspect MODEL --json" and "inspect --json MODEL" both work),
// and returns the positional arguments. Asked for help, it prints the flag
// set's usage and returns flag.ErrHelp; a bad flag is returned without the
// usage, for Dispatch to print in one line.
func ParseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	usage, out := fs.Usage, fs.Output()
	// The flag package prints the error and the whole usage on a bad flag;
	// keep it quiet while parsing and print the usage only when asked.
	fs.Usage = func() {}
	fs.SetOutput(io.Discard)
	pos, err := parseInterspersed(fs, args)
	fs.Usage = usage
	fs.SetOutput(out)
	switch {
	case err == nil:
		return pos, nil
	case errors.Is(err, flag.ErrHelp):
		if fs.Usage != nil {
			fs.Usage()
		} else {
			fmt.Fprintf(fs.Output(), "usage of %s:\n", fs.Name())
			fs.PrintDefaults()
		}
		return nil, err
	default:
		return nil, flagError{err}
	}
}

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

// Output is the -o flag of list and status commands: "table" (the default,
// for people) or "json" (for programs: the API's own objects, indented).
type Output struct{ format string }

// OutputFlag adds -o to fs.
func OutputFlag(fs *flag.FlagSet) *Output {
	o := &Output{}
	fs.StringVar(&o.format, "o", "table", "output format: table or json")
	return o
}

// Check refuses a format other than table and json, as a UsageError.
func (o *Output) Check() error {
	switch o.format {
	case "table", "json":
		return nil
	}
	return UsageError(fmt.Sprintf("-o %q: want table or json", o.format))
}

// JSON reports whether -o json was given.
func (o *Output) JSON() bool { return o.format == "json" }

// Write writes v as indented JSON with -o json, else calls table.
func (o *Output) Write(w io.Writer, v any, table func() error) error {
	if err := o.Check(); err != nil {
		return err
	}
	if !o.JSON() {
		return table()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// LogFlags are --log-level and --log-format, for commands that log.
type LogFlags struct{ Level, Format string }

// LogFlag adds --log-level and --log-format to fs with the given defaults
// ("" means info and text).
func LogFlag(fs *flag.FlagSet) *LogFlags {
	l := &LogFlags{}
	fs.StringVar(&l.Level, "log-level", "", "debug, info, warn or error (default info)")
	fs.StringVar(&l.Format, "log-format", "", "text (key=value lines) or json (one object a line) (default text)")
	return l
}

// Logger returns a logger writing to w; a bad level or format is a
// UsageError.
func (l *LogFlags) Logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if l.Level != "" {
		if err := level.UnmarshalText([]byte(l.Level)); err != nil {
			return nil, UsageError(fmt.Sprintf("--log-level %q: want debug, info, warn or error", l.Level))
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	switch l.Format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, UsageError(fmt.Sprintf("--log-format %q: want text or json", l.Format))
}
