// Package drift judges whether a model version's live inputs and outputs
// still look like its reference (docs/MONITORING.md, "Drift detection").
//
// A window's observations are the feature histograms the devices sent
// (protocol.FeatureCounts, binned with the edges of the version's signed
// reference profile), merged over the window and over a scope: the whole
// fleet, or one device. Score compares them with the reference, feature by
// feature (PSI and Jensen–Shannon, models/profile). Tracker turns the
// scores of consecutive windows into a state per scope that moves
// ok → drifting → recovered (→ drifting again), so a single noisy window
// raises nothing and a real shift raises exactly one transition.
package drift

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/outpost-edge/outpost/models/profile"
	"github.com/outpost-edge/outpost/protocol"
)

// Thresholds say when a feature, and so a scope, counts as drifting in a
// window. The zero value takes the defaults (Defaults); docs/MONITORING.md
// justifies them with the false-alarm rate measured on stationary input.
type Thresholds struct {
	// PSI: a feature whose population stability index against the
	// reference is at or above PSI drifts. Default 0.25, the usual line
	// between a moderate and a large shift.
	PSI float64 `json:"psi" yaml:"psi"`
	// JS: or whose Jensen–Shannon divergence (bits) is at or above JS.
	// Default 0.1 (Evidently's default for its Jensen–Shannon test).
	JS float64 `json:"js" yaml:"js"`
	// MinCount is how many values a feature needs in a window to be
	// judged at all; fewer and the window says nothing about it. Default
	// 500: with 20 bins, stationary windows of 500 values score a PSI of
	// about 0.04 on average, far below the threshold.
	MinCount uint64 `json:"min_count" yaml:"min_count"`
	// Windows is how many judged windows in a row must drift before the
	// scope is drifting, and how many in a row must be clean before it
	// has recovered. Default 2.
	Windows int `json:"windows" yaml:"windows"`
}

// Defaults are the thresholds a zero Thresholds stands for.
var Defaults = Thresholds{PSI: 0.25, JS: 0.1, MinCount: 500, Windows: 2}

// WithDefaults returns t with its zero fields set from Defaults.
func (t Thresholds) WithDefaults() Thresholds {
	if t.PSI <= 0 {
		t.PSI = Defaults.PSI
	}
	if t.JS <= 0 {
		t.JS = Defaults.JS
	}
	if t.MinCount == 0 {
		t.MinCount = Defaults.MinCount
	}
	if t.Windows <= 0 {
		t.Windows = Defaults.Windows
	}
	return t
}

// Validate refuses thresholds that cannot be met or would fire on noise.
func (t Thresholds) Validate() error {
	switch {
	case t.PSI < 0 || t.JS < 0:
		return errors.New("drift: thresholds psi and js must not be negative")
	case t.JS > 1:
		return fmt.Errorf("drift: threshold js %g is above 1, the divergence's maximum: it could never fire", t.JS)
	case t.Windows > 100:
		return fmt.Errorf("drift: windows %d: at most 100", t.Windows)
	}
	return nil
}

// FeatureScore is one feature's comparison in one window.
type FeatureScore struct {
	Name string  `json:"name"`
	PSI  float64 `json:"psi"`
	JS   float64 `json:"js"`
	// Count is the window's values of the feature (NaNs excluded) and
	// ReferenceCount the reference's.
	Count          uint64 `json:"count"`
	ReferenceCount uint64 `json:"reference_count"`
	// Noise is the PSI that sampling alone exceeds once in a thousand
	// windows for these counts (NoiseBound); a feature drifts only above it.
	Noise float64 `json:"noise"`
	// Judged: Count reached MinCount, so Drifting means something.
	Judged   bool `json:"judged"`
	Drifting bool `json:"drifting"`
}

// Score is one window's verdict for one scope.
type Score struct {
	Features []FeatureScore `json:"features"`
	// Judged: at least one feature had enough values.
	Judged bool `json:"judged"`
	// Drifting: at least one judged feature drifted.
	Drifting bool `json:"drifting"`
}

func indexOf(fs []protocol.FeatureCounts, name string) int {
	for i := range fs {
		if fs[i].Name == name {
			return i
		}
	}
	return -1
}

