package analysis

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/yamlconf"
	"go.yaml.in/yaml/v3"
)

// Defaults is the analysis a rollout gets without an analysis file
// (docs/ANALYSIS.md says why each value):
//
//	confidence: 0.98     # each test's one-sided confidence (Kayenta's default)
//	pass: 95             # score at or above: pass
//	marginal: 75         # score at or above: marginal, below: fail
//	min_requests: 200    # per arm in the window, else the metric waits
//	max_wait: 30m        # after the window, then the rollout pauses
//	metrics:
//	  - {name: error_ratio, critical: true, max_increase: 0.01}
//	  - {name: latency, max_ratio: 1.2}
//	  - {name: agreement, critical: true, min_top1: 0.95, max_mean_abs_diff: 0.05}
//	  - {name: drift, max_psi: 0.25}
//
// Every metric weighs 1.
func Defaults() Config {
	return Config{
		Confidence:  0.98,
		Pass:        95,
		Marginal:    75,
		MinRequests: 200,
		MaxWait:     30 * time.Minute,
		Metrics: []MetricConfig{
			defaultMetric(MetricErrorRatio),
			defaultMetric(MetricLatency),
			defaultMetric(MetricAgreement),
			defaultMetric(MetricDrift),
		},
	}
}

// WithDefaults returns c with its zero fields, and each metric's zero
// weight and limits, taken from Defaults (no metrics: the default ones).
// For configs built in code or sent as JSON to the admin API, where an
// omitted field cannot be told from a zero; a metric's critical flag is
// kept as given. An analysis file keeps its omitted keys' defaults itself.
func (c Config) WithDefaults() Config {
	d := Defaults()
	c.Confidence, c.Pass, c.Marginal = cmp.Or(c.Confidence, d.Confidence), cmp.Or(c.Pass, d.Pass), cmp.Or(c.Marginal, d.Marginal)
	c.MinRequests, c.MaxWait = cmp.Or(c.MinRequests, d.MinRequests), cmp.Or(c.MaxWait, d.MaxWait)
	if len(c.Metrics) == 0 {
		c.Metrics = d.Metrics
		return c
	}
	ms := make([]MetricConfig, len(c.Metrics))
	for i, m := range c.Metrics {
		dm := defaultMetric(m.Name)
		m.Weight, m.MaxIncrease, m.MaxRatio = cmp.Or(m.Weight, dm.Weight), cmp.Or(m.MaxIncrease, dm.MaxIncrease), cmp.Or(m.MaxRatio, dm.MaxRatio)
		m.MinTop1, m.MaxMeanAbsDiff, m.MaxPSI = cmp.Or(m.MinTop1, dm.MinTop1), cmp.Or(m.MaxMeanAbsDiff, dm.MaxMeanAbsDiff), cmp.Or(m.MaxPSI, dm.MaxPSI)
		ms[i] = m
	}
	c.Metrics = ms
	return c
}

// defaultMetric is the default configuration of the metric name (zero for
// an unknown name).
func defaultMetric(name string) MetricConfig {
	switch name {
	case MetricErrorRatio:
		return MetricConfig{Name: name, Critical: true, Weight: 1, MaxIncrease: 0.01}
	case MetricLatency:
		return MetricConfig{Name: name, Weight: 1, MaxRatio: 1.2}
	case MetricAgreement:
		return MetricConfig{Name: name, Critical: true, Weight: 1, MinTop1: 0.95, MaxMeanAbsDiff: 0.05}
	case MetricDrift:
		return MetricConfig{Name: name, Weight: 1, MaxPSI: 0.25}
	}
	return MetricConfig{}
}

// IsZero reports whether c is the zero Config (a rollout without one:
// Analyze judges it with Defaults).
func (c Config) IsZero() bool {
	return c.Confidence == 0 && c.Pass == 0 && c.Marginal == 0 && c.MinRequests == 0 && c.MaxWait == 0 && len(c.Metrics) == 0
}

// The analysis file as written: pointers tell an omitted key (which keeps
// its default) from a zero.
type fileConfig struct {
	Confidence  *float64       `yaml:"confidence"`
	Pass        *float64       `yaml:"pass"`
	Marginal    *float64       `yaml:"marginal"`
	MinRequests *int64         `yaml:"min_requests"`
	MaxWait     *time.Duration `yaml:"max_wait"`
	Metrics     []fileMetric   `yaml:"metrics"`
}

