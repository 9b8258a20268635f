package admin

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strconv"

	"github.com/outpost-edge/outpost/fleet/drift"
)

// modelDrift serves GET /v1/models/{name}/drift?version=&device= (docs/API.md):
// the drift state of a model version, fleet-wide and per device, as the
// leader's drift monitor last judged it, with the thresholds it judges by. Without version, the newest
// version that has a state; with device, that device's part only.
func (s *Server) modelDrift(w http.ResponseWriter, r *http.Request) {
	name, version, device := r.PathValue("name"), r.URL.Query().Get("version"), r.URL.Query().Get("device")
	if version != "" {
		if _, err := strconv.ParseInt(version, 10, 64); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("version %q: want a number", version))
			return
		}
	}
	rows, err := s.opts.Registry.DriftRows(name, version)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	reps, err := drift.Reports(rows)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if len(reps) == 0 {
		writeError(w, http.StatusNotFound, fmt.Errorf("no drift state for %s (a version needs a reference profile, and the monitor a window of traffic)", name))
		return
	}
	// The newest by number (versions sort as text in the store).
	rep := slices.MaxFunc(reps, func(a, b drift.Report) int { return cmp.Compare(versionNumber(a.Version), versionNumber(b.Version)) })
	if device != "" {
		var ds []drift.DeviceReport
		for _, d := range rep.Devices {
			if d.Device == device {
				ds = append(ds, d)
			}
		}
		rep.Devices = ds
		if rep.Devices == nil {
			rep.Devices = []drift.DeviceReport{}
		}
	}
	writeJSON(w, http.StatusOK, struct {
		drift.Report
		Thresholds drift.Thresholds `json:"thresholds"`
	}{rep, s.opts.DriftThresholds.WithDefaults()})
}

func versionNumber(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}
