package drift

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/models/profile"
)

// Store is what the monitor reads and writes (fleet/registry): the fleet's
// feature histograms of a range, every device's in one read, and the state
// rows.
type Store interface {
	Features(q registry.FeatureQuery) (*registry.Features, error)
	DeviceFeatures(model, version string, step int64, since, until time.Time) (map[string]*registry.Features, error)
	DriftRows(model, version string) ([]registry.DriftRow, error)
	PutDrift(rows []registry.DriftRow) error
}

// Reference is a model version with a reference profile: what the monitor
// judges.
type Reference struct {
	Model   string
	Version int64
	Profile *profile.Profile
}

// Transition is a scope's change of state, for the webhooks.
type Transition struct {
	Model, Version, Device string // Device "" for the fleet
	From, To               State
	Since                  time.Time
	Window                 time.Duration
	Score                  Score
}

// Options configure a Monitor. Store, References and Window are required.
type Options struct {
	Store Store
	// References lists the model versions to judge; called every window.
	References func() ([]Reference, error)
	// Window is the length of the windows judged, a whole number of
	// seconds that the store keeps feature buckets of (Bucket).
	Window time.Duration
	// Bucket is the step, in seconds, of the buckets read for a window:
	// Window itself when the store keeps buckets that fine, else a divisor.
	// Default: Window's seconds.
	Bucket int64
	// Lateness is how long after a window ends it is judged, so that the
	// devices' aggregates of it have arrived (they are sent at the end of
	// each aggregate interval). Default: Window, at least 10 s.
	Lateness time.Duration
	// Thresholds are the defaults for every model (Thresholds' zero
	// fields take Defaults).
	Thresholds Thresholds
	// Devices: also judge each device on its own (default true through
	// NoDevices false).
	NoDevices bool
	// OnTransition, if set, is called for every change of state before the
	// new state is stored (the webhooks; docs/MONITORING.md): an error, or a
	// crash before the store, judges the window again next time, and the
	// same transition comes again (same scope, state and Since), which the
	// webhook outbox delivers once.
	OnTransition func(ctx context.Context, t Transition) error
	Now          func() time.Time
	Logger       *slog.Logger
}

// Monitor judges every model version with a reference once a window.
type Monitor struct {
	opts Options
	log  *slog.Logger
}

// New checks opts and returns a monitor.
func New(opts Options) (*Monitor, error) {
	if opts.Store == nil || opts.References == nil {
		return nil, errors.New("drift: store and references are required")
	}
	if opts.Window < time.Second || opts.Window%time.Second != 0 {
		return nil, fmt.Errorf("drift: window %s: want a whole number of seconds, at least 1 s", opts.Window)
	}
	if opts.Bucket <= 0 {
		opts.Bucket = int64(opts.Window / time.Second)
	}
	if int64(opts.Window/time.Second)%opts.Bucket != 0 {
		return nil, fmt.Errorf("drift: window %s is not a whole number of %d s buckets", opts.Window, opts.Bucket)
	}
	if opts.Lateness <= 0 {
		opts.Lateness = max(opts.Window, 10*time.Second)
	}
	opts.Thresholds = opts.Thresholds.WithDefaults()
	if err := opts.Thresholds.Validate(); err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Monitor{opts: opts, log: log.With("component", "drift")}, nil
}

// Run judges the windows as they close, until ctx ends.
func (m *Monitor) Run(ctx context.Context) error {
	t := time.NewTicker(min(m.opts.Window, 10*time.Second))
	defer t.Stop()
	for {
		if err := m.Step(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("drift", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Step judges, for every reference, the windows closed since the last
// judged one (at most the last 10, so a controller that was down does not
// replay days).
func (m *Monitor) Step(ctx context.Context) error {
	refs, err := m.opts.References()
	if err != nil {
		return err
	}
	var errs []error
	for _, ref := range refs {
		if err := m.judge(ctx, ref); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// scope is one row's state in memory.
type scope struct {
	status Status
	score  Score
	dirty  bool
}

func (m *Monitor) judge(ctx context.Context, ref Reference) error {
	version := strconv.FormatInt(ref.Version, 10)
	rows, err := m.opts.Store.DriftRows(ref.Model, version)
	if err != nil {
		return err
	}
	scopes := map[string]*scope{}
	for _, r := range rows {
		s := &scope{}
		if err := json.Unmarshal(r.Status, &s.status); err != nil {
			return fmt.Errorf("drift: state of %s v%s %q: %w", ref.Model, version, r.Device, err)
		}
		_ = json.Unmarshal(r.Score, &s.score) // informative only
		scopes[r.Device] = s
	}
	fleet := scopes[""]
	if fleet == nil {
		fleet = &scope{status: Status{State: OK}}
		scopes[""] = fleet
	}
	w := m.opts.Window
	closed := m.opts.Now().Add(-m.opts.Lateness).Truncate(w) // windows ending at or before this are judged
	from := closed.Add(-10 * w)
	if !fleet.status.Last.IsZero() && fleet.status.Last.Add(w).After(from) {
		from = fleet.status.Last.Add(w)
	}
	var transitions []Transition
	for start := from; !start.Add(w).After(closed); start = start.Add(w) {
		end := start.Add(w)
		fleetF, err := m.opts.Store.Features(registry.FeatureQuery{Model: ref.Model, Version: version,
			Since: start, Until: end, Bucket: m.opts.Bucket})
		if err != nil {
			return err
		}
		byDevice := map[string]*registry.Features{"": fleetF}
		devices := []string{""}
		if !m.opts.NoDevices {
			ds, err := m.opts.Store.DeviceFeatures(ref.Model, version, m.opts.Bucket, start, end)
			if err != nil {
				return err
			}
			for d, f := range ds {
				byDevice[d] = f
				devices = append(devices, d)
			}
			sort.Strings(devices[1:])
		}
		for _, device := range devices {
			f := byDevice[device]
			s := scopes[device]
			if s == nil {
				s = &scope{status: Status{State: OK}}
				scopes[device] = s
			}
			score := Judge(ref.Profile, f.Features, m.opts.Thresholds)
			from := s.status.State
			next, changed := Next(s.status, start, score, m.opts.Thresholds)
			s.status, s.dirty = next, true
			if score.Judged {
				s.score = score
			}
			if changed {
				transitions = append(transitions, Transition{Model: ref.Model, Version: version, Device: device,
					From: from, To: next.State, Since: next.Since, Window: w, Score: score})
			}
		}
		// The fleet's row records the last window judged, even when no
		// device sent anything in it.
		if fleet.status.Last.Before(start) {
			fleet.status.Last, fleet.dirty = start, true
		}
	}
	for _, t := range transitions {
		m.log.Info("drift "+string(t.To), "model", t.Model, "version", t.Version, "device", t.Device, "since", t.Since)
		if m.opts.OnTransition != nil {
			if err := m.opts.OnTransition(ctx, t); err != nil {
				return fmt.Errorf("drift: %s v%s: %w", t.Model, t.Version, err)
			}
		}
	}
	var out []registry.DriftRow
	now := m.opts.Now()
	for device, s := range scopes {
		if !s.dirty {
			continue
		}
		st, _ := json.Marshal(s.status)
		sc, _ := json.Marshal(s.score)
		out = append(out, registry.DriftRow{Model: ref.Model, Version: version, Device: device, Status: st, Score: sc, Updated: now})
	}
	return m.opts.Store.PutDrift(out)
}
