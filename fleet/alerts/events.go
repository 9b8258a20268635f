package alerts

import (
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
)

// The events' payloads (the body's "data") and constructors. Each
// constructor gives the event an ID derived from what happened, so the same
// happening seen twice (by two replicas, or by a leader before and after a
// restart) is delivered once.

// DriftFeature is one feature's scores against the model's reference
// profile (the drift API's feature object).
type DriftFeature struct {
	Name           string  `json:"name"`
	PSI            float64 `json:"psi"`
	JS             float64 `json:"js"`
	Count          uint64  `json:"count"`
	ReferenceCount uint64  `json:"reference_count"`
	Drifting       bool    `json:"drifting"`
}

// DriftData is a drift event's payload: the state a model version moved
// to, fleet-wide (Device empty) or on one device.
type DriftData struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	// Device is empty for the whole fleet.
	Device string `json:"device,omitempty"`
	// State is what the drift state machine moved to: "drifting" or
	// "recovered" (or "ok").
	State string `json:"state"`
	// Previous is the state it left.
	Previous string `json:"previous,omitempty"`
	// Since is when the state began: the first window of the change.
	Since time.Time `json:"since"`
	// Window is the length of the windows the scores are computed over.
	Window   string         `json:"window,omitempty"`
	Features []DriftFeature `json:"features"`
}

// DriftEvent is d's event. Its ID is the model version, the device (or the
// fleet), the state and Since: one event per state change.
func DriftEvent(d DriftData) Event {
	scope := d.Device
	if scope == "" {
		scope = "fleet"
	}
	subject := d.Model + "/" + d.Version + "/" + scope
	return Event{Type: Drift, ID: "drift/" + subject + "/" + d.State + "/" + nanos(d.Since), Subject: subject, Time: d.Since, Data: d}
}

// RolloutData is a rollout_halted event's payload.
type RolloutData struct {
	Rollout string `json:"rollout"`
	Model   string `json:"model"`
	Version string `json:"version"`
	State   string `json:"state"`
	Reason  string `json:"reason"`
	// Wave is the wave that halted, from 1.
	Wave    int       `json:"wave"`
	Waves   []int     `json:"waves"`
	Halted  time.Time `json:"halted"`
	Created time.Time `json:"created"`
}

// RolloutHaltedEvent is ro's halt; its ID is the rollout's id (a rollout
// halts once).
func RolloutHaltedEvent(ro *registry.Rollout) Event {
	return Event{Type: RolloutHalted, ID: "rollout_halted/" + ro.ID, Subject: ro.ID, Time: ro.Finished,
		Data: RolloutData{Rollout: ro.ID, Model: ro.Model, Version: strconv.FormatInt(ro.Version, 10), State: string(ro.State), Reason: ro.Reason,
			Wave: ro.Wave + 1, Waves: ro.Waves, Halted: ro.Finished, Created: ro.Created}}
}

// DeviceData is a device_offline event's payload.
type DeviceData struct {
	Device string `json:"device"`
	// OfflineSince is when the controller saw it go offline; Grace how
	// long it then waited for the device to come back.
	OfflineSince time.Time         `json:"offline_since"`
	Grace        string            `json:"grace"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// DeviceOfflineEvent is device going offline at since, held for grace so
// that Cancel(ctx, DeviceOffline, device) withdraws it if the device
// returns in time.
func DeviceOfflineEvent(device string, since time.Time, grace time.Duration, labels map[string]string) Event {
	return Event{Type: DeviceOffline, ID: "device_offline/" + device + "/" + nanos(since), Subject: device, Time: since, Delay: grace,
		Data: DeviceData{Device: device, OfflineSince: since.UTC(), Grace: grace.String(), Labels: labels}}
}

// AuditData is an audit_chain_broken event's payload: a record of a
// device's audit trail that does not chain to the one before it (the
// fields of the ingest's chain break).
type AuditData struct {
	Device string `json:"device"`
	// Seq is the record's number in the device's trail; N its number in
	// the controller's copy of it.
	Seq    uint64    `json:"seq"`
	N      uint64    `json:"n,omitempty"`
	Time   time.Time `json:"time"`
	Model  string    `json:"model,omitempty"`
	Action string    `json:"action,omitempty"`
	// Reason says what did not match.
	Reason string `json:"reason"`
}

// AuditChainBrokenEvent is a break in a.Device's audit chain; its ID is
// the device and the record's numbers.
func AuditChainBrokenEvent(a AuditData) Event {
	return Event{Type: AuditChainBroken, ID: "audit_chain_broken/" + a.Device + "/" + strconv.FormatUint(a.Seq, 10) + "/" + strconv.FormatUint(a.N, 10),
		Subject: a.Device, Time: a.Time, Data: a}
}

func nanos(t time.Time) string { return strconv.FormatInt(t.UnixNano(), 10) }
