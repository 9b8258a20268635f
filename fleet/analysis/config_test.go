package analysis

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/internal/yamlconf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDefaultsValid(t *testing.T) {
	require.NoError(t, Defaults().Validate())
	c, err := ParseConfig(nil)
	require.NoError(t, err)
	assert.Equal(t, Defaults(), c, "an empty file is the defaults")
}

// TestParseConfig: keys left out keep their defaults, a metric's too.
func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`
confidence: 0.95
max_wait: 1h
metrics:
  - name: latency
    max_ratio: 1.5
  - name: error_ratio
    weight: 3
  - name: agreement
    max_mean_abs_diff: 0   # top-1 only
`))
	require.NoError(t, err)
	want := Defaults()
	want.Confidence, want.MaxWait = 0.95, time.Hour
	want.Metrics = []MetricConfig{
		{Name: MetricLatency, Weight: 1, MaxRatio: 1.5},
		{Name: MetricErrorRatio, Critical: true, Weight: 3, MaxIncrease: 0.01},
		{Name: MetricAgreement, Critical: true, Weight: 1, MinTop1: 0.95},
	}
	assert.Equal(t, want, c)

	c, err = ParseConfig([]byte("metrics:\n  - name: drift\n    critical: true\n"))
	require.NoError(t, err)
	assert.Equal(t, []MetricConfig{{Name: MetricDrift, Critical: true, Weight: 1, MaxPSI: 0.25}}, c.Metrics)
}

// configErrors are files ParseConfig refuses, with the message it must
// give (a prefix of it): the line, and what is wrong in the user's terms.
var configErrors = []struct{ yaml, want string }{
	{"confidance: 0.9\n", `analysis file:1: unknown key "confidance"`},
	{"pass: 90\nmetrics:\n  - name: latency\n    max_ratoi: 2\n", `analysis file:4: unknown key "max_ratoi"`},
	{"confidence: high\n", `analysis file:1: "high" is not a number`},
	{"max_wait: soon\n", `analysis file:1: "soon" is not a duration`},
	{"\nconfidence: 1\n", "analysis file:2: confidence 1: want a probability from 0.5 to below 1"},
	{"confidence: 0.2\n", "analysis file:1: confidence 0.2: want a probability"},
	{"pass: 120\n", "analysis file:1: pass 120: want a score above 0 and at most 100"},
	{"pass: 70\n", "analysis file:1: marginal 75: want a score from 0 to pass (70)"},
	{"min_requests: 0\n", "analysis file:1: min_requests 0: want at least 1"},
	{"max_wait: -5m\n", "analysis file:1: max_wait -5m0s: want a duration of 0 or more"},
	{"metrics: []\n", "analysis file:1: metrics: want at least one metric"},
	{"metrics:\n  - name: throughput\n", `analysis file:2: metrics[0]: unknown metric "throughput": want error_ratio, latency, agreement, drift`},
	{"metrics:\n  - weight: 2\n", "analysis file:2: metrics[0]: no name"},
	{"metrics:\n  - name: latency\n  - name: latency\n", "analysis file:3: metrics[1]: latency is listed twice"},
	{"metrics:\n  - name: latency\n    max_psi: 0.3\n", "analysis file:3: metrics[0] (latency): max_psi does not apply to latency (its limits: max_ratio)"},
	{"metrics:\n  - name: latency\n    max_ratio: 0.8\n", "analysis file:3: metrics[0] (latency): max_ratio 0.8: want a ratio from 1 to 100"},
	{"metrics:\n  - name: error_ratio\n    max_increase: 1.5\n", "analysis file:3: metrics[0] (error_ratio): max_increase 1.5: want a share"},
	{"metrics:\n  - name: agreement\n    min_top1: 2\n", "analysis file:3: metrics[0] (agreement): min_top1 2: want a share from 0 to 1"},
	{"metrics:\n  - name: agreement\n    min_top1: 0\n    max_mean_abs_diff: 0\n", "analysis file:2: metrics[0] (agreement): min_top1 and max_mean_abs_diff are both 0"},
	{"metrics:\n  - name: drift\n    max_psi: 0\n", "analysis file:3: metrics[0] (drift): max_psi 0: want a PSI above 0"},
	{"metrics:\n  - name: drift\n    weight: -1\n", "analysis file:3: metrics[0] (drift): weight -1: want 0"},
	{"metrics:\n  - name: drift\n    weight: .nan\n", "analysis file:3: metrics[0] (drift): weight NaN"},
	{"metrics:\n  - name: drift\n    weight: 0\n", "analysis file:1: metrics: every weight is 0"},
	{"metrics:\n  - name: latency\n    max_ratio: .inf\n", "analysis file:3: metrics[0] (latency): max_ratio +Inf: want a number"},
	{"metrics: latency\n", `analysis file:1: "latency" is not a list`},
	{"- 1\n", "analysis file:1: a list is not a mapping of settings"},
}

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range configErrors {
		_, err := ParseConfig([]byte(tc.yaml))
		if err == nil {
			t.Errorf("%q: no error, want %q", tc.yaml, tc.want)
			continue
		}
		if !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q:\n got %q\nwant %q...", tc.yaml, err, tc.want)
		}
	}
}

