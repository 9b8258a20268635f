package controller

// The controller's Prometheus /metrics, served on the admin API's listener
// behind its tokens (GET needs a viewer; docs/MONITORING.md "Queries and
// Prometheus"). Two kinds of series:
//
//   - fleet series (outpost_fleet_*), read from the store at scrape time:
//     the models' traffic from agg_totals (running totals per model
//     version, never expired, so counters never go down when buckets
//     expire), devices, rollouts by state, the telemetry the devices sent.
//     Replicas on one PostgreSQL share the store, so every replica answers
//     the same values: aggregate them across instances with max, never
//     sum (or scrape one replica).
//   - process series (outpost_fleet_controller_*, go_*, process_*): this
//     replica's own counters; sum them across instances.
//
// No per-device series: the totals are per model version, and a device's
// traffic is one admin API query away (GET /v1/models/{name}/metrics
// ?device=). The series count is bounded by models x versions x error
// codes (the agent's codes are a short fixed list), plus the latency
// buckets.

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/buildinfo"
)

// DriftScore is one feature's drift score of a model version, fleet-wide.
type DriftScore struct {
	Model, Version, Feature string
	PSI                     float64
}

// DriftScores lists the drift scores to export as outpost_fleet_drift_psi.
// It is called at every scrape, from the scrape's goroutine, and must be
// safe for concurrent use; nil (the default until drift detection lands,
// issue #12 part 6) exports no drift series.
type DriftScores func() ([]DriftScore, error)

var (
	modelRequestsDesc = prometheus.NewDesc("outpost_fleet_model_requests_total",
		"Inference requests the devices answered, by model and version, fleet-wide (from the store's running totals).",
		[]string{"model", "version"}, nil)
	modelErrorsDesc = prometheus.NewDesc("outpost_fleet_model_errors_total",
		"Inference requests that failed, by model and version, fleet-wide.",
		[]string{"model", "version"}, nil)
	modelErrorsByCodeDesc = prometheus.NewDesc("outpost_fleet_model_errors_by_code_total",
		"Failed inference requests by model, version and the agent's error code (bad_input, overload, internal, ...).",
		[]string{"model", "version", "code"}, nil)
	modelDroppedDesc = prometheus.NewDesc("outpost_fleet_model_stream_dropped_total",
		"Stream messages for the model dropped on the devices before the model saw them.",
		[]string{"model", "version"}, nil)
	modelLatencyDesc = prometheus.NewDesc("outpost_fleet_model_latency_seconds",
		"Inference latency on the devices, by model and version, merged from the devices' histograms (the agent's bounds).",
		[]string{"model", "version"}, nil)
	driftPSIDesc = prometheus.NewDesc("outpost_fleet_drift_psi",
		"Population stability index of a model version's input or output feature against its signed reference profile, fleet-wide.",
		[]string{"model", "version", "feature"}, nil)
	devicesDesc = prometheus.NewDesc("outpost_fleet_devices",
		"Devices the fleet knows.", nil, nil)
	devicesOnlineDesc = prometheus.NewDesc("outpost_fleet_devices_online",
		"Devices whose last state message said online.", nil, nil)
	rolloutsDesc = prometheus.NewDesc("outpost_fleet_rollouts",
		"Rollouts by state.", []string{"state"}, nil)
	telBatchesDesc = prometheus.NewDesc("outpost_fleet_telemetry_batches_total",
		"Telemetry batches the devices sent that the store took, fleet-wide.", nil, nil)
	telRecordsDesc = prometheus.NewDesc("outpost_fleet_telemetry_records_total",
		"New telemetry records stored, fleet-wide (duplicates not counted).", nil, nil)
	telDupsDesc = prometheus.NewDesc("outpost_fleet_telemetry_duplicates_total",
		"Telemetry records received again and dropped as duplicates, fleet-wide.", nil, nil)
	msgsInDesc = prometheus.NewDesc("outpost_fleet_controller_messages_in_total",
		"MQTT messages this controller replica received.", nil, nil)
	msgsOutDesc = prometheus.NewDesc("outpost_fleet_controller_messages_out_total",
		"MQTT messages this controller replica published.", nil, nil)
	badMsgsDesc = prometheus.NewDesc("outpost_fleet_controller_bad_messages_total",
		"MQTT messages this controller replica could not decode or refused.", nil, nil)
	chunkReqDesc = prometheus.NewDesc("outpost_fleet_controller_chunk_requests_total",
		"Artifact chunk requests this replica received.", nil, nil)
	chunkBytesDesc = prometheus.NewDesc("outpost_fleet_controller_chunk_bytes_total",
		"Artifact chunk bytes this replica sent.", nil, nil)
	leaderDesc = prometheus.NewDesc("outpost_fleet_controller_leader",
		"1 while this replica runs the rollout engine.", nil, nil)
)

