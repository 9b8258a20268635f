package protocol

import (
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/models/manifest"
)

// UpdateState is a state of a device's update state machine, as reported in
// acks and in the status message.
type UpdateState string

// Update states, in the order a successful install passes through them
// (idle is the status of a device with no update under way; it never
// appears in an ack).
const (
	UpdateIdle        UpdateState = "idle"
	UpdateDownloading UpdateState = "downloading"
	UpdateVerifying   UpdateState = "verifying"
	UpdateStaged      UpdateState = "staged"
	UpdateValidating  UpdateState = "validating"
	// UpdateShadow and UpdateCanary hold a validated candidate beside the
	// serving version, on an install that carries a Trial (docs/PROTOCOL.md,
	// Trials): copies of live requests go to it (shadow), or a share of the
	// requests is answered by it (canary). Neither is activated: the serving
	// version stays current until an install without a trial promotes the
	// candidate, and an abort discards it.
	UpdateShadow      UpdateState = "shadow"
	UpdateCanary      UpdateState = "canary"
	UpdateActivating  UpdateState = "activating"
	UpdateProbation   UpdateState = "probation"
	UpdateCommitted   UpdateState = "committed"
	UpdateRollingBack UpdateState = "rolling_back"
	UpdateRolledBack  UpdateState = "rolled_back"
	UpdateFailed      UpdateState = "failed"
)

var updateStates = map[UpdateState]bool{
	UpdateIdle: true, UpdateDownloading: true, UpdateVerifying: true, UpdateStaged: true,
	UpdateValidating: true, UpdateShadow: true, UpdateCanary: true, UpdateActivating: true, UpdateProbation: true, UpdateCommitted: true,
	UpdateRollingBack: true, UpdateRolledBack: true, UpdateFailed: true,
}

// Valid reports whether s is one of the states above.
func (s UpdateState) Valid() bool { return updateStates[s] }

// Terminal reports whether s ends a command: committed, rolled_back, failed.
func (s UpdateState) Terminal() bool {
	return s == UpdateCommitted || s == UpdateRolledBack || s == UpdateFailed
}

// Activated reports whether the new version is (or was) serving: from
// activating on, until a rollback completes.
func (s UpdateState) Activated() bool {
	return s == UpdateActivating || s == UpdateProbation || s == UpdateCommitted || s == UpdateRollingBack
}

// Ack is the JSON payload of a device's ack topic: progress or result of one
// command. A device sends at least one ack per command it accepted, and one
// for every state it enters; the last for a command has a Terminal state
// (abort answers with the state the rollout's update is left in).
type Ack struct {
	CommandID string      `json:"command_id"`
	RolloutID string      `json:"rollout_id"`
	Model     string      `json:"model,omitempty"`
	Version   int64       `json:"version,omitempty"`
	State     UpdateState `json:"state"`
	// Progress and Total are bytes of the artifact held and expected (while
	// downloading; Total is the install's artifact length).
	Progress int64 `json:"progress_bytes,omitempty"`
	Total    int64 `json:"total_bytes,omitempty"`
	// Error says why, for failed and rolled_back.
	Error string `json:"error,omitempty"`
	// Detail is free text for people ("nothing to roll back").
	Detail string `json:"detail,omitempty"`
	// Requests is how many requests the new version served during
	// probation (in probation and committed acks).
	Requests int64 `json:"probation_requests,omitempty"`
	// Verified is set on a committed ack when probation saw at least its
	// minimum number of requests; a commit without it ended probation at
	// its maximum duration with too little traffic to judge the version.
	Verified bool      `json:"verified,omitempty"`
	Time     time.Time `json:"time"`
}

// Validate checks the ack's fields.
func (a *Ack) Validate() error {
	switch {
	case !validID(a.CommandID) || !validID(a.RolloutID):
		return fmt.Errorf("protocol: ack: ids %q %q: %w", a.CommandID, a.RolloutID, ErrMalformed)
	case !a.State.Valid() || a.State == UpdateIdle:
		return fmt.Errorf("protocol: ack: state %q: %w", a.State, ErrMalformed)
	case a.Model != "" && !manifest.ValidName(a.Model), a.Version < 0:
		return fmt.Errorf("protocol: ack: model %q v%d: %w", a.Model, a.Version, ErrMalformed)
	case a.Progress < 0 || a.Total < 0 || a.Requests < 0:
		return fmt.Errorf("protocol: ack: progress %d of %d, %d requests: %w", a.Progress, a.Total, a.Requests, ErrMalformed)
	case a.Verified && a.State != UpdateCommitted:
		return fmt.Errorf("protocol: ack: verified in state %s: %w", a.State, ErrMalformed)
	case len(a.Error) > MaxStringLen || len(a.Detail) > MaxStringLen:
		return fmt.Errorf("protocol: ack: text too long: %w", ErrMalformed)
	}
	return nil
}

// ParseAck decodes and validates an ack.
func ParseAck(b []byte) (*Ack, error) {
	if len(b) > 16<<10 {
		return nil, fmt.Errorf("protocol: ack: %d bytes: %w", len(b), ErrMalformed)
	}
	var a Ack
	if err := decodeLenient(b, &a); err != nil {
		return nil, fmt.Errorf("protocol: ack: %v: %w", err, ErrMalformed)
	}
	if err := a.Validate(); err != nil {
		return nil, err
	}
	return &a, nil
}

