// Command outpost-agent is the Outpost device daemon and its local tools.
//
//	outpost-agent inspect MODEL [--json]
//	outpost-agent enroll BUNDLE --data-dir DIR [--config agent.yaml] [--force]
//	outpost-agent profile --model MODEL --reference INPUTS [--out profile.json]
//
// Each subcommand lives in its own file and is listed in program below;
// internal/subcommand runs them.
package main

import (
	"flag"
	"io"
	"log/slog"
	goruntime "runtime"

	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/version"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var program = subcommand.Program{
	Name:    "outpost-agent",
	Version: version.Version,
	Commands: []subcommand.Command{
		inspectCommand,
		verifyCommand, installCommand,
		serveCommand, batchCommand, profileCommand,
		enrollCommand,
	},
}

func main() {
	runtime.RaiseProcs() // before any model loads: see its comment
	program.Main()
}

// logProcs reports the scheduler's setting (runtime.RaiseProcs) at start.
func logProcs(log *slog.Logger) {
	log.Info("go scheduler", "cpus", runtime.CPUs(), "gomaxprocs", goruntime.GOMAXPROCS(0))
}

// newFlagSet returns the flag set of the named command.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	return subcommand.NewFlagSet("outpost-agent "+name, stderr)
}
