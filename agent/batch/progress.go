package batch

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// progress draws the run's progress: a bar redrawn in place on a terminal,
// or a plain line per period otherwise. Only the progress goroutine uses it.
type progress struct {
	w        io.Writer
	terminal bool
	total    int
	skipped  int // done by an earlier run (resume)
	start    time.Time
	width    int // of the last bar drawn, to blank it fully
}

// Stats counts a run's items.
type Stats struct {
	Total   int // items in the input
	Skipped int // already in the output when the run began (resume)
	Done    int // records written by this run
	Errors  int // error records written by this run
	Elapsed time.Duration
}

// ItemsPerSecond is this run's throughput.
func (s Stats) ItemsPerSecond() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Done) / s.Elapsed.Seconds()
}

// line formats one progress report: items, rate and ETA.
func (p *progress) line(s Stats, now time.Time) string {
	el := now.Sub(p.start)
	rate := 0.0
	if el > 0 {
		rate = float64(s.Done) / el.Seconds()
	}
	done := s.Skipped + s.Done
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(done) / float64(p.total)
	}
	eta := "?"
	if rate > 0 {
		eta = (time.Duration(float64(p.total-done) / rate * float64(time.Second))).Round(time.Second).String()
	}
	msg := fmt.Sprintf("%d/%d items (%.1f%%) %.1f items/s ETA %s", done, p.total, pct, rate, eta)
	if s.Errors > 0 {
		msg += fmt.Sprintf(", %d errors", s.Errors)
	}
	return msg
}

// draw reports s: on a terminal it redraws the bar in place.
func (p *progress) draw(s Stats, now time.Time) {
	msg := p.line(s, now)
	if !p.terminal {
		fmt.Fprintf(p.w, "batch: %s\n", msg)
		return
	}
	const barWidth = 30
	filled := barWidth
	if p.total > 0 {
		filled = barWidth * (s.Skipped + s.Done) / p.total
	}
	bar := "[" + strings.Repeat("=", filled) + strings.Repeat(" ", barWidth-filled) + "] " + msg
	pad := ""
	if len(bar) < p.width {
		pad = strings.Repeat(" ", p.width-len(bar))
	}
	p.width = len(bar)
	fmt.Fprintf(p.w, "\r%s%s", bar, pad)
}

// finish draws the last report and ends the bar's line.
func (p *progress) finish(s Stats, now time.Time) {
	p.draw(s, now)
	if p.terminal {
		fmt.Fprintln(p.w)
	}
}
