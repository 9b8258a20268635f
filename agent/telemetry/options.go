package telemetry

import (
	"context"
	"log/slog"
	"time"

	"github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/protocol"
)

// Link is the device's connection to the fleet as the uplink uses it;
// fleetlink.Link implements it.
type Link interface {
	// Publish sends payload on topic with QoS 1 and returns nil only once
	// the broker has acknowledged it (PUBACK). An error wrapping
	// fleetlink.ErrNotConnected means nothing was sent; any other error means
	// the payload may or may not have reached the broker. The uplink calls it
	// from one goroutine at a time, never retained; it must return soon after
	// ctx is done, and must not keep payload after it returned nil.
	Publish(ctx context.Context, topic string, retained bool, payload []byte) error
	// Up returns a channel that is closed when the next connection comes up,
	// so the uplink resumes at once instead of at its next retry. It is safe
	// for concurrent use.
	Up() <-chan struct{}
}

// Clock is the time source of the queue and the uplink: ages, intervals,
// backoff, the final flush. Tests inject one; nil means the real clock.
type Clock = backoff.Clock

// Options configures a Queue. The zero value of every field but Path works.
type Options struct {
	// Path is the bbolt queue file, for example <data dir>/telemetry.db.
	Path string
	// Link delivers batches, on Topic (the device's events topic). Nil keeps
	// records on disk without sending.
	Link  Link
	Topic string

	// MaxBytes bounds the bytes of queued records (their bodies plus a fixed
	// per-record overhead; the file itself is larger by bbolt's page slack and
	// never shrinks). Default 64 MiB.
	MaxBytes int64
	// MaxAge drops low and normal priority records older than this. Default
	// 7 days; negative means no limit.
	MaxAge time.Duration
	// Buffer is the capacity of the hand-off channel. Default 16384.
	Buffer int
	// MaxGroup bounds the records committed in one transaction. Default 8192.
	MaxGroup int

	// BatchRecords, BatchBytes and BatchDelay bound a batch: it is sent when it
	// has BatchRecords records or BatchBytes bytes, or when its oldest record
	// has waited BatchDelay. Defaults 1000, 256 KiB and 1 s.
	BatchRecords int
	BatchBytes   int
	BatchDelay   time.Duration
	// MaxAttempts is how many times the uplink tries a batch before it halves
	// it, and a single record before it quarantines it. Default 5.
	MaxAttempts int
	// RetryMin and RetryMax bound the jittered backoff between publish
	// attempts. Defaults 100 ms and 5 s.
	RetryMin, RetryMax time.Duration
	// QuarantineBytes bounds the quarantine bucket; the oldest entries go
	// first. Default 4 MiB.
	QuarantineBytes int64

	// SampleRate is the fraction of predictions ShouldSample picks. Default
	// 0.01; negative means none.
	SampleRate float64
	// AggregateInterval is how often the observations given to Observe are
	// written as one aggregate record per model. Default 1 min.
	AggregateInterval time.Duration
	// LatencyBounds are the latency histogram bounds in microseconds.
	// Default DefaultLatencyBounds.
	LatencyBounds []uint64
	// HealthInterval is how often a device health record is written. Default
	// 1 min; negative means never.
	HealthInterval time.Duration
	// CurrentModel, if set, names the model being served when a health
	// record is taken; the record carries it, so every record says which
	// model it concerns. It is called from the writer goroutine and must not
	// block.
	CurrentModel func() protocol.ModelRef
	// StaleAfter raises a health warning when records are waiting and the
	// oldest is older than this, so an agent that forwards nothing does not
	// look healthy. Default 15 min.
	StaleAfter time.Duration

	// Logger receives the queue's logs. Nil means silent.
	Logger *slog.Logger
	// Clock is the time source; nil means the real clock.
	Clock Clock
}

func (o *Options) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 64 << 20
	}
	if o.MaxAge == 0 {
		o.MaxAge = 7 * 24 * time.Hour
	}
	def(&o.Buffer, 16384)
	def(&o.MaxGroup, 8192)
	def(&o.BatchRecords, 1000)
	def(&o.BatchBytes, 256<<10)
	defDur(&o.BatchDelay, time.Second)
	def(&o.MaxAttempts, 5)
	defDur(&o.RetryMin, 100*time.Millisecond)
	defDur(&o.RetryMax, 5*time.Second)
	if o.QuarantineBytes <= 0 {
		o.QuarantineBytes = 4 << 20
	}
	if o.SampleRate == 0 {
		o.SampleRate = 0.01
	}
	defDur(&o.AggregateInterval, time.Minute)
	if len(o.LatencyBounds) == 0 {
		o.LatencyBounds = DefaultLatencyBounds
	}
	defDur(&o.StaleAfter, 15*time.Minute)
	if o.HealthInterval == 0 {
		o.HealthInterval = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Clock == nil {
		o.Clock = backoff.RealClock{}
	}
}
