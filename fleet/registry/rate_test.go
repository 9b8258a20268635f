package registry

import (
	"errors"
	"testing"
	"time"
)

// The engine's queries: a rollout's rate round trip, one assignment by key,
// and the online devices.
func TestEngineQueries(t *testing.T) { eachEngine(t, testEngineQueries) }

func testEngineQueries(t *testing.T, newTarget func(*testing.T) target) {
	r := newTarget(t).open(t)
	now := time.Now().UTC()
	rate := Rate{PerMinute: 100, Factor: 1.5, Every: 20, Max: 1000}
	if err := r.PutRollout(&Rollout{ID: "r-1", Model: "face", Version: 1, Waves: []int{100}, State: RolloutRunning, Created: now, Rate: rate}); err != nil {
		t.Fatal(err)
	}
	ro, err := r.Rollout("r-1")
	if err != nil {
		t.Fatal(err)
	}
	if ro.Rate != rate {
		t.Errorf("rate %+v, want %+v", ro.Rate, rate)
	}
	if _, err := r.Assignment("r-1", "gw-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing assignment: got %v, want ErrNotFound", err)
	}
	if _, err := r.UpdateAssignment("r-1", "gw-1", true, func(a *Assignment) bool { a.Wave, a.CommandID = 0, "c-1"; return true }); err != nil {
		t.Fatal(err)
	}
	a, err := r.Assignment("r-1", "gw-1")
	if err != nil || a.CommandID != "c-1" {
		t.Errorf("assignment %+v, %v; want command c-1", a, err)
	}
	for i, on := range []bool{true, false, true} {
		if _, err := r.UpdateDevice([]string{"gw-1", "gw-2", "gw-3"}[i], func(d *Device) { d.Online = on }); err != nil {
			t.Fatal(err)
		}
	}
	got, err := r.OnlineDevices()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got["gw-1"] || !got["gw-3"] {
		t.Errorf("online devices %v, want gw-1 and gw-3", got)
	}
}