// rolloutStates are exported even at 0, so that a state's series exists
// before its first rollout.
var rolloutStates = []registry.RolloutState{registry.RolloutRunning, registry.RolloutPaused, registry.RolloutCompleted,
	registry.RolloutHalted, registry.RolloutAborted, registry.RolloutSuperseded}

// fleetCollector reads the fleet series from the store at every scrape.
type fleetCollector struct {
	c     *Controller
	drift DriftScores
	log   *slog.Logger
}

func (f fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{modelRequestsDesc, modelErrorsDesc, modelErrorsByCodeDesc, modelDroppedDesc,
		modelLatencyDesc, driftPSIDesc, devicesDesc, devicesOnlineDesc, rolloutsDesc, telBatchesDesc, telRecordsDesc,
		telDupsDesc, msgsInDesc, msgsOutDesc, badMsgsDesc, chunkReqDesc, chunkBytesDesc, leaderDesc} {
		ch <- d
	}
}

func (f fleetCollector) Collect(ch chan<- prometheus.Metric) {
	reg := f.c.reg
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	if totals, err := reg.ModelTotals(); err != nil {
		ch <- prometheus.NewInvalidMetric(modelRequestsDesc, err)
	} else {
		for _, t := range totals {
			counter(modelRequestsDesc, t.Requests, t.Model, t.Version)
			counter(modelErrorsDesc, t.Errors, t.Model, t.Version)
			counter(modelDroppedDesc, t.StreamDropped, t.Model, t.Version)
			for code, n := range t.ErrorsByCode {
				counter(modelErrorsByCodeDesc, n, t.Model, t.Version, code)
			}
			ch <- latencyHistogram(&t)
		}
	}
	if f.drift != nil {
		if scores, err := f.drift(); err != nil {
			ch <- prometheus.NewInvalidMetric(driftPSIDesc, err)
		} else {
			for _, s := range scores {
				gauge(driftPSIDesc, s.PSI, s.Model, s.Version, s.Feature)
			}
		}
	}
	if fc, err := reg.FleetCounts(); err != nil {
		ch <- prometheus.NewInvalidMetric(devicesDesc, err)
	} else {
		gauge(devicesDesc, float64(fc.Devices))
		gauge(devicesOnlineDesc, float64(fc.Online))
		for _, s := range rolloutStates {
			gauge(rolloutsDesc, float64(fc.Rollouts[s]), string(s))
		}
		for s, n := range fc.Rollouts {
			if !known(s) {
				gauge(rolloutsDesc, float64(n), string(s))
			}
		}
		counter(telBatchesDesc, fc.TelemetryBatches)
		counter(telRecordsDesc, fc.TelemetryRecords)
		counter(telDupsDesc, fc.TelemetryDuplicates)
	}
	st := f.c.Stats()
	counter(msgsInDesc, st.MessagesIn)
	counter(msgsOutDesc, st.MessagesOut)
	counter(badMsgsDesc, st.BadMessages)
	counter(chunkReqDesc, st.Artifacts.Requests)
	counter(chunkBytesDesc, st.Artifacts.Bytes)
	leader := 0.0
	if st.Leader {
		leader = 1
	}
	gauge(leaderDesc, leader)
}

func known(s registry.RolloutState) bool {
	for _, k := range rolloutStates {
		if k == s {
			return true
		}
	}
	return false
}

// latencyHistogram turns a version's merged latency histogram into a
// Prometheus one: the agent's bounds in seconds, counts made cumulative,
// the overflow bucket only in the count (+Inf).
func latencyHistogram(t *registry.VersionTotals) prometheus.Metric {
	h := &t.Latency
	buckets := make(map[float64]uint64, len(h.BoundsMicros))
	var cum uint64
	for i, b := range h.BoundsMicros {
		if i < len(h.Counts) {
			cum += h.Counts[i]
		}
		buckets[float64(b)/1e6] = cum
	}
	return prometheus.MustNewConstHistogram(modelLatencyDesc, h.Total(), float64(h.SumMicros)/1e6, buckets, t.Model, t.Version)
}

// metricsHandler builds the /metrics handler: the fleet collector, the
// build and the Go runtime and process collectors, in a registry of its
// own. A store that fails a scrape is logged and leaves its series out;
// the rest is still served.
func (c *Controller) metricsHandler(drift DriftScores) http.Handler {
	reg := prometheus.NewRegistry()
	bi := buildinfo.Read(buildinfo.Version)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "outpost_build_info",
		Help:        "The controller's build (always 1): its version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "commit": bi.Commit, "goversion": bi.GoVersion},
	})
	build.Set(1)
	reg.MustRegister(build, fleetCollector{c: c, drift: drift, log: c.log},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(c.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	})
}
