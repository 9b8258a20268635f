package main

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
)

// TestPrintReportsShowsGates: rollout status prints why a wave waits, when
// it times out, its gate, verified and unverified commits, offline devices
// and the recorded decisions.
func TestPrintReportsShowsGates(t *testing.T) {
	at := time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)
	rep := rollout.Report{
		Rollout: registry.Rollout{ID: "r-1", Model: "face", Version: 2, Waves: []int{34, 100}, Wave: 1, State: registry.RolloutRunning,
			WaveTimeout: time.Hour, OnWaveTimeout: registry.WaveTimeoutHalt,
			Decisions: []registry.Decision{{Time: at.Add(-time.Hour), Wave: 0, Action: "timeout-continue", Detail: "wave 1 timed out after 1h0m0s, continuing"}}},
		Waves: []rollout.WaveReport{
			{Percent: 34, Devices: 2, Counts: map[string]int{rollout.CatActive: 2}, Verified: 1, Unverified: 1, Successes: 1, Needed: 1, Gate: rollout.GateTimedOut},
			{Percent: 100, Devices: 3, Counts: map[string]int{rollout.CatPending: 3}, Offline: 2, Needed: 1, Gate: rollout.GateWaiting},
		},
		Committed: 2, Verified: 1, Devices: 5,
		Waiting: "wave 2 waits: 2 of 3 devices offline, 0 of 1 successes needed", TimeoutAt: at,
	}
	var b bytes.Buffer
	printReports(&b, []rollout.Report{rep})
	out := b.String()
	for _, want := range []string{
		"wave 2/2  committed 2 of 5 (1 verified)",
		"wave 2 waits: 2 of 3 devices offline, 0 of 1 successes needed (times out at 2026-11-30T01:00:00Z: halt)",
		"VERIFIED", "UNVERIFIED", "OFFLINE", "timed out", "waiting", "1/1", "0/1",
		"wave 1 timeout-continue: wave 1 timed out after 1h0m0s, continuing",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

// TestWatcher: on a terminal the table is redrawn in place and only when it
// changed; elsewhere a rollout gets a line when it changed, with the bytes
// moved.
func TestWatcher(t *testing.T) {
	rep := rollout.Report{Rollout: registry.Rollout{ID: "r-1", Model: "face", Version: 2, Waves: []int{100}, State: registry.RolloutRunning},
		Waves: []rollout.WaveReport{{Percent: 100, Devices: 2, Counts: map[string]int{rollout.CatDownloading: 2}}}, Devices: 2, BytesMoved: 1536}
	var b bytes.Buffer
	w := &watcher{w: &b, mode: watchRedraw}
	for range 2 {
		if err := w.show([]rollout.Report{rep}); err != nil {
			t.Fatal(err)
		}
	}
	first := b.String()
	if strings.Contains(first, "\x1b[") || strings.Count(first, "r-1") != 1 {
		t.Fatalf("first draw (twice the same report): %q", first)
	}
	rep.Committed, rep.BytesMoved = 1, 3<<20
	if err := w.show([]rollout.Report{rep}); err != nil {
		t.Fatal(err)
	}
	redraw := strings.TrimPrefix(b.String(), first)
	if want := fmt.Sprintf("\x1b[%dA\r\x1b[J", strings.Count(first, "\n")); !strings.HasPrefix(redraw, want) || !strings.Contains(redraw, "moved 3.0 MiB") {
		t.Fatalf("redraw %q, want it to start with %q", redraw, want)
	}

	// A terminal narrower than the table: the redraw goes up every row the
	// wrapped lines took, not one per line.
	b.Reset()
	w = &watcher{w: &b, mode: watchRedraw, width: func() int { return 20 }}
	if err := w.show([]rollout.Report{rep}); err != nil {
		t.Fatal(err)
	}
	drawn := b.String()
	up := 0
	for _, line := range strings.Split(strings.TrimSuffix(drawn, "\n"), "\n") {
		up += max(1, (len(line)+19)/20)
	}
	if up <= strings.Count(drawn, "\n") {
		t.Fatalf("no line of the table is wider than 20 columns: %q", drawn)
	}
	rep.Committed = 2
	if err := w.show([]rollout.Report{rep}); err != nil {
		t.Fatal(err)
	}
	if redraw := strings.TrimPrefix(b.String(), drawn); !strings.HasPrefix(redraw, fmt.Sprintf("\x1b[%dA\r\x1b[J", up)) {
		t.Fatalf("redraw at 20 columns %q, want it to go up %d rows", redraw, up)
	}

	b.Reset()
	at := time.Date(2026, 11, 30, 2, 0, 0, 0, time.UTC)
	w = &watcher{w: &b, mode: watchLines, last: map[string]string{}, now: func() time.Time { return at }}
	rep.Committed, rep.BytesMoved = 0, 1536
	for _, step := range []func(){func() {}, func() {}, func() { rep.Committed = 2; rep.State = registry.RolloutCompleted; rep.BytesMoved = 3 << 20 }} {
		step()
		if err := w.show([]rollout.Report{rep}); err != nil {
			t.Fatal(err)
		}
	}
	want := "2026-11-30T02:00:00Z r-1 face v2 running wave 1/1 committed 0/2 downloading 2 moved 1.5 KiB\n" +
		"2026-11-30T02:00:00Z r-1 face v2 completed wave 1/1 committed 2/2 downloading 2 moved 3.0 MiB\n"
	if b.String() != want {
		t.Fatalf("got lines\n%s\nwant\n%s", b.String(), want)
	}
	if err := watchEnd([]rollout.Report{rep}, map[string]bool{"r-1": true}); err != nil {
		t.Fatalf("completed: %v", err)
	}
	rep.State, rep.Reason = registry.RolloutHalted, "wave 1 failed 2 of 2"
	if err := watchEnd([]rollout.Report{rep}, map[string]bool{"r-1": true}); err == nil || err.Error() != "rollout r-1 halted: wave 1 failed 2 of 2" {
		t.Fatalf("halted: %v", err)
	}
}