type fileMetric struct {
	Name           string   `yaml:"name"`
	Critical       *bool    `yaml:"critical"`
	Weight         *float64 `yaml:"weight"`
	MaxIncrease    *float64 `yaml:"max_increase"`
	MaxRatio       *float64 `yaml:"max_ratio"`
	MinTop1        *float64 `yaml:"min_top1"`
	MaxMeanAbsDiff *float64 `yaml:"max_mean_abs_diff"`
	MaxPSI         *float64 `yaml:"max_psi"`
	ScoreInShadow  *bool    `yaml:"score_in_shadow"`
}

// configFile names the analysis file in ParseConfig's messages.
const configFile = "analysis file"

// ParseConfig reads an analysis file (YAML, docs/ANALYSIS.md). Unknown keys
// are errors naming the key and its line; every value is checked (Validate).
// Keys left out keep their defaults (Defaults), a metric's too: a metrics
// list replaces the default list, and each metric in it starts from its
// own defaults, so `- name: latency` alone means max_ratio 1.2. Messages
// start "analysis file:LINE:"; ParseConfigNamed names the file.
func ParseConfig(b []byte) (Config, error) { return ParseConfigNamed(configFile, b) }

// ParseConfigNamed is ParseConfig with name (the file's path) starting
// every message, as internal/yamlconf writes them.
func ParseConfigNamed(name string, b []byte) (Config, error) {
	c := Defaults() // an empty document
	if err := yamlconf.Decode(name, b, &c); err != nil {
		return Config{}, err
	}
	return c, nil
}

// UnmarshalYAML decodes a Config wherever it sits in a YAML document as
// ParseConfig does (defaults for what is left out, unknown keys refused,
// every value checked), so a Config decoded by internal/yamlconf, or as
// part of a larger file, cannot skip the checks. Its errors are yaml's
// type errors, "line N: ...", which yamlconf rewrites for people.
func (c *Config) UnmarshalYAML(n *yaml.Node) error {
	var f fileConfig
	if err := n.Decode(&f); err != nil {
		return err
	}
	if errs := unknownKeys(n); len(errs) > 0 {
		return &yaml.TypeError{Errors: errs}
	}
	cfg, err := f.config(n)
	if err != nil {
		return &yaml.TypeError{Errors: []string{err.Error()}}
	}
	*c = cfg
	return nil
}

// unknownKeys lists the keys of n (and of its metrics) that a Config does
// not have, in yaml's own words so that yamlconf rewrites them as its
// other unknown keys.
func unknownKeys(n *yaml.Node) []string {
	var errs []string
	check := func(m *yaml.Node, known []string) {
		if m == nil || m.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			if k := m.Content[i]; !slices.Contains(known, k.Value) {
				errs = append(errs, fmt.Sprintf("line %d: field %s not found in type analysis.Config", k.Line, k.Value))
			}
		}
	}
	check(n, []string{"confidence", "pass", "marginal", "min_requests", "max_wait", "metrics"})
	if ms := valueOf(n, "metrics"); ms != nil && ms.Kind == yaml.SequenceNode {
		for _, m := range ms.Content {
			check(m, []string{"name", "critical", "weight", "max_increase", "max_ratio", "min_top1", "max_mean_abs_diff", "max_psi", "score_in_shadow"})
		}
	}
	return errs
}

