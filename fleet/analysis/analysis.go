// Package analysis judges a rollout's candidate version against the
// baseline it replaces, over the same window, metric by metric: the error
// ratio, latency, output agreement (shadow) and output drift against the
// reference profile. Each metric gets a verdict; the weighted share of
// metrics that pass is the score, 0 to 100, read against the pass and
// marginal thresholds, and a critical metric that fails fails the whole
// analysis. Too little evidence is a verdict of its own: wait, never pass.
package analysis

import "time"

// Phase is the rollout phase an analysis judges; it decides what the two
// arms are.
type Phase string

// Phases.
const (
	// PhaseShadow pairs the candidate's answers with the serving version's
	// on the same copied requests (the aggregates' shadow sections).
	PhaseShadow Phase = "shadow"
	// PhaseCanary compares the two traffic arms on the same devices.
	PhaseCanary Phase = "canary"
	// PhaseWave compares devices on the candidate with devices still on the
	// baseline, after a wave's promotion.
	PhaseWave Phase = "wave"
)

// Verdict is the outcome of one metric or of a whole analysis.
type Verdict string

// Verdicts.
const (
	Pass     Verdict = "pass"
	Marginal Verdict = "marginal" // whole analyses only: score between marginal and pass
	Fail     Verdict = "fail"
	Wait     Verdict = "wait" // too little evidence yet
)

// Metric names, as in an analysis file.
const (
	MetricErrorRatio = "error_ratio"
	MetricLatency    = "latency"
	MetricAgreement  = "agreement"
	MetricDrift      = "drift"
)

// Request says what to judge.
type Request struct {
	Phase Phase
	Model string
	// Baseline and Candidate are the two versions.
	Baseline, Candidate int64
	// Devices are the devices whose traffic counts: for shadow and canary
	// those holding the candidate on trial; for a wave those promoted to
	// the candidate. BaselineDevices, for a wave only, are the devices still
	// serving the baseline (empty: the rest of the fleet).
	Devices, BaselineDevices []string
	// From and To bound the window, the same for both arms.
	From, To time.Time
	Config   Config
}

// Report is an analysis's outcome, kept with the rollout and shown to the
// operator (`rollout status`, the admin API, the audit record of the
// decision).
type Report struct {
	Phase     Phase     `json:"phase"`
	Wave      int       `json:"wave"` // set by the rollout engine
	Model     string    `json:"model"`
	Baseline  int64     `json:"baseline"`
	Candidate int64     `json:"candidate"`
	From      time.Time `json:"from"`
	To        time.Time `json:"to"`
	// Score is the weighted share of judged metrics that passed, 0 to 100.
	Score   float64 `json:"score"`
	Verdict Verdict `json:"verdict"`
	// Reason says in one line why (the failing critical metric, the
	// missing evidence, the score against the thresholds).
	Reason  string         `json:"reason"`
	Metrics []MetricResult `json:"metrics"`
}

// MetricResult is one metric's comparison.
type MetricResult struct {
	Name     string  `json:"name"`
	Critical bool    `json:"critical,omitempty"`
	Weight   float64 `json:"weight"`
	// Baseline and Candidate summarise each arm in Unit (error ratio,
	// median latency in ms, top-1 agreement, PSI, ...).
	Baseline  float64 `json:"baseline"`
	Candidate float64 `json:"candidate"`
	Unit      string  `json:"unit"`
	// BaselineN and CandidateN are the evidence behind each side (requests
	// or intervals, as the metric counts them).
	BaselineN  int64 `json:"baseline_n"`
	CandidateN int64 `json:"candidate_n"`
	// P is the test's p-value where one applies (0 otherwise).
	P       float64 `json:"p,omitempty"`
	Verdict Verdict `json:"verdict"`
	Reason  string  `json:"reason"`
}

// Config is an analysis's settings: a rollout's --analysis FILE (YAML), or
// Defaults.
type Config struct {
	// Confidence of each statistical test, e.g. 0.98.
	Confidence float64 `yaml:"confidence" json:"confidence"`
	// Pass and Marginal are the score thresholds (0-100): at or above Pass
	// the analysis passes; at or above Marginal it is marginal; below, it
	// fails.
	Pass     float64 `yaml:"pass" json:"pass"`
	Marginal float64 `yaml:"marginal" json:"marginal"`
	// MinRequests is the least number of requests each arm needs in the
	// window; fewer and the analysis waits.
	MinRequests int64 `yaml:"min_requests" json:"min_requests"`
	// MaxWait bounds how long a phase waits for enough evidence after its
	// window; then the rollout pauses for the operator (never passes).
	MaxWait time.Duration `yaml:"max_wait" json:"max_wait"`
	// Metrics are the metrics judged; a metric that does not apply to a
	// phase (agreement outside shadow) is skipped there.
	Metrics []MetricConfig `yaml:"metrics" json:"metrics"`
}

// MetricConfig configures one metric. Only the limits of the metric's kind
// apply.
type MetricConfig struct {
	Name     string  `yaml:"name" json:"name"`
	Critical bool    `yaml:"critical" json:"critical,omitempty"`
	Weight   float64 `yaml:"weight" json:"weight,omitempty"`
	// MaxIncrease (error_ratio): the largest increase of the error ratio,
	// candidate minus baseline, tolerated even when significant.
	MaxIncrease float64 `yaml:"max_increase" json:"max_increase,omitempty"`
	// MaxRatio (latency): the largest candidate/baseline ratio of the
	// median latency tolerated even when significant.
	MaxRatio float64 `yaml:"max_ratio" json:"max_ratio,omitempty"`
	// ScoreInShadow (latency): count the latency's verdict in a shadow
	// phase's score. Off by default: the copies run beside live traffic on
	// the same cores, so on a busy device an identical candidate measures
	// slower; the verdict is still shown, and canary and wave analyses
	// judge latency on served traffic.
	ScoreInShadow bool `yaml:"score_in_shadow" json:"score_in_shadow,omitempty"`
	// MinTop1 and MaxMeanAbsDiff (agreement): the least share of score
	// vectors whose top class agrees, and the largest mean absolute
	// difference of an output's elements.
	MinTop1        float64 `yaml:"min_top1" json:"min_top1,omitempty"`
	MaxMeanAbsDiff float64 `yaml:"max_mean_abs_diff" json:"max_mean_abs_diff,omitempty"`
	// MaxPSI (drift): the largest PSI of an output feature against the
	// reference profile.
	MaxPSI float64 `yaml:"max_psi" json:"max_psi,omitempty"`
}
