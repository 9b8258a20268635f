package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var inspectCommand = subcommand.Command{
	Name:    "inspect",
	Summary: "describe a model's tensors and the delegate that would run it",
	Run:     runInspect,
}

// inspectReport is the --json output.
type inspectReport struct {
	Model    string                 `json:"model"`
	Runtime  string                 `json:"runtime"`
	Inputs   []tensor.Info          `json:"inputs"`
	Outputs  []tensor.Info          `json:"outputs"`
	Delegate runtime.DelegateReport `json:"delegate"`
}

func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inspect", stderr)
	asJSON := fs.Bool("json", false, "print JSON (as -o json)")
	out := subcommand.OutputFlag(fs)
	threads := fs.Int("threads", 1, "threads for the interpreter and XNNPACK")
	var chain delegateFlag
	fs.Var(&chain, "delegate", "delegate chain link, in order: xnnpack, cpu or external:/path/plugin.so[,key=value...] (repeatable; default xnnpack)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-agent inspect MODEL.tflite [-o json] [--delegate ...] [--threads N]")
		fs.PrintDefaults()
	}
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return subcommand.UsageError("expected exactly one model path")
	}
	if err := out.Check(); err != nil {
		return err
	}
	// The library's INFO lines are dropped; its warnings and errors are
	// shown with our name on them.
	if stderr == os.Stderr {
		if route, err := routeStderr(); err == nil {
			route.Forward(func(level slog.Level, msg string) {
				if level > slog.LevelInfo {
					fmt.Fprintf(route.Orig, "outpost-agent inspect: tflite: %s\n", msg)
				}
			})
			defer route.Close()
		}
	}
	m, err := runtime.LoadFile(pos[0], runtime.Options{Workers: 1, Threads: *threads, Delegates: chain.specs})
	if err != nil {
		return err
	}
	defer m.Close()
	rep := inspectReport{
		Model:    pos[0],
		Runtime:  "tflite " + runtime.Version(),
		Inputs:   m.Inputs(),
		Outputs:  m.Outputs(),
		Delegate: m.Delegate(),
	}
	if *asJSON || out.JSON() {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printInspect(stdout, rep)
	return nil
}

func printInspect(w io.Writer, rep inspectReport) {
	fmt.Fprintf(w, "model:    %s\nruntime:  %s\n", rep.Model, rep.Runtime)
	d := rep.Delegate
	if d.TotalNodes > 0 {
		fmt.Fprintf(w, "delegate: %s (%d of %d nodes in %d partitions)\n", d.Delegate, d.DelegatedNodes, d.TotalNodes, d.Partitions)
	} else {
		fmt.Fprintf(w, "delegate: %s\n", d.Delegate)
	}
	for _, f := range d.Fallbacks {
		fmt.Fprintf(w, "  skipped %s: %s\n", f.Delegate, f.Reason)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nKIND\tNAME\tDATATYPE\tSHAPE\tQUANTIZATION")
	row := func(kind string, ts []tensor.Info) {
		for _, t := range ts {
			q := "-"
			if t.Quantization != nil {
				q = fmt.Sprintf("scale=%g zero_point=%d", t.Quantization.Scale, t.Quantization.ZeroPoint)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", kind, t.Name, t.DataType, t.Shape, q)
		}
	}
	row("input", rep.Inputs)
	row("output", rep.Outputs)
	tw.Flush()
}

// delegateFlag collects repeated --delegate flags into a chain.
type delegateFlag struct{ specs []runtime.DelegateSpec }

func (f *delegateFlag) String() string {
	s := make([]string, len(f.specs))
	for i, d := range f.specs {
		s[i] = d.String()
	}
	return strings.Join(s, ",")
}

func (f *delegateFlag) Set(v string) error {
	d, err := runtime.ParseDelegate(v)
	if err != nil {
		return err
	}
	f.specs = append(f.specs, d)
	return nil
}
