package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/models/bundle"
	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
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
	// Manifest is the bundle's (or the given file's) signed manifest, read
	// without checking signatures (verify does), reference profile included.
	Manifest *manifest.Manifest `json:"manifest,omitempty"`
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
	asJSON := fs.Bool("json", false, "print JSON (as -o json)")
	out := subcommand.OutputFlag(fs)
	threads := fs.Int("threads", 1, "threads for the interpreter and XNNPACK")
	var chain delegateFlag
	fs.Var(&chain, "delegate", "delegate chain link, in order: xnnpack, cpu, external:/path/plugin.so[,key=value...], cuda[:key=value,...] or tensorrt[:key=value,...] (repeatable; default xnnpack for TFLite, cpu for ONNX)")
	inputs := inputFlag{}
	fs.Var(inputs, "input", "ONNX input to fix, NAME=D,D,...[@WARM] (its served shape, and the value of the warm-up run), e.g. input=1,512 or sr=@16000 (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-agent inspect MODEL.tflite|MODEL.onnx|BUNDLE|release.json [-o json] [--delegate ...] [--threads N] [--input NAME=SHAPE[@WARM] ...]")
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
	rep := inspectReport{Model: pos[0]}
	path := pos[0]
	if fi, err := os.Stat(path); err == nil && fi.IsDir() || strings.EqualFold(filepath.Ext(path), ".json") {
		// A bundle directory, or a release.json or manifest JSON alone.
		mpath := path
		if fi != nil && fi.IsDir() {
			mpath = filepath.Join(path, bundle.ReleaseFile)
			path = filepath.Join(path, bundle.ModelFile)
		} else {
			path = ""
		}
		if rep.Manifest, err = readManifest(mpath); err != nil {
			return err
		}
		if path == "" {
			return writeInspect(stdout, rep, *asJSON || out.JSON())
		}
		rep.Model = path
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
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
	return writeInspect(stdout, rep, *asJSON || out.JSON())
}

func writeInspect(w io.Writer, rep inspectReport, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if rep.Format != "" {
		printInspect(w, rep)
	}
	printManifest(w, rep.Manifest)
	return nil
}

// readManifest reads a manifest from a release envelope (release.json) or
// a bare manifest JSON, without checking signatures: inspect describes,
// verify decides.
func readManifest(path string) (*manifest.Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	payload := b
	if env, err := dsse.Parse(b); err == nil {
		var rel struct {
			Model json.RawMessage `json:"model"`
		}
		if err := json.Unmarshal(env.Payload, &rel); err != nil || rel.Model == nil {
			return nil, fmt.Errorf("%s: a signed envelope without a release manifest", path)
		}
		payload = rel.Model
	}
	m, err := manifest.Parse(payload)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// printManifest shows the manifest's name and its reference profile: per
// feature its moments, then its bins (edges and reference counts).
func printManifest(w io.Writer, m *manifest.Manifest) {
	if m == nil {
		return
	}
	fmt.Fprintf(w, "\nmanifest: %s v%d sha256:%s (signatures not checked here: outpost-agent verify does)\n", m.Name, m.Version, m.SHA256)
	p := m.Reference
	if p == nil {
		fmt.Fprintln(w, "reference: none")
		return
	}
	fmt.Fprintf(w, "reference: %d features from %d requests\n", len(p.Features), p.Requests)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nFEATURE\tCOUNT\tNANS\tMEAN\tSTD\tMIN\tMAX\tBINS")
	for _, f := range p.Features {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.4g\t%.4g\t%.4g\t%.4g\t%d\n", f.Name, f.Count, f.NaNs, f.Mean, math.Sqrt(f.Variance), f.Min, f.Max, len(f.Counts))
	}
	tw.Flush()
	fmt.Fprintln(w, "\nBINS (edges, and the reference's count in each bin: below the first edge, between edges, at or above the last)")
	for _, f := range p.Features {
		edges := make([]string, len(f.Edges))
		for i, e := range f.Edges {
			edges[i] = strconv.FormatFloat(e, 'g', 4, 64)
		}
		counts := make([]string, len(f.Counts))
		for i, c := range f.Counts {
			counts[i] = strconv.FormatUint(c, 10)
		}
		fmt.Fprintf(w, "%s\n  edges  %s\n  counts %s\n", f.Name, strings.Join(edges, " "), strings.Join(counts, " "))
	}
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
