package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/outpost-edge/outpost/fleet/drift"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var driftCommand = subcommand.Command{Name: "drift",
	Summary: "show whether a model version's inputs and outputs drifted from its reference, fleet-wide and per device", Run: runDrift}

// runDrift prints GET /v1/models/{name}/drift: the fleet's state and the
// scores of the last judged window, feature by feature, then every device
// that is not ok (all of them with --all).
func runDrift(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("drift", stderr)
	api := adminFlag(fs)
	version := fs.String("version", "", "one version (default: the newest one judged)")
	device := fs.String("device", "", "one device's state and scores")
	all := fs.Bool("all", false, "list every device, ok ones too")
	output := subcommand.OutputFlag(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-fleet drift NAME [--version V] [--device ID] [--all] [-o json]")
		fs.PrintDefaults()
	}
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := output.Check(); err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return subcommand.UsageError("one model name is required")
	}
	q := url.Values{}
	if *version != "" {
		q.Set("version", *version)
	}
	if *device != "" {
		q.Set("device", *device)
	}
	var rep drift.Report
	if err := api.client().json(ctx, http.MethodGet, "/v1/models/"+url.PathEscape(pos[0])+"/drift?"+q.Encode(), nil, &rep); err != nil {
		return err
	}
	return output.Write(stdout, rep, func() error { return printDrift(stdout, &rep, *all || *device != "") })
}

func printDrift(w io.Writer, r *drift.Report, all bool) error {
	since := ""
	if !r.Since.IsZero() {
		since = " since " + r.Since.Local().Format(time.RFC3339)
	}
	window := "no window judged yet"
	if !r.Window.IsZero() {
		window = "last window " + r.Window.Local().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "%s v%s: fleet %s%s (%s)\n", r.Model, r.Version, r.State, since, window)
	printScores(w, r.Features)
	shown := 0
	for _, d := range r.Devices {
		if !all && d.State == drift.OK {
			continue
		}
		since := ""
		if !d.Since.IsZero() {
			since = " since " + d.Since.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "\ndevice %s: %s%s\n", d.Device, d.State, since)
		printScores(w, d.Features)
		shown++
	}
	if hidden := len(r.Devices) - shown; hidden > 0 {
		fmt.Fprintf(w, "\n%d more devices ok (--all lists them)\n", hidden)
	}
	return nil
}

func printScores(w io.Writer, fs []drift.FeatureScore) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FEATURE\tPSI\tJS\tCOUNT\tREFERENCE\tDRIFTING")
	for _, f := range fs {
		verdict := "no"
		switch {
		case !f.Judged:
			verdict = "-" // too few values to judge
		case f.Drifting:
			verdict = "yes"
		}
		fmt.Fprintf(tw, "%s\t%.3f\t%.3f\t%d\t%d\t%s\n", f.Name, f.PSI, f.JS, f.Count, f.ReferenceCount, verdict)
	}
	tw.Flush()
}
