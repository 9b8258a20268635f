package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/internal/subcommand"
)

// runRolloutStatus prints rollouts once, or with --watch until the rollouts
// it watches end. Watching, it redraws the table in place on a terminal;
// elsewhere (a pipe, a file, TERM=dumb) it prints one line per rollout each
// time the rollout changes, and with -o json one JSON report per line. The
// exit status of a watch says how the watched rollouts ended: 0 when all
// completed, 1 when one halted, was aborted or superseded.
func runRolloutStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rollout status", stderr)
	api := adminFlag(fs)
	out := subcommand.OutputFlag(fs)
	watch := fs.Bool("watch", false, "follow the rollout until it ends (or Ctrl-C); exit 1 if it halts or is aborted")
	interval := fs.Duration("interval", 2*time.Second, "refresh interval with --watch")
	pos, err := subcommand.ParseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return subcommand.UsageError("at most one rollout id")
	}
	if err := out.Check(); err != nil {
		return err
	}
	if *interval <= 0 {
		return subcommand.UsageError("--interval must be positive")
	}
	c := api.client()
	fetch := func() ([]rollout.Report, error) {
		if len(pos) == 1 {
			var rep rollout.Report
			err := c.json(ctx, http.MethodGet, "/v1/rollouts/"+pos[0], nil, &rep)
			return []rollout.Report{rep}, err
		}
		var reps []rollout.Report
		err := c.json(ctx, http.MethodGet, "/v1/rollouts", nil, &reps)
		return reps, err
	}
	reps, err := fetch()
	if err != nil {
		return err
	}
	if !*watch {
		var v any = reps
		if len(pos) == 1 {
			v = reps[0]
		}
		return out.Write(stdout, v, func() error {
			printReports(stdout, reps)
			return nil
		})
	}
	// Watched: the rollout named, else those active now.
	watched := map[string]bool{}
	for _, r := range reps {
		if len(pos) == 1 || ongoing(r.State) {
			watched[r.ID] = true
		}
	}
	mode := watchLines
	switch {
	case out.JSON():
		mode = watchJSON
	case isTerminal(stdout):
		mode = watchRedraw
	}
	w := &watcher{w: stdout, mode: mode, last: map[string]string{}, width: func() int { return termWidth(stdout) }}
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		if err := w.show(reps); err != nil {
			return err
		}
		active := false
		for _, r := range reps {
			active = active || (watched[r.ID] && ongoing(r.State))
		}
		if !active {
			return watchEnd(reps, watched)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if reps, err = fetch(); err != nil {
			return err
		}
	}
}

