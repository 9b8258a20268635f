package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/broker"
	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/drift"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/subcommand"
	"github.com/outpost-edge/outpost/internal/yamlconf"
)

var serveCommand = subcommand.Command{
	Name:    "serve",
	Summary: "run the fleet controller (embedded MQTT broker, rollouts, admin API)",
	Run:     runServe,
}

// fleetConfig is fleet.yaml. Flags given on the command line win.
type fleetConfig struct {
	Fleet   string `yaml:"fleet"`
	DataDir string `yaml:"data_dir"`
	// Store is the registry's engine: a postgres:// URL, or empty for the
	// embedded SQLite store in the data dir (docs/STORE.md).
	Store string `yaml:"store"`
	// ReplicaID and LeaseTTL: see --replica-id and --lease-ttl.
	ReplicaID string        `yaml:"replica_id"`
	LeaseTTL  time.Duration `yaml:"lease_ttl"`
	Keys      string        `yaml:"keys"`
	Broker    string        `yaml:"broker"`
	// Brokers are the nodes of a clustered broker, after Broker.
	Brokers    []string `yaml:"brokers"`
	ListenMQTT string   `yaml:"listen_mqtt"`
	Admin      string   `yaml:"admin"`
	// AdminTLS serves the admin API over TLS; see --admin-cert.
	AdminTLS struct {
		Cert string `yaml:"cert"`
		Key  string `yaml:"key"`
	} `yaml:"admin_tls"`
	// LogLevel and LogFormat: see --log-level and --log-format.
	LogLevel  string `yaml:"log_level"`
	LogFormat string `yaml:"log_format"`
	MQTT      struct {
		Username string            `yaml:"username"`
		Password string            `yaml:"password"`
		Users    map[string]string `yaml:"users"`
		// OpenBroker: see --open-broker.
		OpenBroker     bool          `yaml:"open_broker"`
		ConnectTimeout time.Duration `yaml:"connect_timeout"`
		TLSCert        string        `yaml:"tls_cert"`
		TLSKey         string        `yaml:"tls_key"`
		ShareGroup     string        `yaml:"share_group"`
	} `yaml:"mqtt"`
	Artifacts struct {
		ChunkSize      int   `yaml:"chunk_size"`
		BytesPerSecond int64 `yaml:"bytes_per_second"`
	} `yaml:"artifacts"`
	Rollouts struct {
		CommandTTL  time.Duration `yaml:"command_ttl"`
		ResendAfter time.Duration `yaml:"resend_after"`
		// Analysis is the analysis config file (YAML, as rollout create
		// --analysis) of rollouts with shadow or canary phases and none of
		// their own; AnalyzeEvery how often a phase short of evidence is
		// analysed again.
		Analysis     string        `yaml:"analysis"`
		AnalyzeEvery time.Duration `yaml:"analyze_every"`
	} `yaml:"rollouts"`
	// Alerts are the webhooks (docs/CONFIG.md, docs/MONITORING.md).
	Alerts alerts.Config `yaml:"alerts"`
	// Monitoring: what the controller keeps of the devices' telemetry and
	// for how long (docs/MONITORING.md "What the controller keeps"); zero
	// values take the defaults.
	Monitoring struct {
		Samples struct {
			MaxCount int   `yaml:"max_count"`
			MaxBytes int64 `yaml:"max_bytes"`
		} `yaml:"samples"`
		Retention struct {
			MinuteBuckets time.Duration `yaml:"minute_buckets"`
			HourBuckets   time.Duration `yaml:"hour_buckets"`
			MaxBucketRows int64         `yaml:"max_bucket_rows"`
			Health        time.Duration `yaml:"health"`
			RawTelemetry  time.Duration `yaml:"raw_telemetry"`
			Every         time.Duration `yaml:"every"`
		} `yaml:"retention"`
		// Drift: drift detection (docs/MONITORING.md "Drift detection").
		Drift struct {
			Off      bool          `yaml:"off"`
			Window   time.Duration `yaml:"window"`
			PSI      float64       `yaml:"psi"`
			JS       float64       `yaml:"js"`
			MinCount uint64        `yaml:"min_count"`
			Windows  int           `yaml:"windows"`
		} `yaml:"drift"`
	} `yaml:"monitoring"`
}

