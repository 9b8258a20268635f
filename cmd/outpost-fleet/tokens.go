package main

import (
	"context"
	"errors"
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
	tokensCreateCommand = subcommand.Command{Name: "tokens create",
		Summary: "mint an admin API token with a role (shown once)", Run: runTokensCreate}
	tokensListCommand = subcommand.Command{Name: "tokens list",
		Summary: "list admin API tokens (ids, names, roles; never secrets)", Run: runTokensList}
	tokensRevokeCommand = subcommand.Command{Name: "tokens revoke",
		Summary: "revoke an admin API token", Run: runTokensRevoke}
	auditCommand = subcommand.Command{Name: "audit",
		Summary: "show the fleet audit log (who changed what, and how it ended) and check its chain", Run: runAudit}
)

func runTokensCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tokens create", stderr)
	api := adminFlag(fs)
	role := fs.String("role", "", "viewer, operator or admin (required)")
	name := fs.String("name", "", "a name for the token (who or what holds it)")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if _, err := admin.ParseRole(*role); err != nil {
		fs.Usage()
		return subcommand.UsageError("--role: want viewer, operator or admin")
	}
	var tok admin.NewToken
	if err := api.client().json(ctx, http.MethodPost, "/v1/tokens", admin.TokenRequest{Role: *role, Name: *name}, &tok); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "token %s (%s) created, shown once:\n", tok.ID, tok.Role)
	fmt.Fprintln(stdout, tok.Token)
	return nil
}

func runTokensList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tokens list", stderr)
	api := adminFlag(fs)
	out := subcommand.OutputFlag(fs)
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if err := out.Check(); err != nil {
		return err
	}
	var ts []admin.TokenInfo
	if err := api.client().json(ctx, http.MethodGet, "/v1/tokens", nil, &ts); err != nil {
		return err
	}
	if out.JSON() {
		return out.Write(stdout, ts, nil)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tROLE\tCREATED\tREVOKED")
	for _, t := range ts {
		rev := "-"
		if t.Revoked != nil {
			rev = t.Revoked.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, t.Created.Format(time.RFC3339), rev)
	}
	return tw.Flush()
}

func runTokensRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tokens revoke", stderr)
	api := adminFlag(fs)
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return subcommand.UsageError("one token id is required")
	}
	var t admin.TokenInfo
	if err := api.client().json(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(pos[0]), nil, &t); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.status == http.StatusNotFound {
			return fmt.Errorf("no token %s", pos[0])
		}
		return err
	}
	fmt.Fprintf(stdout, "token %s (%s) revoked\n", t.ID, t.Role)
	return nil
}

// runAudit prints the audit log; it fails (exit 1) when the chain does not
// verify, after printing what it has.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("audit", stderr)
	api := adminFlag(fs)
	since := fs.String("since", "", "only records from this time on: RFC 3339, or a duration back from now (1h)")
	limit := fs.Int("limit", 0, "at most this many records (0: all)")
	output := subcommand.OutputFlag(fs)
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	if err := output.Check(); err != nil {
		return err
	}
	q := url.Values{}
	if *since != "" {
		if d, err := time.ParseDuration(*since); err == nil {
			q.Set("since", time.Now().Add(-d).UTC().Format(time.RFC3339))
		} else if _, err := time.Parse(time.RFC3339, *since); err == nil {
			q.Set("since", *since)
		} else {
			return subcommand.UsageError("--since: want RFC 3339 or a duration")
		}
	}
	if *limit > 0 {
		q.Set("limit", strconv.Itoa(*limit))
	}
	path := "/v1/audit"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var page admin.AuditPage
	if err := api.client().json(ctx, http.MethodGet, path, nil, &page); err != nil {
		return err
	}
	if output.JSON() {
		if err := output.Write(stdout, page, nil); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tTIME\tACTOR\tNAME\tROLE\tMETHOD\tPATH\tSTATUS")
		for _, r := range page.Records {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", r.Seq, r.Time.Format(time.RFC3339), r.Actor, r.ActorName, r.Role, r.Method, r.Path, r.Status)
			if r.Detail != "" { // the rollout engine's decisions say why, with their numbers
				fmt.Fprintf(tw, "\t\t\t\t\t\t\t\t%s\n", r.Detail) // after STATUS: no column widens
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if !page.Verified {
		return fmt.Errorf("audit chain broken: %s", page.ChainError)
	}
	if !output.JSON() {
		fmt.Fprintf(stdout, "chain verified: %d records\n", page.Count)
	}
	return nil
}