// config is f over the defaults, checked; n (f's node) gives the lines of
// the errors ("line N: ...").
func (f *fileConfig) config(n *yaml.Node) (Config, error) {
	c := Defaults()
	set := func(dst, src any) {
		switch d := dst.(type) {
		case *float64:
			if s := src.(*float64); s != nil {
				*d = *s
			}
		case *int64:
			if s := src.(*int64); s != nil {
				*d = *s
			}
		case *time.Duration:
			if s := src.(*time.Duration); s != nil {
				*d = *s
			}
		}
	}
	set(&c.Confidence, f.Confidence)
	set(&c.Pass, f.Pass)
	set(&c.Marginal, f.Marginal)
	set(&c.MinRequests, f.MinRequests)
	set(&c.MaxWait, f.MaxWait)
	if f.Metrics != nil {
		c.Metrics = make([]MetricConfig, 0, len(f.Metrics))
		for i, fm := range f.Metrics {
			m := defaultMetric(fm.Name)
			if fm.Name == "" {
				return Config{}, fmt.Errorf("line %d: metrics[%d]: no name: want one of %s", lineOf(n, i, "name"), i, strings.Join(metricNames, ", "))
			}
			if m.Name == "" {
				return Config{}, fmt.Errorf("line %d: metrics[%d]: unknown metric %q: want %s", lineOf(n, i, "name"), i, fm.Name,
					strings.Join(metricNames, ", "))
			}
			if fm.Critical != nil {
				m.Critical = *fm.Critical
			}
			if fm.ScoreInShadow != nil {
				if m.Name != MetricLatency {
					return Config{}, fmt.Errorf("line %d: metrics[%d] (%s): score_in_shadow applies to latency only", lineOf(n, i, "score_in_shadow"), i, m.Name)
				}
				m.ScoreInShadow = *fm.ScoreInShadow
			}
			set(&m.Weight, fm.Weight)
			for _, l := range []struct {
				key string
				dst *float64
				src *float64
			}{{"max_increase", &m.MaxIncrease, fm.MaxIncrease}, {"max_ratio", &m.MaxRatio, fm.MaxRatio},
				{"min_top1", &m.MinTop1, fm.MinTop1}, {"max_mean_abs_diff", &m.MaxMeanAbsDiff, fm.MaxMeanAbsDiff},
				{"max_psi", &m.MaxPSI, fm.MaxPSI}} {
				if l.src == nil {
					continue
				}
				if !limitOf(m.Name, l.key) {
					return Config{}, fmt.Errorf("line %d: metrics[%d] (%s): %s does not apply to %s (its limits: %s)",
						lineOf(n, i, l.key), i, m.Name, l.key, m.Name, strings.Join(limits[m.Name], ", "))
				}
				*l.dst = *l.src
			}
			c.Metrics = append(c.Metrics, m)
		}
	}
	if err := c.Validate(); err != nil {
		var fe *fieldError
		if errors.As(err, &fe) {
			return Config{}, fmt.Errorf("line %d: %s", lineOf(n, fe.metric, fe.key), fe.msg)
		}
		return Config{}, fmt.Errorf("line %d: %w", n.Line, err)
	}
	return c, nil
}

var metricNames = []string{MetricErrorRatio, MetricLatency, MetricAgreement, MetricDrift}

// limits are the keys of each metric's limits.
var limits = map[string][]string{
	MetricErrorRatio: {"max_increase"},
	MetricLatency:    {"max_ratio"},
	MetricAgreement:  {"min_top1", "max_mean_abs_diff"},
	MetricDrift:      {"max_psi"},
}

func limitOf(metric, key string) bool {
	for _, k := range limits[metric] {
		if k == key {
			return true
		}
	}
	return false
}

// lineOf is the line of key in the mapping n (in metrics[metric] when
// metric >= 0), or of the closest thing found.
func lineOf(n *yaml.Node, metric int, key string) int {
	if metric < 0 {
		if k := keyOf(n, key); k != nil {
			return k.Line
		}
		return n.Line
	}
	list := valueOf(n, "metrics")
	if list == nil || list.Kind != yaml.SequenceNode || metric >= len(list.Content) {
		return n.Line
	}
	item := list.Content[metric]
	if k := keyOf(item, key); k != nil {
		return k.Line
	}
	return item.Line
}

// keyOf and valueOf find key's key and value nodes in the mapping m, or
// nil.
func keyOf(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i]
		}
	}
	return nil
}

