package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/outpost-edge/outpost/agent/config"
	"github.com/outpost-edge/outpost/agent/daemon"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var serveCommand = subcommand.Command{
	Name:    "serve",
	Summary: "serve models over the local HTTP API (--model FILE, or --config agent.yaml)",
	Run:     runServe,
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	cfgPath := fs.String("config", "", "YAML config file (docs/CONFIG.md); flags override it")
	model := fs.String("model", "", "serve this .tflite file (no config needed)")
	name := fs.String("name", "", "model name for --model (default: the file name without extension)")
	ver := fs.Int64("version", 1, "model version for --model (a positive integer)")
	listen := fs.String("listen", "", "address: host:port or unix:/path/to.sock (default "+config.DefaultListen+")")
	grpcListen := fs.String("grpc", "", "also serve KServe v2 gRPC on host:port (default off; "+config.DefaultGRPCListen+" with grpc.enabled in the config)")
	dataDir := fs.String("data-dir", "", "data directory (model store and state)")
	threads := fs.Int("threads", 0, "threads per interpreter (default 1)")
	workers := fs.Int("workers", 0, "interpreters per model (default: one per core)")
	tokenFile := fs.String("token-file", "", "require this bearer token on the API")
	logFlags := subcommand.LogFlag(fs)
	var chain delegateFlag
	fs.Var(&chain, "delegate", "delegate chain link: xnnpack, cpu or external:/path/plugin.so[,key=value...] (repeatable)")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return subcommand.UsageError("unexpected argument " + fs.Arg(0))
	}
	logOut := stderr
	var route *stderrRoute
	if stderr == os.Stderr {
		// The TFLite library's own lines go through the logger (stderr_linux.go).
		var err error
		if route, err = routeStderr(); err == nil {
			defer route.Close()
			logOut = route.Orig
		} else {
			route = nil
		}
	}
	log, err := logFlags.Logger(logOut)
	if err != nil {
		return err
	}
	if route != nil {
		tlog := log.With("component", "tflite")
		route.Forward(func(level slog.Level, msg string) { tlog.Log(context.Background(), level, msg) })
	}

	var cfg config.Config
	if *cfgPath != "" {
		if cfg, err = config.Load(*cfgPath); err != nil {
			return err
		}
	} else if *model == "" {
		return subcommand.UsageError("give --model FILE or --config FILE")
	}
	if *model != "" {
		n := *name
		if n == "" {
			n = strings.TrimSuffix(filepath.Base(*model), filepath.Ext(*model))
		}
		if *ver <= 0 {
			return subcommand.UsageError("--version must be a positive integer")
		}
		// A path on the command line is relative to where the command
		// runs, not to the data dir (as paths in a config file are).
		path, err := filepath.Abs(*model)
		if err != nil {
			return err
		}
		cfg.Models = append(cfg.Models, config.Model{Name: n, Path: path, Version: *ver})
	}
	setIf(&cfg.Listen, *listen)
	setIf(&cfg.GRPC.Listen, *grpcListen)
	setIf(&cfg.DataDir, *dataDir)
	setIf(&cfg.API.TokenFile, *tokenFile)
	if *threads > 0 {
		cfg.Threads = *threads
	}
	if *workers > 0 {
		cfg.Workers = *workers
	}
	for _, d := range chain.specs {
		cfg.Delegates = append(cfg.Delegates, config.Delegate{Kind: string(d.Kind), Path: d.Path, Options: d.Options})
	}
	a, err := daemon.New(cfg, log)
	if err != nil {
		return err
	}
	logProcs(log)
	if logFlags.Format == "json" {
		// Every line on stderr is JSON for the log shipper.
		log.Info("listening", "addr", a.Addr())
		if g := a.GRPCAddr(); g != "" {
			log.Info("grpc listening", "addr", g)
		}
	} else {
		fmt.Fprintf(logOut, "outpost-agent: listening on %s\n", a.Addr())
		if g := a.GRPCAddr(); g != "" {
			fmt.Fprintf(logOut, "outpost-agent: grpc listening on %s\n", g)
		}
	}
	return a.Run(ctx)
}

func setIf(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}
