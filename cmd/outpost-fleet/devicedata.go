package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

var (
	devicesHealthCommand = subcommand.Command{Name: "devices health",
		Summary: "show a device's health over time", Run: runDevicesHealth}
	devicesAuditCommand = subcommand.Command{Name: "devices audit",
		Summary: "show a device's audit records and whether their hash chain holds", Run: runDevicesAudit}
)

func runDevicesHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices health", stderr)
	api := adminFlag(fs)
	out := subcommand.OutputFlag(fs)
	since := fs.String("since", "24h", "from this RFC 3339 time, or this long ago")
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := out.Check(); err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return subcommand.UsageError("want one device id")
	}
	var h admin.DeviceHealth
	if err := api.client().json(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(pos[0])+"/health?since="+url.QueryEscape(*since), nil, &h); err != nil {
		return err
	}
	if out.JSON() {
		return out.Write(stdout, h, nil)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tCPU%\tLOAD1\tMEM\tDISK\tTEMP\tUPTIME")
	for _, p := range h.Points {
		temp := "-"
		if p.TemperatureC != nil {
			temp = strconv.FormatFloat(*p.TemperatureC, 'f', 1, 64)
		}
		fmt.Fprintf(tw, "%s\t%.1f\t%.2f\t%s\t%s\t%s\t%s\n", p.Time.Local().Format(time.DateTime), p.CPUPercent, p.Load1,
			ratio(p.MemUsedBytes, p.MemTotalBytes), ratio(p.DiskUsedBytes, p.DiskTotalBytes), temp,
			(time.Duration(p.UptimeSeconds) * time.Second).String())
	}
	return tw.Flush()
}

func ratio(used, total uint64) string {
	if total == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(used)/float64(total))
}

func runDevicesAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("devices audit", stderr)
	api := adminFlag(fs)
	out := subcommand.OutputFlag(fs)
	limit := fs.Int("limit", 100, "at most this many records, newest first (1 to 1000)")
	before := fs.Uint64("before", 0, "only records numbered below this seq (the next page)")
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := out.Check(); err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return subcommand.UsageError("want one device id")
	}
	q := url.Values{"limit": {strconv.Itoa(*limit)}}
	if *before > 0 {
		q.Set("before", strconv.FormatUint(*before, 10))
	}
	var a admin.DeviceAudit
	if err := api.client().json(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(pos[0])+"/audit?"+q.Encode(), nil, &a); err != nil {
		return err
	}
	if out.JSON() {
		return out.Write(stdout, a, nil)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tMODEL\tACTOR\tACTION\tOUTCOME\tCHAIN\tDETAIL")
	for _, r := range a.Records {
		chain := r.Chain
		if r.Reason != "" {
			chain += " (" + r.Reason + ")"
		}
		model := r.Model
		if r.Version != "" {
			model += ":v" + r.Version
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Local().Format(time.DateTime), model, r.Actor, r.Action,
			r.Outcome, chain, r.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if a.Breaks > 0 {
		fmt.Fprintf(stdout, "%d break(s) of the device's audit chain found\n", a.Breaks)
	}
	return nil
}
