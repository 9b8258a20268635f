package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/models/onnx"
)

var inspectCommand = subcommand.Command{
	Name:    "inspect",
	Summary: "describe a model's tensors (TFLite or ONNX) and the delegate that would run it",
	Run:     runInspect,
}

// inspectReport is the --json output.
type inspectReport struct {
	Model   string `json:"model"`
	Format  string `json:"format"`
	Runtime string `json:"runtime"`
	// Inputs and Outputs are the tensors as served (ONNX: open dimensions
	// fixed by --input, else 1); empty when the model could not be loaded.
	Inputs   []tensor.Info          `json:"inputs"`
	Outputs  []tensor.Info          `json:"outputs"`
	Delegate runtime.DelegateReport `json:"delegate"`
	// ONNX describes what the ONNX file itself declares.
	ONNX *onnxReport `json:"onnx,omitempty"`
	// LoadError says why an ONNX model that parses could not be run with
	// the given inputs.
	LoadError string `json:"load_error,omitempty"`
}

type onnxReport struct {
	IRVersion int64            `json:"ir_version"`
	Opsets    map[string]int64 `json:"opsets"`
	Producer  string           `json:"producer,omitempty"`
	Inputs    []onnx.Tensor    `json:"inputs"`
	Outputs   []onnx.Tensor    `json:"outputs"`
}

func runInspect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inspect", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	threads := fs.Int("threads", 1, "threads for the interpreter and XNNPACK")
	var chain delegateFlag
	fs.Var(&chain, "delegate", "delegate chain link, in order: xnnpack, cpu, external:/path/plugin.so[,key=value...], cuda[:key=value,...] or tensorrt[:key=value,...] (repeatable; default xnnpack for TFLite, cpu for ONNX)")
	inputs := inputFlag{}
	fs.Var(inputs, "input", "ONNX input to fix, NAME=D,D,...[@WARM] (its served shape, and the value of the warm-up run), e.g. input=1,512 or sr=@16000 (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-agent inspect MODEL.tflite|MODEL.onnx [--json] [--delegate ...] [--threads N] [--input NAME=SHAPE[@WARM] ...]")
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
	data, err := os.ReadFile(pos[0])
	if err != nil {
		return err
	}
	rep := inspectReport{Model: pos[0]}
	format, err := runtime.Detect(data)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	rep.Format = string(format)
	m, err := runtime.Load(data, runtime.Options{Workers: 1, Threads: *threads, Delegates: chain.specs, Inputs: inputs})
	if format == runtime.ONNX {
		sig, perr := onnx.Read(data)
		if perr != nil {
			return fmt.Errorf("%s: %w", pos[0], perr)
		}
		rep.ONNX = &onnxReport{IRVersion: sig.IRVersion, Opsets: sig.Opsets, Producer: sig.Producer, Inputs: sig.Inputs, Outputs: sig.Outputs}
		if err != nil {
			// The file parses: describe it and say why it cannot run so.
			rep.LoadError = err.Error()
		}
	} else if err != nil {
		return err
	}
	if m != nil {
		defer m.Close()
		rep.Inputs, rep.Outputs, rep.Delegate = m.Inputs(), m.Outputs(), m.Delegate()
	}
	if format == runtime.ONNX {
		rep.Runtime = "onnxruntime " + runtime.ONNXVersion()
	} else {
		rep.Runtime = "tflite " + runtime.Version()
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printInspect(stdout, rep)
	return nil
}

func printInspect(w io.Writer, rep inspectReport) {
	fmt.Fprintf(w, "model:    %s\nformat:   %s\nruntime:  %s\n", rep.Model, rep.Format, rep.Runtime)
	if o := rep.ONNX; o != nil {
		domains := make([]string, 0, len(o.Opsets))
		for d := range o.Opsets {
			domains = append(domains, d)
		}
		sort.Strings(domains)
		ops := make([]string, len(domains))
		for i, d := range domains {
			name := d
			if name == "" {
				name = "ai.onnx"
			}
			ops[i] = fmt.Sprintf("%s %d", name, o.Opsets[d])
		}
		fmt.Fprintf(w, "onnx:     IR version %d, opset %s", o.IRVersion, strings.Join(ops, ", "))
		if o.Producer != "" {
			fmt.Fprintf(w, ", producer %s", o.Producer)
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "\nDECLARED\tNAME\tDATATYPE\tSHAPE (? = open)")
		for _, t := range o.Inputs {
			fmt.Fprintf(tw, "input\t%s\t%s\t%s\n", t.Name, t.DataType, openShape(t))
		}
		for _, t := range o.Outputs {
			fmt.Fprintf(tw, "output\t%s\t%s\t%s\n", t.Name, t.DataType, openShape(t))
		}
		tw.Flush()
		fmt.Fprintln(w)
		if rep.LoadError != "" {
			fmt.Fprintf(w, "cannot run as given: %s\n(fix open dimensions and warm-up values with --input NAME=D,D,...@WARM)\n", rep.LoadError)
			return
		}
	}
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
	fmt.Fprintln(tw, "\nSERVED\tNAME\tDATATYPE\tSHAPE\tQUANTIZATION")
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

// openShape prints a declared ONNX shape with open dimensions as "?" or
// their symbolic name.
func openShape(t onnx.Tensor) string {
	parts := make([]string, len(t.Shape))
	for i, d := range t.Shape {
		switch {
		case d >= 0:
			parts[i] = strconv.Itoa(d)
		case t.DimNames[i] != "":
			parts[i] = t.DimNames[i]
		default:
			parts[i] = "?"
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}

// inputFlag collects --input NAME=D,D,...[@WARM] into runtime input specs.
type inputFlag map[string]runtime.InputSpec

func (f inputFlag) String() string { return fmt.Sprint(map[string]runtime.InputSpec(f)) }

func (f inputFlag) Set(v string) error {
	name, rest, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("input %q is not NAME=SHAPE[@WARM]", v)
	}
	dims, warm, hasWarm := strings.Cut(rest, "@")
	var spec runtime.InputSpec
	if dims != "" {
		for _, d := range strings.Split(dims, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(d))
			if err != nil || n <= 0 {
				return fmt.Errorf("input %s: dimension %q is not a positive integer", name, d)
			}
			spec.Shape = append(spec.Shape, n)
		}
	}
	if hasWarm {
		w, err := strconv.ParseFloat(warm, 64)
		if err != nil {
			return fmt.Errorf("input %s: warm value %q: %v", name, warm, err)
		}
		spec.Warm = w
	}
	f[name] = spec
	return nil
}
