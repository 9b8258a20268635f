package drift

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
)

// Report is a model version's drift as the admin API serves it
// (GET /v1/models/{name}/drift, docs/API.md): the fleet's state and last
// judged scores, then each device's.
type Report struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	// Since is when the fleet's state began (zero while it never left ok).
	Since time.Time `json:"since,omitzero"`
	State State     `json:"state"`
	// Window is the start of the last window judged.
	Window   time.Time      `json:"window,omitzero"`
	Features []FeatureScore `json:"features"`
	Devices  []DeviceReport `json:"devices"`
}

// DeviceReport is one device's part of a Report.
type DeviceReport struct {
	Device   string         `json:"device"`
	State    State          `json:"state"`
	Since    time.Time      `json:"since,omitzero"`
	Features []FeatureScore `json:"features"`
}

// Reports decodes the rows of DriftRows into one Report per version, in
// the rows' order (the fleet's row of a version first). A row that does
// not decode is an error: the monitor wrote it.
func Reports(rows []registry.DriftRow) ([]Report, error) {
	var out []Report
	for _, r := range rows {
		var st Status
		var sc Score
		if err := json.Unmarshal(r.Status, &st); err != nil {
			return nil, fmt.Errorf("drift: state of %s v%s %q: %w", r.Model, r.Version, r.Device, err)
		}
		if err := json.Unmarshal(r.Score, &sc); err != nil {
			return nil, fmt.Errorf("drift: scores of %s v%s %q: %w", r.Model, r.Version, r.Device, err)
		}
		if sc.Features == nil {
			sc.Features = []FeatureScore{}
		}
		if len(out) == 0 || out[len(out)-1].Version != r.Version {
			out = append(out, Report{Model: r.Model, Version: r.Version, State: OK, Features: []FeatureScore{}, Devices: []DeviceReport{}})
		}
		rep := &out[len(out)-1]
		if r.Device == "" {
			rep.State, rep.Since, rep.Window, rep.Features = st.State, st.Since, st.Last, sc.Features
			continue
		}
		rep.Devices = append(rep.Devices, DeviceReport{Device: r.Device, State: st.State, Since: st.Since, Features: sc.Features})
	}
	return out, nil
}
