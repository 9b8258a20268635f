// Package config reads the agent's YAML configuration (documented in
// docs/CONFIG.md) and fills in defaults. Command-line flags override it; the
// daemon package turns it into components.
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/yamlconf"
	"github.com/outpost-edge/outpost/protocol"
)

// Defaults.
const (
	DefaultListen         = "127.0.0.1:8480"
	DefaultGRPCListen     = "127.0.0.1:8481"
	DefaultMaxBodyBytes   = 64 << 20
	DefaultRequestTimeout = 30 * time.Second
	DefaultDrainTimeout   = 10 * time.Second

	DefaultProbation            = time.Minute
	DefaultProbationMinRequests = 20
	DefaultProbationMax         = 15 * time.Minute
)

// Config is the agent's configuration.
type Config struct {
	// Listen is host:port, or unix:/path/to.sock for a Unix socket.
	Listen string `yaml:"listen"`
	// DataDir holds the model store and the agent's state.
	DataDir string `yaml:"data_dir"`
	// Threads per interpreter (and XNNPACK); Workers interpreters per model
	// (0: one per core); Queue callers that may wait per model (0: 64 per
	// worker).
	Threads int `yaml:"threads"`
	Workers int `yaml:"workers"`
	Queue   int `yaml:"queue"`
	// Delegates is the fallback chain; empty means [xnnpack] for TFLite
	// models and CPU for ONNX ones. Plain CPU always ends it. cuda and
	// tensorrt are ONNX Runtime execution providers (TFLite models skip
	// them); external and xnnpack are TFLite delegates (ONNX models skip
	// them).
	Delegates []Delegate `yaml:"delegates"`
	// Inputs fixes, by input name, the served shape of ONNX inputs with open
	// dimensions and the value of their warm-up run (docs/RUNTIMES.md).
	Inputs map[string]Input `yaml:"inputs"`
	// Models are served from files; models installed in DataDir's store are
	// served as well.
	Models    []Model   `yaml:"models"`
	API       API       `yaml:"api"`
	GRPC      GRPC      `yaml:"grpc"` // off by default
	Telemetry Telemetry `yaml:"telemetry"`
	// Fleet connects the agent to a fleet controller through an MQTT
	// broker; without a broker the agent runs alone (telemetry is kept on
	// disk, bounded, and never sent).
	Fleet Fleet `yaml:"fleet"`
	// Streams feed models from local MQTT topics (docs/MODES.md).
	Streams []Stream `yaml:"streams"`
}

// Telemetry configures the on-device queue (docs/PROTOCOL.md). It runs
// whenever there is a data dir.
type Telemetry struct {
	// Disabled turns telemetry off entirely.
	Disabled bool `yaml:"disabled"`
	// MaxBytes bounds the queue (default 64 MiB); MaxAge drops low and
	// normal priority records older than this (default 7 days).
	MaxBytes int64         `yaml:"max_bytes"`
	MaxAge   time.Duration `yaml:"max_age"`
	// SampleRate is the fraction of predictions kept as samples (default
	// 0.01; negative: none). Sampled requests also feed the per-input
	// statistics used for drift monitoring.
	SampleRate float64 `yaml:"sample_rate"`
	// AggregateInterval and HealthInterval: how often per-model aggregates
	// and device health are written (default 1 min each).
	AggregateInterval time.Duration `yaml:"aggregate_interval"`
	HealthInterval    time.Duration `yaml:"health_interval"`
}

// Fleet is the link to the controller.
type Fleet struct {
	// Broker is tcp://host:port or ssl://host:port; empty, with no
	// Brokers either, runs without a fleet.
	Broker string `yaml:"broker"`
	// Brokers are the nodes of a clustered broker (sharing sessions), as
	// URLs like Broker's; the agent fails over between them, in order,
	// after Broker if that is set too (docs/PROTOCOL.md).
	Brokers []string `yaml:"brokers"`
	// Name is the fleet; Device this device's id (default: the host
	// name). Both are one MQTT topic level.
	Name   string            `yaml:"name"`
	Device string            `yaml:"device"`
	Labels map[string]string `yaml:"labels"`
	// Username and PasswordFile authenticate to the broker.
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// TLS for ssl:// brokers: CA bundle, and a client certificate and key
	// for mutual TLS.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Root is the trust root the device was provisioned with (root.json
	// from `outpost-fleet keys init`); updates and commands verify
	// against it. Default DATA_DIR/root.json.
	Root string `yaml:"root"`
	// Probation is the least time a newly activated model is watched
	// before it is committed (default 1 min). Probation then goes on until
	// the model served ProbationMinRequests requests (default 20), a
	// verified commit, or until ProbationMax passed since activation
	// (default 15 min), a commit the fleet is told was not verified. A
	// rollout may override the last two per install.
	Probation            time.Duration `yaml:"probation"`
	ProbationMinRequests int64         `yaml:"probation_min_requests"`
	ProbationMax         time.Duration `yaml:"probation_max"`
	// StatusInterval is how often the retained status is refreshed when
	// nothing else changed it (default 1 min).
	StatusInterval time.Duration `yaml:"status_interval"`
	// CleanSession connects without a persistent session and subscribes
	// at QoS 0: the broker queues nothing while the device is away, and
	// the controller sends a command again once the device is back online
	// (docs/PROTOCOL.md). Off by default; on for NATS (docs/SCALE.md).
	CleanSession bool `yaml:"clean_session"`
}