// FuzzParseConfig: whatever the bytes, ParseConfig answers a valid config
// or an error that names the file, never panics.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(""))
	f.Add([]byte("confidence: 0.95\nmax_wait: 1h\nmetrics:\n  - name: latency\n    max_ratio: 1.5\n"))
	for _, tc := range configErrors {
		f.Add([]byte(tc.yaml))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			if !strings.HasPrefix(err.Error(), configFile) {
				t.Errorf("error %q does not name the file", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Errorf("parsed a config that does not validate: %v", err)
		}
	})
}

// TestConfigInsideAnotherFile: a Config decoded as part of a larger YAML
// file (through internal/yamlconf, as fleet.yaml is) gets the defaults and
// the checks, with the lines of that file.
func TestConfigInsideAnotherFile(t *testing.T) {
	var f struct {
		Rollouts struct {
			Analysis *Config `yaml:"analysis"`
		} `yaml:"rollouts"`
	}
	require.NoError(t, yamlconf.Decode("fleet.yaml", []byte("rollouts:\n  analysis:\n    pass: 90\n"), &f))
	want := Defaults()
	want.Pass = 90
	assert.Equal(t, &want, f.Rollouts.Analysis)

	for _, tc := range []struct{ yaml, want string }{
		{"rollouts:\n  analysis:\n    pas: 90\n    marginl: 3\n", "fleet.yaml:3: unknown key \"pas\"\nfleet.yaml:4: unknown key \"marginl\""},
		{"rollouts:\n  analysis:\n    metrics:\n      - name: latency\n        max_ratio: 0.5\n", "fleet.yaml:5: metrics[0] (latency): max_ratio 0.5"},
		{"rollouts:\n  analysis:\n    confidence: sure\n", `fleet.yaml:3: "sure" is not a number`},
	} {
		err := yamlconf.Decode("fleet.yaml", []byte(tc.yaml), &f)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant %q...", tc.yaml, err, tc.want)
		}
	}
	_, err := ParseConfigNamed("canary.yaml", []byte("\n\npass: 0\n"))
	assert.EqualError(t, err, "canary.yaml:3: pass 0: want a score above 0 and at most 100")
}

// TestWithDefaults: zero fields take the defaults, given ones stay, and a
// metric keeps its critical flag while its zero limits are filled.
func TestWithDefaults(t *testing.T) {
	if got := (Config{}).WithDefaults(); !reflect.DeepEqual(got, Defaults()) {
		t.Errorf("zero: got %+v, want the defaults", got)
	}
	got := Config{MinRequests: 50, Metrics: []MetricConfig{{Name: MetricLatency, MaxRatio: 2}, {Name: MetricErrorRatio}}}.WithDefaults()
	if got.MinRequests != 50 || got.Confidence != 0.98 || got.Pass != 95 || got.MaxWait != Defaults().MaxWait {
		t.Errorf("partial: %+v", got)
	}
	want := []MetricConfig{{Name: MetricLatency, Weight: 1, MaxRatio: 2}, {Name: MetricErrorRatio, Weight: 1, MaxIncrease: 0.01}}
	if !reflect.DeepEqual(got.Metrics, want) {
		t.Errorf("metrics: got %+v, want %+v", got.Metrics, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
}

// TestScoreInShadowKey: score_in_shadow is read for latency and refused,
// with its line, on another metric.
func TestScoreInShadowKey(t *testing.T) {
	c, err := ParseConfig([]byte("metrics:\n  - name: latency\n    score_in_shadow: true\n"))
	if err != nil || len(c.Metrics) != 1 || !c.Metrics[0].ScoreInShadow {
		t.Fatalf("latency with score_in_shadow: %+v %v", c.Metrics, err)
	}
	_, err = ParseConfig([]byte("metrics:\n  - name: drift\n    score_in_shadow: true\n"))
	if err == nil || !strings.Contains(err.Error(), "3") || !strings.Contains(err.Error(), "latency only") {
		t.Errorf("drift with score_in_shadow: %v", err)
	}
}