// watchEnd is the watch's result: an error naming every watched rollout
// that did not complete.
func watchEnd(reps []rollout.Report, watched map[string]bool) error {
	var bad []string
	for _, r := range reps {
		if watched[r.ID] && r.State != registry.RolloutCompleted {
			s := fmt.Sprintf("rollout %s %s", r.ID, r.State)
			if r.Reason != "" {
				s += ": " + r.Reason
			}
			bad = append(bad, s)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return nil
}

type watchMode int

const (
	watchLines  watchMode = iota // one line per rollout and change
	watchRedraw                  // the table, redrawn in place
	watchJSON                    // one JSON report per rollout and change
)

// watcher prints what changed since the last show.
type watcher struct {
	w     io.Writer
	mode  watchMode
	last  map[string]string // by rollout id, what was printed (lines, JSON)
	table string            // what was drawn (redraw)
	width func() int        // the terminal's columns, 0 unknown (redraw; nil: unknown)
	now   func() time.Time  // nil: time.Now
}

func (w *watcher) show(reps []rollout.Report) error {
	if w.mode == watchRedraw {
		var b bytes.Buffer
		printReports(&b, reps)
		if b.String() == w.table {
			return nil
		}
		width := 0
		if w.width != nil {
			width = w.width()
		}
		if n := rows(w.table, width); n > 0 {
			// Up to the first row drawn, then clear to the end of the screen.
			fmt.Fprintf(w.w, "\x1b[%dA\r\x1b[J", n)
		}
		w.table = b.String()
		_, err := io.WriteString(w.w, w.table)
		return err
	}
	for _, r := range reps {
		var line string
		if w.mode == watchJSON {
			b, err := json.Marshal(r)
			if err != nil {
				return err
			}
			line = string(b)
		} else {
			line = summary(r)
		}
		if w.last[r.ID] == line {
			continue
		}
		w.last[r.ID] = line
		if w.mode == watchLines {
			now := time.Now
			if w.now != nil {
				now = w.now
			}
			line = now().UTC().Format(time.RFC3339) + " " + line
		}
		if _, err := fmt.Fprintln(w.w, line); err != nil {
			return err
		}
	}
	return nil
}

// summary is a rollout in one line.
func summary(r rollout.Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s v%d %s wave %d/%d committed %d/%d", r.ID, r.Model, r.Version, r.State,
		min(r.Rollout.Wave+1, len(r.Rollout.Waves)), len(r.Rollout.Waves), r.Committed, r.Devices)
	if r.Phase != "" && (r.State == registry.RolloutRunning || r.State == registry.RolloutPaused) {
		fmt.Fprintf(&b, " phase %s", r.Phase)
		if n := len(r.Analyses); n > 0 && r.Analyses[n-1].Wave == r.Rollout.Wave && string(r.Analyses[n-1].Phase) == r.Phase {
			fmt.Fprintf(&b, " (analysis: %s, score %.0f)", r.Analyses[n-1].Verdict, r.Analyses[n-1].Score)
		}
	}
	counts := map[string]int{}
	for _, wv := range r.Waves {
		for c, n := range wv.Counts {
			counts[c] += n
		}
	}
	for _, c := range []string{rollout.CatDownloading, rollout.CatValidating, rollout.CatFailed, rollout.CatRolledBack} {
		if counts[c] > 0 {
			fmt.Fprintf(&b, " %s %d", strings.ReplaceAll(c, "_", "-"), counts[c])
		}
	}
	fmt.Fprintf(&b, " moved %s", humanBytes(r.BytesMoved))
	if r.Reason != "" {
		fmt.Fprintf(&b, " (%s)", r.Reason)
	}
	return b.String()
}

// humanBytes writes n in B, KiB, MiB or GiB.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n)/unit, 0
	for f >= unit && i < 2 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %s", f, []string{"KiB", "MiB", "GiB"}[i])
}

// rows is how many terminal rows the lines of s (each ending in a newline)
// take when the terminal wraps them at width columns; width 0 (unknown)
// counts a row per line. The table is text of single-width characters.
func rows(s string, width int) int {
	n := 0
	for line := range strings.Lines(s) {
		if !strings.HasSuffix(line, "\n") {
			break // not ended: the cursor is still on it
		}
		cols := utf8.RuneCountInString(line) - 1
		if width <= 0 || cols <= width {
			n++
			continue
		}
		n += (cols + width - 1) / width
	}
	return n
}

// termWidth is the number of columns of the terminal w, 0 if unknown.
func termWidth(w io.Writer) int {
	f, ok := w.(*os.File)
	if !ok {
		return 0
	}
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil {
		return 0
	}
	return int(ws.Col)
}

// isTerminal reports whether w is a terminal that understands cursor
// movement.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// ongoing reports whether a rollout in state s may still change.
func ongoing(s registry.RolloutState) bool {
	return s == registry.RolloutRunning || s == registry.RolloutPaused
}

// progress draws an upload's progress on one terminal line, at most ten
// times a second. Its methods are called from one goroutine at a time.
type progress struct {
	w           io.Writer
	label       string
	total, sent int64
	drawn       time.Time
}

func (p *progress) Write(b []byte) (int, error) {
	p.sent += int64(len(b))
	if now := time.Now(); now.Sub(p.drawn) >= 100*time.Millisecond || p.sent == p.total {
		p.drawn = now
		p.draw()
	}
	return len(b), nil
}

func (p *progress) draw() {
	pct := 100
	if p.total > 0 {
		pct = int(p.sent * 100 / p.total)
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s: %s of %s (%d%%)", p.label, humanBytes(p.sent), humanBytes(p.total), pct)
}

// done ends the progress line; a nil progress does nothing.
func (p *progress) done() {
	if p == nil {
		return
	}
	p.draw()
	fmt.Fprintln(p.w)
}