// Linked reports whether a broker is configured: Broker or Brokers.
func (f Fleet) Linked() bool { return f.Broker != "" || len(f.Brokers) > 0 }

// Delegate is one link of the delegate chain.
type Delegate struct {
	Kind    string            `yaml:"kind"` // external, xnnpack, cpu, cuda or tensorrt
	Path    string            `yaml:"path,omitempty"`
	Options map[string]string `yaml:"options,omitempty"`
}

// Input fixes one ONNX input: Shape replaces its open dimensions (others
// stay 1), Warm is the value of every element in the warm-up run.
type Input struct {
	Shape []int   `yaml:"shape"`
	Warm  float64 `yaml:"warm"`
}

// Model is a model served from a file.
type Model struct {
	Name    string `yaml:"name"`
	Path    string `yaml:"path"`
	Version int64  `yaml:"version"` // positive; default 1
}

// API configures the HTTP API.
type API struct {
	MaxBodyBytes   int64         `yaml:"max_body_bytes"`
	RequestTimeout time.Duration `yaml:"request_timeout"`
	DrainTimeout   time.Duration `yaml:"drain_timeout"`
	// TokenFile holds a bearer token; when set, every endpoint but the
	// health checks requires "Authorization: Bearer <token>".
	TokenFile string `yaml:"token_file"`
	// RateLimit is per client address, in requests per second with a burst;
	// 0 disables it.
	RateLimit float64 `yaml:"rate_limit"`
	RateBurst int     `yaml:"rate_burst"`
}

// GRPC configures the KServe v2 gRPC listener (docs/API.md). It shares the
// api section's token, rate limit, request timeout, drain timeout and size
// limit (max_body_bytes bounds a request message).
type GRPC struct {
	// Enabled turns the listener on at Listen; setting Listen turns it on
	// as well.
	Enabled bool `yaml:"enabled"`
	// Listen is host:port; default DefaultGRPCListen (loopback).
	Listen string `yaml:"listen"`
	// MaxConcurrentStreams bounds the calls in flight on one connection
	// (default 256).
	MaxConcurrentStreams uint32 `yaml:"max_concurrent_streams"`
}

// On reports whether the gRPC listener runs.
func (g GRPC) On() bool { return g.Enabled || g.Listen != "" }

// Load reads a YAML file; unknown keys are an error, so a typo does not
// silently fall back to a default.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	var c Config
	if err := yamlconf.Decode(path, b, &c); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// Parse decodes YAML. It does not apply defaults or validate. Its errors