// Status is the JSON payload of a device's status topic, published retained
// after every connection and whenever a field changes, so the controller
// learns a device's labels, models and update state as soon as it
// subscribes.
type Status struct {
	Protocol     int               `json:"protocol"` // Version
	Device       string            `json:"device"`
	AgentVersion string            `json:"agent_version"`
	Labels       map[string]string `json:"labels,omitempty"`
	// RootVersion is the newest trust root the device holds.
	RootVersion int64         `json:"root_version,omitempty"`
	Models      []ModelStatus `json:"models,omitempty"`
	// Update is the device's current or last update, nil if it never had one.
	Update *UpdateStatus `json:"update,omitempty"`
	Health HealthSummary `json:"health"`
	// Features names optional parts of the protocol the agent implements
	// (FeatureTrial); absent in agents from before the list.
	Features []string  `json:"features,omitempty"`
	Time     time.Time `json:"time"`
}

// FeatureTrial in Status.Features: the agent holds candidates on trial
// (Install.Trial), so a controller may send it one.
const FeatureTrial = "trial"

// Supports reports whether the status lists feature f.
func (s *Status) Supports(f string) bool {
	for _, g := range s.Features {
		if g == f {
			return true
		}
	}
	return false
}

// ModelStatus is one model the device serves.
type ModelStatus struct {
	Name    string `json:"name"`
	Version int64  `json:"version"`
	Digest  string `json:"digest"` // "sha256:<hex>"
	// Previous is the version a rollback would return to; 0 if none.
	Previous int64 `json:"previous,omitempty"`
}

// UpdateStatus is the device's current or most recent update.
type UpdateStatus struct {
	CommandID string      `json:"command_id"`
	RolloutID string      `json:"rollout_id"`
	Model     string      `json:"model"`
	Version   int64       `json:"version"`
	State     UpdateState `json:"state"`
	Progress  int64       `json:"progress_bytes,omitempty"`
	Total     int64       `json:"total_bytes,omitempty"`
	Error     string      `json:"error,omitempty"`
	// Requests and Verified are as in Ack.
	Requests int64     `json:"probation_requests,omitempty"`
	Verified bool      `json:"verified,omitempty"`
	Time     time.Time `json:"time"`
}

// HealthSummary summarises the device for the controller.
type HealthSummary struct {
	// Status is "ok", "degraded" or "failing".
	Status        string  `json:"status"`
	UptimeSeconds int64   `json:"uptime_seconds,omitempty"`
	Requests      uint64  `json:"requests,omitempty"` // since start
	Errors        uint64  `json:"errors,omitempty"`   // since start
	CPUPercent    float64 `json:"cpu_percent,omitempty"`
	MemUsedBytes  uint64  `json:"mem_used_bytes,omitempty"`
}

// Health statuses.
const (
	HealthOK       = "ok"
	HealthDegraded = "degraded"
	HealthFailing  = "failing"
)

// Status limits.
const (
	maxStatusSize   = 256 << 10
	maxStatusLabels = 64
	maxStatusModels = 256
)

// Validate checks the status's fields.
func (s *Status) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("protocol: status: %s: %w", fmt.Sprintf(format, a...), ErrMalformed)
	}
	if s.Protocol != Version {
		return fmt.Errorf("protocol: status: protocol %d: %w", s.Protocol, ErrUnsupportedVersion)
	}
	if checkSegment(s.Device) != nil || len(s.AgentVersion) > 64 {
		return bad("device %q agent %q", s.Device, s.AgentVersion)
	}
	if len(s.Features) > 32 {
		return bad("%d features", len(s.Features))
	}
	for _, f := range s.Features {
		if len(f) == 0 || len(f) > 64 {
			return bad("feature %q", f)
		}
	}
	if len(s.Labels) > maxStatusLabels || len(s.Models) > maxStatusModels {
		return bad("%d labels, %d models", len(s.Labels), len(s.Models))
	}
	for k, v := range s.Labels {
		if !ValidLabel(k, v) {
			return bad("label %q=%q", k, v)
		}
	}
	for _, m := range s.Models {
		if !manifest.ValidName(m.Name) || m.Version < 1 || m.Previous < 0 || len(m.Digest) > 80 {
			return bad("model %q v%d", m.Name, m.Version)
		}
	}
	if u := s.Update; u != nil {
		if !validID(u.CommandID) || !validID(u.RolloutID) || !u.State.Valid() || len(u.Error) > MaxStringLen ||
			u.Requests < 0 || (u.Verified && u.State != UpdateCommitted) {
			return bad("update %+v", *u)
		}
	}
	switch s.Health.Status {
	case HealthOK, HealthDegraded, HealthFailing:
	default:
		return bad("health %q", s.Health.Status)
	}
	return nil
}

// ParseStatus decodes and validates a status message.
func ParseStatus(b []byte) (*Status, error) {
	if len(b) > maxStatusSize {
		return nil, fmt.Errorf("protocol: status: %d bytes: %w", len(b), ErrMalformed)
	}
	var s Status
	if err := decodeLenient(b, &s); err != nil {
		return nil, fmt.Errorf("protocol: status: %v: %w", err, ErrMalformed)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// ValidLabel reports whether k=v may be a device label: k is 1 to 63 bytes
// of [A-Za-z0-9_.-], v at most 128 bytes with no ',' or '=' (so selectors
// "k=v,k2=v2" stay unambiguous).
func ValidLabel(k, v string) bool {
	if len(k) > 63 || checkSegment(k) != nil || len(v) > 128 {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] == ',' || v[i] == '=' || v[i] < 0x20 || v[i] == 0x7f {
			return false
		}
	}
	return true
}