func loadFleetConfig(path string) (*fleetConfig, error) {
	cfg := &fleetConfig{Fleet: "default", DataDir: "outpost-fleet-data", ListenMQTT: broker.DefaultAddr, Admin: admin.DefaultAddr, LogLevel: "info"}
	if path == "" {
		return cfg, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := yamlconf.Decode(path, b, cfg); err != nil {
		return nil, err
	}
	if err := cfg.Alerts.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	config := fs.String("config", "", "fleet.yaml")
	brokerURL := fs.String("broker", "", "external MQTT broker (tcp://host:port), or the nodes of a clustered one separated by commas; default: run the embedded broker")
	listenMQTT := fs.String("listen-mqtt", "", "embedded broker address (default "+broker.DefaultAddr+")")
	adminAddr := fs.String("admin", "", "admin API address (default "+admin.DefaultAddr+")")
	dataDir := fs.String("data-dir", "", "registry and artifacts directory (default outpost-fleet-data)")
	store := fs.String("store", "", "the store: postgres://user@host/db, or empty for the embedded SQLite file in the data dir (store:)")
	keys := fs.String("keys", "", "keys directory made by keys init (required here or in the config)")
	fleetName := fs.String("fleet", "", "fleet name, the <fleet> of every topic (default \"default\")")
	adminCert := fs.String("admin-cert", "", "serve the admin API over TLS with this PEM certificate (chain) (admin_tls.cert)")
	adminKey := fs.String("admin-key", "", "the PEM key of --admin-cert (admin_tls.key)")
	logFlags := subcommand.LogFlag(fs)
	replicaID := fs.String("replica-id", "", "this replica's name in the rollout engine's lease on a PostgreSQL store, unique among the replicas (default: random) (replica_id:)")
	leaseTTL := fs.Duration("lease-ttl", 0, "how long the rollout engine's lease runs without renewal; a standby takes over about this long after the leader dies (default 10s) (lease_ttl:)")
	shareGroup := fs.String("share-group", "", "subscribe to telemetry and chunk requests in this MQTT shared-subscription group, so replicas split them (mqtt.share_group:)")
	openBroker := fs.Bool("open-broker", false, "let any client use any topic of the embedded broker, enrolled devices or not (insecure: demos on loopback only)")
	if _, err := subcommand.ParseInterspersed(fs, args); err != nil {
		return err
	}
	cfg, err := loadFleetConfig(*config)
	if err != nil {
		return subcommand.UsageError(err.Error())
	}
	for _, o := range []struct {
		flag string
		dst  *string
	}{{*listenMQTT, &cfg.ListenMQTT}, {*adminAddr, &cfg.Admin}, {*dataDir, &cfg.DataDir}, {*store, &cfg.Store}, {*keys, &cfg.Keys}, {*fleetName, &cfg.Fleet},
		{*adminCert, &cfg.AdminTLS.Cert}, {*adminKey, &cfg.AdminTLS.Key}, {*replicaID, &cfg.ReplicaID}, {*shareGroup, &cfg.MQTT.ShareGroup}} {
		if o.flag != "" {
			*o.dst = o.flag
		}
	}
	if *leaseTTL != 0 {
		cfg.LeaseTTL = *leaseTTL
	}
	if *brokerURL != "" {
		urls := strings.Split(*brokerURL, ",")
		cfg.Broker, cfg.Brokers = strings.TrimSpace(urls[0]), nil
		for _, u := range urls[1:] {
			cfg.Brokers = append(cfg.Brokers, strings.TrimSpace(u))
		}
	}
	if cfg.Keys == "" {
		fs.Usage()
		return subcommand.UsageError("--keys (or keys: in the config) is required")
	}
	setIf(&cfg.LogLevel, logFlags.Level)
	setIf(&cfg.LogFormat, logFlags.Format)
	log, err := (&subcommand.LogFlags{Level: cfg.LogLevel, Format: cfg.LogFormat}).Logger(stderr)
	if err != nil {
		return err
	}
	opts := controller.Options{
		Fleet: cfg.Fleet, DataDir: cfg.DataDir, Store: cfg.Store, Keys: cfg.Keys, Broker: cfg.Broker, Brokers: cfg.Brokers, ListenMQTT: cfg.ListenMQTT, Admin: cfg.Admin,
		BrokerUsers: cfg.MQTT.Users, OpenBroker: cfg.MQTT.OpenBroker || *openBroker, ConnectTimeout: cfg.MQTT.ConnectTimeout, Username: cfg.MQTT.Username, Password: cfg.MQTT.Password, ShareGroup: cfg.MQTT.ShareGroup,
		ChunkSize: cfg.Artifacts.ChunkSize, BytesPerSecond: cfg.Artifacts.BytesPerSecond,
		CommandTTL: cfg.Rollouts.CommandTTL, ResendAfter: cfg.Rollouts.ResendAfter, ReplicaID: cfg.ReplicaID, LeaseTTL: cfg.LeaseTTL, Alerts: cfg.Alerts, Logger: log,
		MaxSamples: cfg.Monitoring.Samples.MaxCount, MaxSampleBytes: cfg.Monitoring.Samples.MaxBytes,
		PruneEvery: cfg.Monitoring.Retention.Every,
		Retention: registry.Retention{MinuteBuckets: cfg.Monitoring.Retention.MinuteBuckets, HourBuckets: cfg.Monitoring.Retention.HourBuckets,
			MaxBucketRows: cfg.Monitoring.Retention.MaxBucketRows, Health: cfg.Monitoring.Retention.Health, RawTelemetry: cfg.Monitoring.Retention.RawTelemetry},
		Drift: controller.DriftOptions{Off: cfg.Monitoring.Drift.Off, Window: cfg.Monitoring.Drift.Window, Thresholds: drift.Thresholds{
			PSI: cfg.Monitoring.Drift.PSI, JS: cfg.Monitoring.Drift.JS, MinCount: cfg.Monitoring.Drift.MinCount, Windows: cfg.Monitoring.Drift.Windows}},
	}
	if cfg.Rollouts.Analysis != "" {
		c, err := readAnalysis(cfg.Rollouts.Analysis)
		if err != nil {
			return fmt.Errorf("rollouts.analysis: %w", err)
		}
		opts.DefaultAnalysis = c
	}
	if cfg.Rollouts.AnalyzeEvery < 0 {
		return subcommand.UsageError("rollouts.analyze_every must not be negative")
	}
	opts.AnalyzeEvery = cfg.Rollouts.AnalyzeEvery
	if err := opts.Drift.Validate(); err != nil {
		return subcommand.UsageError("monitoring.drift: " + strings.TrimPrefix(err.Error(), "drift: "))
	}
	if m := cfg.Monitoring; m.Samples.MaxCount < 0 || m.Samples.MaxBytes < 0 || m.Retention.MaxBucketRows < 0 || m.Retention.MinuteBuckets < 0 ||
		m.Retention.HourBuckets < 0 || m.Retention.Health < 0 || m.Retention.RawTelemetry < 0 || m.Retention.Every < 0 {
		return subcommand.UsageError("monitoring: bounds and durations must not be negative")
	}
	if cfg.MQTT.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.MQTT.TLSCert, cfg.MQTT.TLSKey)
		if err != nil {
			return fmt.Errorf("mqtt tls: %w", err)
		}
		opts.BrokerTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		// The controller's own client dials its embedded broker, whose
		// certificate may not name the listen address: it accepts exactly
		// that certificate and nothing else (pinning instead of a CA).
		own := cert.Certificate[0]
		opts.ClientTLS = &tls.Config{
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: true, //nolint:gosec // replaced by the pin below
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				if len(raw) == 0 || !bytes.Equal(raw[0], own) {
					return errors.New("mqtt tls: the broker is not our embedded broker")
				}
				return nil
			},
		}
	}
	scheme := "http"
	if (cfg.AdminTLS.Cert == "") != (cfg.AdminTLS.Key == "") {
		return subcommand.UsageError("admin_tls: cert and key go together (--admin-cert, --admin-key)")
	}
	if cfg.AdminTLS.Cert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.AdminTLS.Cert, cfg.AdminTLS.Key)
		if err != nil {
			return fmt.Errorf("admin tls: %w", err)
		}
		opts.AdminTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		scheme = "https"
	}
	c, err := controller.New(opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "outpost-fleet: fleet %s, mqtt %s, admin %s://%s\n", cfg.Fleet, c.BrokerURL(), scheme, c.AdminAddr())
	return c.Run(ctx)
}

func setIf(dst *string, v string) {
	if v != "" {
		*dst = v
	}
}