// name the line and the key ("agent.yaml:3: unknown key "thread"").
func Parse(b []byte) (Config, error) {
	var c Config
	// An empty file is an empty config.
	if err := yamlconf.Decode("agent.yaml", b, &c); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Threads <= 0 {
		c.Threads = 1
	}
	if c.API.MaxBodyBytes <= 0 {
		c.API.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.API.RequestTimeout <= 0 {
		c.API.RequestTimeout = DefaultRequestTimeout
	}
	if c.API.DrainTimeout <= 0 {
		c.API.DrainTimeout = DefaultDrainTimeout
	}
	if c.GRPC.On() && c.GRPC.Listen == "" {
		c.GRPC.Listen = DefaultGRPCListen
	}
	if c.Fleet.Linked() && c.Fleet.Device == "" {
		c.Fleet.Device, _ = os.Hostname()
	}
	if c.Fleet.Root == "" && c.DataDir != "" {
		c.Fleet.Root = filepath.Join(c.DataDir, "root.json")
	}
	if c.Fleet.Probation <= 0 {
		c.Fleet.Probation = DefaultProbation
	}
	// Negative values are left for Validate to refuse.
	if c.Fleet.ProbationMinRequests == 0 {
		c.Fleet.ProbationMinRequests = DefaultProbationMinRequests
	}
	if c.Fleet.ProbationMax == 0 {
		c.Fleet.ProbationMax = max(DefaultProbationMax, c.Fleet.Probation)
	}
	if c.Fleet.StatusInterval <= 0 {
		c.Fleet.StatusInterval = time.Minute
	}
	for i := range c.Models {
		if c.Models[i].Version == 0 {
			c.Models[i].Version = 1
		}
	}
	for i := range c.Streams {
		c.Streams[i] = streamDefaults(c.Streams[i])
	}
	return c
}

// Validate reports every problem at once, one per line.
func (c Config) Validate() error {
	var errs []string
	seen := map[string]bool{}
	for i, m := range c.Models {
		switch {
		case m.Name == "":
			errs = append(errs, fmt.Sprintf("models[%d]: name is required", i))
		case !ValidName(m.Name):
			errs = append(errs, fmt.Sprintf("models[%d]: name %q may use only letters, digits, '-', '_' and '.'", i, m.Name))
		case seen[m.Name]:
			errs = append(errs, fmt.Sprintf("models[%d]: name %q is used twice", i, m.Name))
		}
		seen[m.Name] = true
		if m.Path == "" {
			errs = append(errs, fmt.Sprintf("models[%d] (%s): path is required", i, m.Name))
		}
		if m.Version < 0 {
			errs = append(errs, fmt.Sprintf("models[%d] (%s): version must be a positive integer", i, m.Name))
		}
	}
	for i, d := range c.Delegates {
		switch d.Kind {
		case "xnnpack", "cpu", "cuda", "tensorrt":
		case "external":
			if d.Path == "" {
				errs = append(errs, fmt.Sprintf("delegates[%d]: external needs a path", i))
			}
		default:
			errs = append(errs, fmt.Sprintf("delegates[%d]: unknown kind %q (want external, xnnpack, cpu, cuda or tensorrt)", i, d.Kind))
		}
	}
	if c.Threads < 0 || c.Workers < 0 {
		errs = append(errs, "threads and workers must not be negative")
	}
	if c.Fleet.Linked() {
		if b := c.Fleet.Broker; b != "" && !strings.HasPrefix(b, "tcp://") && !strings.HasPrefix(b, "ssl://") {
			errs = append(errs, fmt.Sprintf("fleet.broker %q: want tcp://host:port or ssl://host:port", b))
		}
		for i, b := range c.Fleet.Brokers {
			if !strings.HasPrefix(b, "tcp://") && !strings.HasPrefix(b, "ssl://") {
				errs = append(errs, fmt.Sprintf("fleet.brokers[%d] %q: want tcp://host:port or ssl://host:port", i, b))
			}
		}
		if c.Fleet.Name == "" {
			errs = append(errs, "fleet.name is required with fleet.broker")
		}
		if c.DataDir == "" {
			errs = append(errs, "data_dir is required with fleet.broker (updates and telemetry live there)")
		}
	}
	for k, v := range c.Fleet.Labels {
		if !protocol.ValidLabel(k, v) {
			errs = append(errs, fmt.Sprintf("fleet.labels: %q=%q: keys are 1-63 of [A-Za-z0-9_.-], values at most 128 bytes without ',' or '='", k, v))
		}
	}
	if (c.Fleet.CertFile == "") != (c.Fleet.KeyFile == "") {
		errs = append(errs, "fleet.cert_file and fleet.key_file go together")
	}
	if c.Telemetry.MaxBytes < 0 || c.Telemetry.AggregateInterval < 0 || c.Telemetry.HealthInterval < 0 || c.Fleet.Probation < 0 {
		errs = append(errs, "telemetry sizes and intervals and fleet.probation must not be negative")
	}
	if c.Fleet.ProbationMinRequests < 0 || c.Fleet.ProbationMax < 0 {
		errs = append(errs, "fleet.probation_min_requests and fleet.probation_max must not be negative")
	}
	if c.Fleet.ProbationMax > 0 && c.Fleet.ProbationMax < c.Fleet.Probation {
		errs = append(errs, fmt.Sprintf("fleet.probation_max %s is shorter than fleet.probation %s", c.Fleet.ProbationMax, c.Fleet.Probation))
	}
	if c.API.RateLimit < 0 || c.API.RateBurst < 0 {
		errs = append(errs, "api.rate_limit and api.rate_burst must not be negative")
	}
	errs = append(errs, validateStreams(c.Streams)...)
	if len(errs) > 0 {
		return errors.New("config: " + strings.Join(errs, "; "))
	}
	return nil
}

// ValidName reports whether s can name a model: it appears in URLs and
// directory names.
func ValidName(s string) bool {
	if s == "" || len(s) > 128 || s == "." || s == ".." {
		return false
	}
	for _, r := range s {
		ok := r == '-' || r == '_' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return false
		}
	}
	return true
}
