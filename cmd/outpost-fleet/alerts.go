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

var alertsCommand = subcommand.Command{Name: "alerts",
	Summary: "list the webhook deliveries of the alerts outbox (pending, delivered, failed, cancelled)", Run: runAlerts}

// runAlerts prints GET /v1/alerts/deliveries, newest first.
func runAlerts(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("alerts", stderr)
	api := adminFlag(fs)
	state := fs.String("state", "", "only deliveries in this state: pending, delivered, failed or cancelled")
	webhook := fs.String("webhook", "", "only this webhook's deliveries")
	limit := fs.Int("limit", 50, "at most this many (up to 1000)")
	output := subcommand.OutputFlag(fs)
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if err := output.Check(); err != nil {
		return err
	}
	if *limit < 1 || *limit > 1000 {
		return subcommand.UsageError("--limit: want 1 to 1000")
	}
	q := url.Values{"limit": {strconv.Itoa(*limit)}}
	if *state != "" {
		q.Set("state", *state)
	}
	if *webhook != "" {
		q.Set("webhook", *webhook)
	}
	var list admin.DeliveryList
	if err := api.client().json(ctx, http.MethodGet, "/v1/alerts/deliveries?"+q.Encode(), nil, &list); err != nil {
		return err
	}
	if output.JSON() {
		return output.Write(stdout, list, nil)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED\tWEBHOOK\tEVENT\tSUBJECT\tSTATE\tATTEMPTS\tLAST")
	for _, d := range list.Deliveries {
		last := d.LastError
		if last == "" && d.LastStatus != 0 {
			last = strconv.Itoa(d.LastStatus)
		}
		if d.State == "pending" && d.Due.After(time.Now()) {
			last += " (next " + time.Until(d.Due).Round(time.Second).String() + ")"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.Created.Format(time.RFC3339), d.Webhook, d.Event, d.Subject, d.State, d.Attempts, last)
	}
	return tw.Flush()
}
