package protocol

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

// TestInstallTrialValidate: an install's trial is optional; its mode must be
// shadow or canary and its share above 0 and at most 100, or the command is
// invalid. Absent, it is not in the JSON an older agent decodes strictly.
func TestInstallTrialValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		trial *Trial
		ok    bool
		state UpdateState
	}{
		{"absent", nil, true, ""},
		{"shadow 10%", &Trial{Mode: TrialShadow, Percent: 10}, true, UpdateShadow},
		{"canary all", &Trial{Mode: TrialCanary, Percent: 100}, true, UpdateCanary},
		{"canary tiny", &Trial{Mode: TrialCanary, Percent: 0.01}, true, UpdateCanary},
		{"zero share", &Trial{Mode: TrialShadow}, false, ""},
		{"over 100", &Trial{Mode: TrialCanary, Percent: 100.5}, false, ""},
		{"negative", &Trial{Mode: TrialCanary, Percent: -5}, false, ""},
		{"NaN", &Trial{Mode: TrialShadow, Percent: math.NaN()}, false, ""},
		{"no mode", &Trial{Percent: 10}, false, ""},
		{"unknown mode", &Trial{Mode: "mirror", Percent: 10}, false, ""},
	} {
		c := installCommand([]byte("release"))
		c.Install.Trial = tc.trial
		err := c.Validate()
		if tc.ok && err != nil {
			t.Errorf("%s: got %v, want nil", tc.name, err)
		}
		if !tc.ok && !errors.Is(err, ErrInvalidCommand) {
			t.Errorf("%s: got %v, want ErrInvalidCommand", tc.name, err)
		}
		if tc.ok && tc.trial != nil && tc.trial.State() != tc.state {
			t.Errorf("%s: state %s, want %s", tc.name, tc.trial.State(), tc.state)
		}
	}
	b, err := json.Marshal(installCommand([]byte("release")))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "trial") {
		t.Errorf("an install without a trial encodes one: %s", b)
	}
}

// TestTrialStates: shadow and canary are valid ack states, neither terminal
// nor activated (the serving version is still current).
func TestTrialStates(t *testing.T) {
	for _, s := range []UpdateState{UpdateShadow, UpdateCanary} {
		if !s.Valid() || s.Terminal() || s.Activated() {
			t.Errorf("%s: valid %v terminal %v activated %v, want true false false", s, s.Valid(), s.Terminal(), s.Activated())
		}
		a := Ack{CommandID: "c1", RolloutID: "r1", Model: "face", Version: 2, State: s}
		if err := a.Validate(); err != nil {
			t.Errorf("%s ack: %v", s, err)
		}
	}
}

// TestStatusFeatures: a status lists the optional parts its agent
// implements; an older agent's status (no list) supports none, and a list
// out of bounds is malformed.
func TestStatusFeatures(t *testing.T) {
	s := Status{Protocol: Version, Device: "gw-1", AgentVersion: "1.0", Health: HealthSummary{Status: HealthOK}, Features: []string{FeatureTrial}}
	if err := s.Validate(); err != nil || !s.Supports(FeatureTrial) {
		t.Fatalf("validate %v, supports trial %v", err, s.Supports(FeatureTrial))
	}
	s.Features = nil
	if s.Supports(FeatureTrial) {
		t.Error("a status without features supports trials")
	}
	for _, bad := range [][]string{{""}, {strings.Repeat("x", 65)}, make([]string, 33)} {
		s.Features = bad
		if err := s.Validate(); !errors.Is(err, ErrMalformed) {
			t.Errorf("features %q: got %v, want ErrMalformed", bad, err)
		}
	}
}
