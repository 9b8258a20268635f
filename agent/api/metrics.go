package api

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/outpost-edge/outpost/internal/buildinfo"
)

// metrics are the API's Prometheus series.
//
// Latency is two histograms that do not overlap: the whole request
// (outpost_request_duration_seconds, body reading and encoding included)
// and the model's part split into its phases
// (outpost_inference_phase_seconds{phase="queue"|"invoke"}), so a sum over
// phases is never a sum of a total with its own parts. Both carry the
// version that served.
type metrics struct {
	handler  http.Handler
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	phases   *prometheus.HistogramVec
	inflight prometheus.Gauge
}

// latencyBuckets span 100µs to 10s: an edge model's invoke is around 1 ms.
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2.5, 14)

func newMetrics(reg *prometheus.Registry, b Backend, version string) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "outpost_requests_total",
			Help: "Inference requests by model, version, protocol (v2, tfserving, grpc) and HTTP status code (for gRPC the status the same outcome gets over HTTP).",
		}, []string{"model", "version", "protocol", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "outpost_request_duration_seconds",
			Help:    "Whole successful inference requests, from the first byte read to the last written, by model and version.",
			Buckets: latencyBuckets,
		}, []string{"model", "version"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "outpost_inference_phase_seconds",
			Help:    "The model's part of successful inference requests by phase: queue (waiting for an interpreter) and invoke (running the model).",
			Buckets: latencyBuckets,
		}, []string{"model", "version", "phase"}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "outpost_inflight_requests",
			Help: "Inference requests being served now.",
		}),
	}
	bi := buildinfo.Read(version)
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "outpost_build_info",
		Help:        "The agent's build (always 1): its version, commit and Go version.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "commit": bi.Commit, "goversion": bi.GoVersion},
	})
	build.Set(1)
	reg.MustRegister(m.requests, m.duration, m.phases, m.inflight, build, modelCollector{b},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.handler = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return m
}

// modelCollector reports the served models at scrape time.
type modelCollector struct{ b Backend }

var (
	modelInfoDesc = prometheus.NewDesc("outpost_model_info",
		"Served models (always 1) with their version, digest and the delegate in use.",
		[]string{"model", "version", "digest", "delegate"}, nil)
	modelNodesDesc = prometheus.NewDesc("outpost_model_delegated_nodes",
		"Graph nodes the model's delegate runs.", []string{"model", "delegate"}, nil)
	modelWorkersDesc = prometheus.NewDesc("outpost_model_workers",
		"Interpreters in the model's pool.", []string{"model"}, nil)
)

func (c modelCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- modelInfoDesc
	ch <- modelNodesDesc
	ch <- modelWorkersDesc
}

func (c modelCollector) Collect(ch chan<- prometheus.Metric) {
	for _, e := range c.b.List() {
		v := strconv.FormatInt(e.Version, 10)
		ch <- prometheus.MustNewConstMetric(modelInfoDesc, prometheus.GaugeValue, 1, e.Name, v, e.Digest, e.Delegate)
		ch <- prometheus.MustNewConstMetric(modelNodesDesc, prometheus.GaugeValue, float64(e.DelegatedNodes), e.Name, e.Delegate)
		ch <- prometheus.MustNewConstMetric(modelWorkersDesc, prometheus.GaugeValue, float64(e.Workers), e.Name)
	}
}
