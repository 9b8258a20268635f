package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/agent/batch"
	"github.com/outpost-edge/outpost/agent/runtime"
	registry "github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var batchCommand = subcommand.Command{
	Name:    "batch",
	Summary: "run a model over a directory, a .jsonl or an .npy file into a results file (docs/MODES.md)",
	Run:     runBatch,
}

func runBatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("batch", stderr)
	model := fs.String("model", "", "a .tflite file, or the name of a model installed in --data-dir's store")
	dataDir := fs.String("data-dir", "", "the agent's data directory, whose store --model NAME is read from")
	input := fs.String("input", "", "a directory of .json/.npy/.bin items, a .jsonl file or an .npy file")
	output := fs.String("output", "", "results file, one JSON line per item in input order")
	resume := fs.Bool("resume", false, "continue an interrupted run's output")
	outputs := fs.String("outputs", "auto", `how output data is written: json (arrays of numbers), b64 ("b64": base64 of the little-endian bytes) or auto (json up to 1024 elements, b64 above)`)
	raw := fs.Bool("raw-outputs", false, "the same as --outputs b64 (kept for scripts written before --outputs)")
	threads := fs.Int("threads", 0, "threads per interpreter (default 1)")
	workers := fs.Int("workers", 0, "interpreters (default: one per core)")
	progressMode := fs.String("progress", "auto", "auto (a bar on a terminal, lines otherwise), bar, lines or none")
	every := fs.Duration("progress-every", 10*time.Second, "period of the progress lines when not drawing a bar")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	var chain delegateFlag
	fs.Var(&chain, "delegate", "delegate chain link: xnnpack, cpu or external:/path/plugin.so[,key=value...] (repeatable)")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return subcommand.UsageError("unexpected argument " + fs.Arg(0))
	}
	if *model == "" || *input == "" || *output == "" {
		return subcommand.UsageError("give --model, --input and --output")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return subcommand.UsageError("bad --log-level: " + err.Error())
	}
	if *raw {
		*outputs = string(batch.OutputsBase64)
	}
	enc, err := batch.ParseOutputEncoding(*outputs)
	if err != nil {
		return subcommand.UsageError("bad --outputs " + *outputs + ": want auto, json or b64")
	}
	var progress io.Writer = stderr
	terminal := isTerminal(stderr)
	switch *progressMode {
	case "auto":
	case "bar":
		terminal = true
	case "lines":
		terminal = false
	case "none":
		progress = nil
	default:
		return subcommand.UsageError("bad --progress " + *progressMode + ": want auto, bar, lines or none")
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	reg := registry.New(registry.Options{
		Runtime: runtime.Options{Workers: *workers, Threads: *threads, Delegates: chain.specs},
		Logger:  log,
	})
	defer reg.Close()
	name, err := loadBatchModel(ctx, reg, *model, *dataDir, log)
	if err != nil {
		return err
	}
	logProcs(log)
	r, err := batch.New(batch.Options{
		Backend: reg, Model: name, Input: *input, Output: *output, Resume: *resume, Outputs: enc,
		Progress: progress, Terminal: terminal, ProgressEvery: *every, Logger: log,
	})
	if err != nil {
		return err
	}
	err = r.Run(ctx)
	s := r.Stats()
	if s.Total == 0 && err != nil {
		return err // it never started: no summary to give
	}
	fmt.Fprintf(stderr, "outpost-agent: batch: %d items written (%d errors), %d already in the output, %d in the input; %.1f items/s\n",
		s.Done, s.Errors, s.Skipped, s.Total, s.ItemsPerSecond())
	if errors.Is(err, context.Canceled) {
		// Not a success: the output lacks items (exit status 1).
		return errors.New("stopped; --resume continues it")
	}
	if errors.Is(err, batch.ErrOutput) {
		return fmt.Errorf("%w; the records written are kept: --resume continues once the output can be written", err)
	}
	return err
}

// loadBatchModel loads --model into reg and returns its name there: a path
// to a model file, or else the name of a model installed in the store of
// --data-dir (its current version, checked against its signed manifest).
func loadBatchModel(ctx context.Context, reg *registry.Registry, model, dataDir string, log *slog.Logger) (string, error) {
	if _, err := os.Stat(model); err == nil {
		name := strings.TrimSuffix(filepath.Base(model), filepath.Ext(model))
		if _, err := reg.LoadFile(ctx, name, 1, model); err != nil {
			return "", err
		}
		return name, nil
	} else if dataDir == "" || strings.ContainsRune(model, os.PathSeparator) {
		return "", fmt.Errorf("batch: --model %s: %w (a name needs --data-dir)", model, err)
	}
	st, err := store.OpenDataDir(dataDir, store.Options{Logger: log})
	if err != nil {
		return "", err
	}
	data, e, err := st.Load(model)
	if err != nil {
		return "", fmt.Errorf("batch: --model %s in %s: %w", model, dataDir, err)
	}
	if _, err := reg.Load(ctx, model, e.Manifest.Version, data, "store"); err != nil {
		return "", err
	}
	return model, nil
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
