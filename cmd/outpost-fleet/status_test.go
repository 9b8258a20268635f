package main

import (
	"bytes"
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
