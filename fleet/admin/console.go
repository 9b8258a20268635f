package admin

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
)

// What the web console (fleet/console) reads besides the rest of the API:
// devices a page at a time, a fleet summary, a device's update history and
// who the token belongs to. Any client may use them.

// paged reports whether a devices list asks for a page (limit, cursor or
// q): without them the list is the whole array it always was.
func paged(r *http.Request) bool {
	q := r.URL.Query()
	return q.Has("limit") || q.Has("cursor") || q.Has("q")
}

// listDevicesPage answers GET /v1/devices?limit=&cursor=&q= with
// {"devices": [...], "next_cursor": "...", "total": n}.
func (s *Server) listDevicesPage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dq := registry.DeviceQuery{Q: q.Get("q"), Cursor: q.Get("cursor")}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > registry.MaxDevicePage {
			writeError(w, http.StatusBadRequest, errors.New("limit: want 1 to "+strconv.Itoa(registry.MaxDevicePage)))
			return
		}
		dq.Limit = n
	}
	p, err := s.opts.Registry.DevicesPage(dq)
	if errors.Is(err, registry.ErrInvalidQuery) {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// summaryFresh is how long an overview is served again: every open
// console asks every 5 s, and counting 10,000 devices reads them all.
const summaryFresh = 2 * time.Second

// summaryCache holds the last fleet summary. Requests that arrive while one
// is being counted wait for it instead of counting again.
type summaryCache struct {
	mu  sync.Mutex // guards the fields below, and is held while counting
	at  time.Time
	sum *registry.FleetSummary
}

func (c *summaryCache) get(now time.Time, count func() (*registry.FleetSummary, error)) (*registry.FleetSummary, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sum != nil && now.Sub(c.at) < summaryFresh && !now.Before(c.at) {
		return c.sum, nil
	}
	sum, err := count()
	if err != nil {
		return nil, err
	}
	c.sum, c.at = sum, now
	return sum, nil
}

// overview answers GET /v1/overview with the fleet's summary, at most
// summaryFresh old.
func (s *Server) overview(w http.ResponseWriter, r *http.Request) {
	sum, err := s.summary.get(s.opts.Now(), s.opts.Registry.Summary)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, sum)
}

// deviceUpdates answers GET /v1/devices/{id}/updates: the device's
// assignments in every rollout, newest rollout first.
func (s *Server) deviceUpdates(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.opts.Registry.Device(id); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	as, err := s.opts.Registry.DeviceAssignments(id)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if as == nil {
		as = []registry.Assignment{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"device": id, "updates": as})
}

// whoami answers GET /v1/whoami with the token's id, name and role, so a
// client can show what the role allows.
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	a, _ := ActorFrom(r.Context())
	writeJSON(w, http.StatusOK, map[string]string{"id": a.ID, "name": a.Name, "role": string(a.Role)})
}

// rolloutsFor lists the rollouts GET /v1/rollouts asks for, oldest first:
// with ?state=running,paused only those in the states named, with ?limit=N
// only the newest N of them. Each listed rollout's report reads all its
// assignments, so a console polling the active ones asks for those only.
// A malformed query is an error wrapping registry.ErrInvalidQuery.
func (s *Server) rolloutsFor(r *http.Request) ([]registry.Rollout, error) {
	var ros []registry.Rollout
	var err error
	q := r.URL.Query()
	if st := q.Get("state"); st != "" {
		var states []registry.RolloutState
		for _, name := range strings.Split(st, ",") {
			rs := registry.RolloutState(strings.TrimSpace(name))
			if !slices.Contains(rolloutStates, rs) {
				return nil, fmt.Errorf("state %q: want one of %v: %w", name, rolloutStates, registry.ErrInvalidQuery)
			}
			states = append(states, rs)
		}
		ros, err = s.opts.Registry.RolloutsIn(states...)
	} else {
		ros, err = s.opts.Registry.Rollouts()
	}
	if l := q.Get("limit"); l != "" {
		n, perr := strconv.Atoi(l)
		if perr != nil || n < 1 {
			return nil, fmt.Errorf("limit %q: want a positive number: %w", l, registry.ErrInvalidQuery)
		}
		if len(ros) > n {
			ros = ros[len(ros)-n:]
		}
	}
	return ros, err
}

var rolloutStates = []registry.RolloutState{registry.RolloutRunning, registry.RolloutPaused, registry.RolloutCompleted,
	registry.RolloutHalted, registry.RolloutAborted, registry.RolloutSuperseded}
