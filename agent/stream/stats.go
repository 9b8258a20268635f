package stream

import (
	"maps"

	"github.com/prometheus/client_golang/prometheus"
)

// Stats are a stream's counters since it started.
type Stats struct {
	Received  uint64 // messages delivered by the broker
	Results   uint64 // inferences that succeeded
	Published uint64 // results and errors the broker took
	// PublishErrors counts results given up: unpublished when the stream
	// stopped, or after repeated failures on live connections.
	PublishErrors uint64
	// Republished counts publications made again on a new connection
	// because the one they were sent on dropped (or was dropped for want
	// of a PUBACK) before the broker acknowledged them: the subscriber may
	// have received those twice, with the same id.
	Republished uint64
	// Dropped counts messages dropped unread, by reason: queue_full (the
	// overflow policy), too_large, shutdown (waiting when the stream
	// stopped).
	Dropped map[string]uint64
	// Errors counts messages or windows that failed, by code (bad_input,
	// model_not_found, overload, canceled, internal).
	Errors map[string]uint64
	// Queue is the messages waiting now and their bytes; QueuePeakBytes the
	// most bytes that ever waited.
	Queue, QueueBytes, QueuePeakBytes int64
	Connected                         bool
}

// Stats returns the stream's counters.
func (s *Stream) Stats() Stats {
	n, b, peak := s.q.depth()
	st := Stats{
		Received: s.seq.Load(), Results: s.results.Load(), Published: s.published.Load(),
		PublishErrors: s.pubErrors.Load(), Republished: s.republished.Load(), Queue: int64(n), QueueBytes: b, QueuePeakBytes: peak,
		Connected: s.connected.Load(),
	}
	s.mu.Lock()
	st.Dropped, st.Errors = maps.Clone(s.dropped), maps.Clone(s.errors)
	s.mu.Unlock()
	return st
}

var (
	descReceived = prometheus.NewDesc("outpost_stream_messages_total",
		"Messages the broker delivered to the stream.", []string{"stream"}, nil)
	descResults = prometheus.NewDesc("outpost_stream_results_total",
		"Successful inferences of the stream.", []string{"stream"}, nil)
	descDropped = prometheus.NewDesc("outpost_stream_dropped_total",
		"Messages dropped unread, by reason: queue_full (the overflow policy), too_large, shutdown.", []string{"stream", "reason"}, nil)
	descErrors = prometheus.NewDesc("outpost_stream_errors_total",
		"Messages or windows that failed, by code.", []string{"stream", "code"}, nil)
	descPubErrors = prometheus.NewDesc("outpost_stream_publish_errors_total",
		"Results given up unpublished (at stop, or after repeated failures on live connections).", []string{"stream"}, nil)
	descRepublished = prometheus.NewDesc("outpost_stream_republished_total",
		"Results published again on a new connection because the broker's acknowledgement did not come on the old one (the subscriber may see them twice).", []string{"stream"}, nil)
	descQueue = prometheus.NewDesc("outpost_stream_queue_messages",
		"Messages waiting for inference.", []string{"stream"}, nil)
	descQueueBytes = prometheus.NewDesc("outpost_stream_queue_bytes",
		"Bytes of the messages waiting for inference.", []string{"stream"}, nil)
	descConnected = prometheus.NewDesc("outpost_stream_connected",
		"1 while the stream's broker connection is up.", []string{"stream"}, nil)
)

// dropReasons are always exported, so a rate() sees the first drop.
var dropReasons = []string{"queue_full", "too_large", "shutdown"}

// Collector exports the streams' Stats on every scrape.
func Collector(streams ...*Stream) prometheus.Collector { return collector(streams) }

type collector []*Stream

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReceived, descResults, descDropped, descErrors, descPubErrors, descRepublished, descQueue, descQueueBytes, descConnected} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c {
		st, name := s.Stats(), s.Name()
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{name}, labels...)...)
		}
		counter(descReceived, st.Received)
		counter(descResults, st.Results)
		counter(descPubErrors, st.PublishErrors)
		counter(descRepublished, st.Republished)
		for _, r := range dropReasons {
			counter(descDropped, st.Dropped[r], r)
		}
		for code, n := range st.Errors {
			counter(descErrors, n, code)
		}
		connected := 0.0
		if st.Connected {
			connected = 1
		}
		ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(st.Queue), name)
		ch <- prometheus.MustNewConstMetric(descQueueBytes, prometheus.GaugeValue, float64(st.QueueBytes), name)
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, connected, name)
	}
}
