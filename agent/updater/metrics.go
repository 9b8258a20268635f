package updater

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the updater's Prometheus series; Collector exposes them.
type metrics struct {
	commands           *prometheus.CounterVec
	transitions        *prometheus.CounterVec
	state              *prometheus.GaugeVec
	bytes              prometheus.Counter
	badChunks          prometheus.Counter
	validationFailures prometheus.Counter
	rollbacks          prometheus.Counter

	mu  sync.Mutex // guards cur
	cur State
}

// Command results counted in outpost_updater_commands_total.
const (
	ResultAccepted  = "accepted"
	ResultReplayed  = "replayed"
	ResultExpired   = "expired"
	ResultBadSig    = "bad_signature"
	ResultMalformed = "malformed"
	ResultOther     = "not_for_us"
)

func newMetrics() *metrics {
	m := &metrics{
		commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_updater_commands_total",
			Help: "Fleet commands received, by result: accepted, replayed, expired, bad_signature, malformed, not_for_us.",
		}, []string{"result"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_updater_transitions_total",
			Help: "Update state transitions, by the state entered.",
		}, []string{"state"}),
		state: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "outpost_updater_state",
			Help: "1 for the state the updater's current or last job is in.",
		}, []string{"state"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outpost_updater_download_bytes_total",
			Help: "Artifact bytes received and written (good chunks).",
		}),
		badChunks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outpost_updater_bad_chunks_total",
			Help: "Chunks refused because they did not match their hash or size.",
		}),
		validationFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outpost_updater_validation_failures_total",
			Help: "Staged models that failed validation.",
		}),
		rollbacks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "outpost_updater_rollbacks_total",
			Help: "Updates rolled back to the previous version.",
		}),
	}
	for _, r := range []string{ResultAccepted, ResultReplayed, ResultExpired, ResultBadSig, ResultMalformed, ResultOther} {
		m.commands.WithLabelValues(r)
	}
	m.setState(Idle)
	return m
}

func (m *metrics) transition(s State) { m.transitions.WithLabelValues(string(s)).Inc() }

func (m *metrics) setState(s State) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cur = s
	for _, st := range States {
		v := 0.0
		if st == s {
			v = 1
		}
		m.state.WithLabelValues(string(st)).Set(v)
	}
}

// Collector returns the updater's metrics for the daemon's registry.
func (u *Updater) Collector() prometheus.Collector { return u.metrics }

func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.commands, m.transitions, m.state, m.bytes, m.badChunks, m.validationFailures, m.rollbacks}
}
