package telemetry

import (
	"github.com/outpost-edge/outpost/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

// Collector returns a Prometheus collector that exports the queue's Stats on
// every scrape. The daemon registers it on its /metrics registry.
func (q *Queue) Collector() prometheus.Collector { return metricsCollector{q} }

var (
	descDepth = prometheus.NewDesc("outpost_telemetry_queue_records",
		"Records waiting to be sent, by priority.", []string{"priority"}, nil)
	descBytes = prometheus.NewDesc("outpost_telemetry_queue_bytes",
		"Bytes of records waiting to be sent.", nil, nil)
	descOldest = prometheus.NewDesc("outpost_telemetry_oldest_unsent_seconds",
		"Age of the oldest record not yet acknowledged by the broker.", nil, nil)
	descDropped = prometheus.NewDesc("outpost_telemetry_dropped_records_total",
		"Records dropped, by reason, in this queue epoch.", []string{"reason"}, nil)
	descPublished = prometheus.NewDesc("outpost_telemetry_published_records_total",
		"Records acknowledged by the broker since the agent started.", nil, nil)
	descQuarantined = prometheus.NewDesc("outpost_telemetry_quarantined_records",
		"Entries in the quarantine bucket.", nil, nil)
	descWriteErrors = prometheus.NewDesc("outpost_telemetry_write_errors_total",
		"Failed queue commits (disk full, I/O errors) since the agent started.", nil, nil)
	descLastSeq = prometheus.NewDesc("outpost_telemetry_last_sequence",
		"Highest sequence number kept.", nil, nil)
	descLastAck = prometheus.NewDesc("outpost_telemetry_last_ack_timestamp_seconds",
		"When the broker last acknowledged a batch (0 if never since start).", nil, nil)
)

type metricsCollector struct{ q *Queue }

func (metricsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDepth, descBytes, descOldest, descDropped, descPublished,
		descQuarantined, descWriteErrors, descLastSeq, descLastAck} {
		ch <- d
	}
}

func (c metricsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.q.Stats()
	for p, n := range s.DepthByPriority {
		ch <- prometheus.MustNewConstMetric(descDepth, prometheus.GaugeValue, float64(n), protocol.Priority(p).String())
	}
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, s.OldestAge.Seconds())
	for _, r := range protocol.DropReasons {
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(s.Dropped[r]), r.String())
	}
	ch <- prometheus.MustNewConstMetric(descPublished, prometheus.CounterValue, float64(s.Published))
	ch <- prometheus.MustNewConstMetric(descQuarantined, prometheus.GaugeValue, float64(s.Quarantined))
	ch <- prometheus.MustNewConstMetric(descWriteErrors, prometheus.CounterValue, float64(s.WriteErrors))
	ch <- prometheus.MustNewConstMetric(descLastSeq, prometheus.GaugeValue, float64(s.LastSeq))
	var ack float64
	if !s.LastAck.IsZero() {
		ack = float64(s.LastAck.UnixNano()) / 1e9
	}
	ch <- prometheus.MustNewConstMetric(descLastAck, prometheus.GaugeValue, ack)
}
