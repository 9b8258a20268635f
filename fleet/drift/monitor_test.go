package drift

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/registry/metricstest"
)

// countingStore is the real store, counting the windows read.
type countingStore struct {
	*registry.Registry
	mu    sync.Mutex
	reads int
}

func (s *countingStore) Features(q registry.FeatureQuery) (*registry.Features, error) {
	s.mu.Lock()
	s.reads++
	s.mu.Unlock()
	return s.Registry.Features(q)
}

// TestMonitorResumes: the monitor's state lives in the store. A monitor
// that judged the first shifted window, then a new one on the same store
// (a restarted controller, the next leader) raises the drift on the second,
// dated from the first, once per scope (the fleet and the device); a later
// step raises nothing again; after an outage only the last 10 windows are
// judged; reference-like windows then recover it.
func TestMonitorResumes(t *testing.T) {
	dir := t.TempDir()
	reg, err := registry.Open(dir, registry.Options{})
	require.NoError(t, err)
	defer reg.Close()
	r := rand.New(rand.NewPCG(1, 2))
	ref := reference(t, r)
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	var rows metricstest.Rows
	for _, m := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 60, 61, 62} {
		shift := 0.0
		if m >= 6 && m < 60 {
			shift = 0.5
		}
		rows.Add(metricstest.Aggregate{Model: "face", Version: "1", Device: "gw-1", Start: t0.Add(time.Duration(m) * time.Minute),
			Requests: 500, Features: window(ref, r, 500, shift)})
	}
	require.NoError(t, rows.Write(filepath.Join(dir, registry.StoreFile)))

	store := &countingStore{Registry: reg}
	var mu sync.Mutex
	var now time.Time
	var changes []Transition
	monitor := func() *Monitor {
		m, err := New(Options{Store: store, Window: time.Minute, Lateness: time.Second,
			References: func() ([]Reference, error) { return []Reference{{Model: "face", Version: 1, Profile: ref}}, nil },
			Now: func() time.Time {
				mu.Lock()
				defer mu.Unlock()
				return now
			},
			OnTransition: func(_ context.Context, tr Transition) error {
				mu.Lock()
				defer mu.Unlock()
				changes = append(changes, tr)
				return nil
			}})
		require.NoError(t, err)
		return m
	}
	at := func(d time.Duration) {
		mu.Lock()
		now = t0.Add(d)
		mu.Unlock()
	}
	transitions := func() []Transition {
		mu.Lock()
		defer mu.Unlock()
		return append([]Transition(nil), changes...)
	}

	at(7*time.Minute + 2*time.Second) // windows 0 to 6 closed: 6 is the first shifted one
	require.NoError(t, monitor().Step(context.Background()))
	require.Empty(t, transitions(), "raised on one window")

	at(8*time.Minute + 2*time.Second) // a new monitor judges window 7
	require.NoError(t, monitor().Step(context.Background()))
	got := transitions()
	require.Len(t, got, 2, "%+v", got)
	for _, tr := range got {
		require.Equal(t, Drifting, tr.To)
		require.Equal(t, t0.Add(6*time.Minute), tr.Since.UTC(), "scope %q", tr.Device)
	}
	require.ElementsMatch(t, []string{"", "gw-1"}, []string{got[0].Device, got[1].Device})

	at(10*time.Minute + 2*time.Second) // windows 8 and 9, still shifted
	require.NoError(t, monitor().Step(context.Background()))
	require.Len(t, transitions(), 2, "raised again")

	// An outage: from 10 to 60 minutes, only windows 50 to 59 are judged.
	store.mu.Lock()
	store.reads = 0
	store.mu.Unlock()
	at(60*time.Minute + 2*time.Second)
	require.NoError(t, monitor().Step(context.Background()))
	store.mu.Lock()
	require.Equal(t, 10, store.reads, "windows judged after the outage")
	store.mu.Unlock()
	drows, err := reg.DriftRows("face", "1")
	require.NoError(t, err)
	var st Status
	require.NoError(t, json.Unmarshal(drows[0].Status, &st))
	require.Equal(t, "", drows[0].Device)
	require.Equal(t, t0.Add(59*time.Minute), st.Last.UTC())
	require.Equal(t, Drifting, st.State, "quiet windows clear nothing")

	// Reference-like traffic again: recovered after two windows, dated
	// from the first, once per scope.
	at(63*time.Minute + 2*time.Second)
	require.NoError(t, monitor().Step(context.Background()))
	got = transitions()[2:]
	require.Len(t, got, 2, "%+v", got)
	for _, tr := range got {
		require.Equal(t, Recovered, tr.To)
		require.Equal(t, Drifting, tr.From)
		require.Equal(t, t0.Add(60*time.Minute), tr.Since.UTC(), "scope %q", tr.Device)
	}
}
