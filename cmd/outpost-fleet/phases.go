package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/rollout"
)

// parsePhase parses a --shadow or --canary value, PERCENT%/DURATION
// ("10%/15m"): a share above 0 and at most 100, a window of at least a
// second.
func parsePhase(flag, s string) (*admin.PhaseRequest, error) {
	bad := func(why string) error {
		return fmt.Errorf("--%s %q: %s (want PERCENT%%/DURATION, like 10%%/15m)", flag, s, why)
	}
	pc, dur, ok := strings.Cut(s, "/")
	num, isPct := strings.CutSuffix(pc, "%")
	if !ok || !isPct {
		return nil, bad("no percent and duration")
	}
	p, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return nil, bad("the percent is not a number")
	}
	if !(p > 0 && p <= 100) {
		return nil, bad("the percent must be above 0 and at most 100")
	}
	d, err := time.ParseDuration(dur)
	if err != nil {
		return nil, bad("the duration is not a duration")
	}
	if d < time.Second {
		return nil, bad("the duration must be at least a second")
	}
	return &admin.PhaseRequest{Percent: p, Duration: d.String()}, nil
}

// readAnalysis reads and parses the analysis config file at path.
func readAnalysis(path string) (*analysis.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := analysis.ParseConfigNamed(path, b)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// phaseText shows a rollout's phases on one line ("shadow 10% for 15m,
// canary 5% for 10m, analysis"); empty without them.
func phaseText(r *rollout.Report) string {
	var parts []string
	if p := r.Shadow; p != nil {
		parts = append(parts, fmt.Sprintf("shadow %g%% for %s", p.Percent, p.Duration))
	}
	if p := r.Canary; p != nil {
		parts = append(parts, fmt.Sprintf("canary %g%% for %s", p.Percent, p.Duration))
	}
	if len(r.Analysis) > 0 {
		parts = append(parts, "analysis")
	}
	return strings.Join(parts, ", ")
}

// printAnalyses prints each analysed phase: its line (wave, phase, window,
// score, verdict, reason), then its metrics (metric, baseline, candidate,
// verdict).
func printAnalyses(w io.Writer, reps []analysis.Report) {
	for _, a := range reps {
		fmt.Fprintf(w, "  wave %d %s analysis %s..%s: score %.0f, %s (%s)\n", a.Wave+1, a.Phase,
			a.From.Format(time.RFC3339), a.To.Format(time.RFC3339), a.Score, a.Verdict, a.Reason)
		if len(a.Metrics) == 0 {
			continue
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "    METRIC\tBASELINE v%d\tCANDIDATE v%d\tN\tVERDICT\tWHY\n", a.Baseline, a.Candidate)
		for _, m := range a.Metrics {
			name := m.Name
			if m.Critical {
				name += " (critical)"
			}
			fmt.Fprintf(tw, "    %s\t%.4g %s\t%.4g %s\t%d/%d\t%s\t%s\n", name, m.Baseline, m.Unit, m.Candidate, m.Unit,
				m.BaselineN, m.CandidateN, m.Verdict, m.Reason)
		}
		tw.Flush()
	}
}