// Judge scores a window's merged observations against the reference. A
// reference feature the window does not have is not judged; an observed
// feature the reference does not name is ignored.
func Judge(ref *profile.Profile, observed []protocol.FeatureCounts, t Thresholds) Score {
	t = t.WithDefaults()
	var s Score
	for _, rf := range ref.Features {
		fs := FeatureScore{Name: rf.Name, ReferenceCount: rf.Count}
		if i := indexOf(observed, rf.Name); i >= 0 {
			o := observed[i]
			for _, c := range o.Counts {
				fs.Count += c
			}
			psi, err1 := profile.PSI(rf.Counts, o.Counts)
			js, err2 := profile.JS(rf.Counts, o.Counts)
			if err1 == nil && err2 == nil {
				fs.PSI, fs.JS = psi, js
				fs.Noise = NoiseBound(len(rf.Counts), rf.Count, fs.Count)
				fs.Judged = fs.Count >= t.MinCount
				fs.Drifting = fs.Judged && (psi >= t.PSI || js >= t.JS) && psi >= fs.Noise
			} else {
				fs.Count = 0 // bins that do not match the reference: no verdict
			}
		}
		s.Judged = s.Judged || fs.Judged
		s.Drifting = s.Drifting || fs.Drifting
		s.Features = append(s.Features, fs)
	}
	return s
}

// NoiseBound is the PSI that two samples of one distribution, of nRef and
// nObs values in bins bins, exceed with probability 0.001: PSI times
// nRef·nObs/(nRef+nObs) is about chi-square distributed with bins-1
// degrees of freedom when nothing changed, so the bound is the
// chi-square's 0.999 quantile (Wilson–Hilferty) times 1/nRef + 1/nObs.
// With a reference of 2,000 requests and windows of 500, 20 bins, it is
// 0.11, under the default threshold; with a reference of 60 it is 0.82:
// a small reference, or a small window, needs a larger shift to count,
// rather than raising drift on noise.
func NoiseBound(bins int, nRef, nObs uint64) float64 {
	if bins < 2 || nRef == 0 || nObs == 0 {
		return math.Inf(1)
	}
	const z = 3.090 // standard normal 0.999 quantile
	k := float64(bins - 1)
	a := 2 / (9 * k)
	q := k * math.Pow(1-a+z*math.Sqrt(a), 3)
	return q * (1/float64(nRef) + 1/float64(nObs))
}

// State is where a scope stands.
type State string

const (
	// OK: no drift seen yet (or not enough data to judge).
	OK State = "ok"
	// Drifting: Windows judged windows in a row drifted.
	Drifting State = "drifting"
	// Recovered: drifting before, then Windows judged windows in a row
	// clean. It moves to Drifting again as OK does.
	Recovered State = "recovered"
)

// Status is a scope's state and the streak that may change it. It is what
// a store keeps between windows, so a restarted (or another) controller
// replica goes on where the last one stopped.
type Status struct {
	State State `json:"state"`
	// Since is the start of the window in which State began (zero for an
	// OK that never changed).
	Since time.Time `json:"since,omitzero"`
	// Streak counts the judged windows in a row that disagree with State
	// (drifting ones while OK or Recovered, clean ones while Drifting).
	Streak int `json:"streak"`
	// StreakSince is the start of the streak's first window: the Since of
	// the state the streak leads to.
	StreakSince time.Time `json:"streak_since,omitzero"`
	// Last is the start of the last window taken into account; a window
	// at or before it is not counted twice.
	Last time.Time `json:"last,omitzero"`
}

// Next moves st by one window's score, the window starting at start, and
// reports whether the state changed. Windows not judged leave the streak
// as it is: a quiet spell neither raises nor clears drift. A window at or
// before st.Last is ignored.
func Next(st Status, start time.Time, s Score, t Thresholds) (Status, bool) {
	t = t.WithDefaults()
	if st.State == "" {
		st.State = OK
	}
	if !st.Last.IsZero() && !start.After(st.Last) {
		return st, false
	}
	st.Last = start
	if !s.Judged {
		return st, false
	}
	disagrees := s.Drifting != (st.State == Drifting)
	if !disagrees {
		st.Streak = 0
		return st, false
	}
	st.Streak++
	if st.Streak == 1 {
		st.StreakSince = start // when the change began
	}
	if st.Streak < t.Windows {
		return st, false
	}
	st.Since, st.Streak, st.StreakSince = st.StreakSince, 0, time.Time{}
	if st.State == Drifting {
		st.State = Recovered
	} else {
		st.State = Drifting
	}
	return st, true
}
