package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var modelsStatsCommand = subcommand.Command{Name: "models stats",
	Summary: "show a model's requests, errors, latency and throughput across the fleet or on one device", Run: runModelsStats}

// runModelsStats prints GET /v1/models/{name}/metrics: the totals, the
// errors by code, then the series, one line per step.
func runModelsStats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("models stats", stderr)
	api := adminFlag(fs)
	version := fs.String("version", "", "one version (default: every version, merged)")
	device := fs.String("device", "", "one device (default: the whole fleet)")
	since := fs.String("since", "1h", "start: RFC 3339, or a duration back from now (24h)")
	until := fs.String("until", "", "end: RFC 3339, or a duration back from now (default: now)")
	step := fs.String("step", "", "series resolution, whole minutes (default: 1m up to 6h of range, else 1h)")
	output := subcommand.OutputFlag(fs)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: outpost-fleet models stats NAME [--version V] [--device ID] [--since T] [--until T] [--step D] [-o json]")
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
	if *step != "" {
		if d, err := time.ParseDuration(*step); err != nil || d < time.Minute || d%time.Minute != 0 {
			return subcommand.UsageError(fmt.Sprintf("--step %q: want whole minutes, such as 5m or 1h", *step))
		}
	}
	q := url.Values{}
	for k, v := range map[string]string{"version": *version, "device": *device, "since": *since, "until": *until, "step": *step} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var m registry.ModelMetrics
	if err := api.client().json(ctx, http.MethodGet, "/v1/models/"+url.PathEscape(pos[0])+"/metrics?"+q.Encode(), nil, &m); err != nil {
		return err
	}
	return output.Write(stdout, m, func() error { return printStats(stdout, &m) })
}

func printStats(w io.Writer, m *registry.ModelMetrics) error {
	scope := "fleet"
	if m.Device != "" {
		scope = "device " + m.Device
	}
	vers := "versions " + strings.Join(m.Versions, ",")
	if m.Version != "" {
		vers = "version " + m.Version
	} else if len(m.Versions) == 0 {
		vers = "no traffic"
	}
	fmt.Fprintf(w, "%s, %s, %s, %s to %s, step %s\n", m.Model, scope, vers, m.Since.Local().Format(time.RFC3339),
		m.Until.Local().Format(time.RFC3339), time.Duration(m.StepSeconds)*time.Second)
	t := m.Totals
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REQUESTS\tERRORS\tERROR %\tP50 MS\tP90 MS\tP99 MS\tREQ/S")
	fmt.Fprintf(tw, "%d\t%d\t%s\t%.2f\t%.2f\t%.2f\t%.3g\n", t.Requests, t.Errors, percent(t.Errors, t.Requests), t.P50MS, t.P90MS, t.P99MS, t.ThroughputRPS)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(t.ErrorsByCode) > 0 {
		codes := make([]string, 0, len(t.ErrorsByCode))
		for c := range t.ErrorsByCode {
			codes = append(codes, c)
		}
		sort.Strings(codes)
		parts := make([]string, len(codes))
		for i, c := range codes {
			parts[i] = fmt.Sprintf("%s %d", c, t.ErrorsByCode[c])
		}
		fmt.Fprintf(w, "errors by code: %s\n", strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "START\tREQUESTS\tERRORS\tERROR %\tP50 MS\tP90 MS\tP99 MS\tREQ/S")
	for _, p := range m.Series {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.2f\t%.2f\t%.2f\t%.3g\n", p.Start.Local().Format(time.RFC3339), p.Requests, p.Errors,
			percent(p.Errors, p.Requests), p.P50MS, p.P90MS, p.P99MS, p.ThroughputRPS)
	}
	return tw.Flush()
}

// percent is errors over requests as a percentage, "-" without requests.
func percent(errs, reqs uint64) string {
	if reqs == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", 100*float64(errs)/float64(reqs))
}
