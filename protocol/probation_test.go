package protocol

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestInstallProbationValidate: an install's probation override is
// optional, zero fields keep the device's setting, and values out of range
// are refused as an invalid command.
func TestInstallProbationValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    *Probation
		ok   bool
	}{
		{"absent", nil, true},
		{"zero keeps the device's", &Probation{}, true},
		{"both set", &Probation{MinRequests: 100, MaxSeconds: 3600}, true},
		{"largest", &Probation{MinRequests: MaxProbationRequests, MaxSeconds: MaxProbationSeconds}, true},
		{"negative requests", &Probation{MinRequests: -1}, false},
		{"negative seconds", &Probation{MaxSeconds: -1}, false},
		{"too many requests", &Probation{MinRequests: MaxProbationRequests + 1}, false},
		{"too long", &Probation{MaxSeconds: MaxProbationSeconds + 1}, false},
	} {
		c := installCommand([]byte("release"))
		c.Install.Probation = tc.p
		err := c.Validate()
		if tc.ok && err != nil {
			t.Errorf("%s: got %v, want nil", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: got %v, want ErrInvalidCommand", tc.name, err)
		}
	}
	// Absent, the field is not in the JSON an older agent decodes strictly.
	b, err := json.Marshal(installCommand([]byte("release")))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "probation") {
		t.Errorf("an install without a probation policy encodes one: %s", b)
	}
}

// TestAckProbationFields: probation_requests and verified round-trip;
// verified is only for a committed update, and requests are not negative,
// in acks and in the status alike.
func TestAckProbationFields(t *testing.T) {
	good := Ack{CommandID: "c1", RolloutID: "r1", Model: "face", Version: 2, State: UpdateCommitted, Requests: 25, Verified: true, Time: t0}
	b, err := json.Marshal(good)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"probation_requests":25`) || !strings.Contains(string(b), `"verified":true`) {
		t.Errorf("ack JSON: %s", b)
	}
	a, err := ParseAck(b)
	if err != nil {
		t.Fatal(err)
	}
	if a.Requests != 25 || !a.Verified {
		t.Errorf("got requests %d verified %v, want 25 true", a.Requests, a.Verified)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Ack)
		ok   bool
	}{
		{"unverified commit", func(a *Ack) { a.Verified = false }, true},
		{"requests in probation", func(a *Ack) { a.State, a.Verified = UpdateProbation, false }, true},
		{"verified in probation", func(a *Ack) { a.State = UpdateProbation }, false},
		{"verified rolled back", func(a *Ack) { a.State = UpdateRolledBack }, false},
		{"negative requests", func(a *Ack) { a.Requests = -1 }, false},
	} {
		a := good
		tc.mod(&a)
		err := a.Validate()
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("ack %s: got %v, want ok=%v", tc.name, err, tc.ok)
		}
		st := Status{Protocol: Version, Device: "gw-1", Health: HealthSummary{Status: HealthOK}, Time: t0,
			Update: &UpdateStatus{CommandID: a.CommandID, RolloutID: a.RolloutID, Model: a.Model, Version: a.Version,
				State: a.State, Requests: a.Requests, Verified: a.Verified, Time: time.Time{}}}
		err = st.Validate()
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("status %s: got %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