func valueOf(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// fieldError is a Validate error about one key, so ParseConfig can say
// which line: metric is the index in Metrics, or -1 for a top-level key.
type fieldError struct {
	metric int
	key    string
	msg    string
}

func (e *fieldError) Error() string { return "analysis: " + e.msg }

// Validate checks every value of c with a message for the person who wrote
// it; ParseConfig runs it, and the rollout engine should on a Config built
// in code.
func (c Config) Validate() error {
	bad := func(metric int, key, format string, a ...any) error {
		return &fieldError{metric: metric, key: key, msg: fmt.Sprintf(format, a...)}
	}
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case !finite(c.Confidence) || c.Confidence < 0.5 || c.Confidence >= 1:
		return bad(-1, "confidence", "confidence %g: want a probability from 0.5 to below 1, such as 0.98 (1 would never find a candidate worse)", c.Confidence)
	case !finite(c.Pass) || c.Pass <= 0 || c.Pass > 100:
		return bad(-1, "pass", "pass %g: want a score above 0 and at most 100", c.Pass)
	case !finite(c.Marginal) || c.Marginal < 0 || c.Marginal > c.Pass:
		return bad(-1, "marginal", "marginal %g: want a score from 0 to pass (%g)", c.Marginal, c.Pass)
	case c.MinRequests < 1 || c.MinRequests > 1e9:
		return bad(-1, "min_requests", "min_requests %d: want at least 1 request per arm (and at most 1e9)", c.MinRequests)
	case c.MaxWait < 0:
		return bad(-1, "max_wait", "max_wait %s: want a duration of 0 or more", c.MaxWait)
	case len(c.Metrics) == 0:
		return bad(-1, "metrics", "metrics: want at least one metric (%s)", strings.Join(metricNames, ", "))
	}
	seen := map[string]bool{}
	var weight float64
	for i, m := range c.Metrics {
		if defaultMetric(m.Name).Name == "" {
			return bad(i, "name", "metrics[%d]: unknown metric %q: want %s", i, m.Name, strings.Join(metricNames, ", "))
		}
		if seen[m.Name] {
			return bad(i, "name", "metrics[%d]: %s is listed twice", i, m.Name)
		}
		seen[m.Name] = true
		if !finite(m.Weight) || m.Weight < 0 || m.Weight > 1e6 {
			return bad(i, "weight", "metrics[%d] (%s): weight %g: want 0 (reported, not scored) or more, at most 1e6", i, m.Name, m.Weight)
		}
		weight += m.Weight
		for _, l := range []struct {
			key string
			v   float64
		}{{"max_increase", m.MaxIncrease}, {"max_ratio", m.MaxRatio}, {"min_top1", m.MinTop1},
			{"max_mean_abs_diff", m.MaxMeanAbsDiff}, {"max_psi", m.MaxPSI}} {
			if l.v != 0 && !limitOf(m.Name, l.key) {
				return bad(i, l.key, "metrics[%d] (%s): %s does not apply to %s (its limits: %s)", i, m.Name, l.key, m.Name,
					strings.Join(limits[m.Name], ", "))
			}
			if !finite(l.v) {
				return bad(i, l.key, "metrics[%d] (%s): %s %g: want a number", i, m.Name, l.key, l.v)
			}
		}
		var err error
		switch m.Name {
		case MetricErrorRatio:
			if m.MaxIncrease < 0 || m.MaxIncrease >= 1 {
				err = bad(i, "max_increase", "metrics[%d] (error_ratio): max_increase %g: want a share of requests from 0 to below 1, such as 0.01 (one point more errors)", i, m.MaxIncrease)
			}
		case MetricLatency:
			if m.MaxRatio < 1 || m.MaxRatio > 100 {
				err = bad(i, "max_ratio", "metrics[%d] (latency): max_ratio %g: want a ratio from 1 to 100, such as 1.2 (20%% slower); under 1 would fail a candidate as fast as the baseline", i, m.MaxRatio)
			}
		case MetricAgreement:
			switch {
			case m.MinTop1 < 0 || m.MinTop1 > 1:
				err = bad(i, "min_top1", "metrics[%d] (agreement): min_top1 %g: want a share from 0 to 1, such as 0.95", i, m.MinTop1)
			case m.MaxMeanAbsDiff < 0:
				err = bad(i, "max_mean_abs_diff", "metrics[%d] (agreement): max_mean_abs_diff %g: want 0 (not checked) or more", i, m.MaxMeanAbsDiff)
			case m.MinTop1 == 0 && m.MaxMeanAbsDiff == 0:
				err = bad(i, "name", "metrics[%d] (agreement): min_top1 and max_mean_abs_diff are both 0: nothing to check", i)
			}
		case MetricDrift:
			if m.MaxPSI <= 0 || m.MaxPSI > 100 {
				err = bad(i, "max_psi", "metrics[%d] (drift): max_psi %g: want a PSI above 0, such as 0.25 (a large shift)", i, m.MaxPSI)
			}
		}
		if err != nil {
			return err
		}
	}
	if weight == 0 {
		return bad(-1, "metrics", "metrics: every weight is 0: no metric would count in the score")
	}
	return nil
}
