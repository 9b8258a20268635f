package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"

	"github.com/outpost-edge/outpost/agent/api"
	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/config"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/telemetry"
	"github.com/outpost-edge/outpost/agent/tensor"
	"github.com/outpost-edge/outpost/protocol"
)

// newFleetLink builds the device's one connection to the fleet's broker, or
// returns nil without a fleet. Its client id is the device id.
func newFleetLink(cfg config.Config, log *slog.Logger) (*fleetlink.Link, error) {
	f := cfg.Fleet
	if !f.Linked() {
		return nil, nil
	}
	opts := fleetlink.Options{
		Broker:       f.Broker,
		Brokers:      f.Brokers,
		Fleet:        f.Name,
		Device:       f.Device,
		Username:     f.Username,
		CleanSession: f.CleanSession,
		Logger:       log,
	}
	var err error
	if opts.Password, err = readSecret("fleet: password", f.PasswordFile); err != nil {
		return nil, err
	}
	if opts.TLSConfig, err = tlsConfig(f); err != nil {
		return nil, err
	}
	return fleetlink.New(opts)
}

// tlsConfig builds the broker connection's TLS settings from files: nil when
// none are given (ssl:// then trusts the system's roots).
func tlsConfig(f config.Fleet) (*tls.Config, error) {
	if f.CAFile == "" && f.CertFile == "" {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("fleet: ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("fleet: ca_file %s holds no PEM certificate", f.CAFile)
		}
	}
	if f.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("fleet: client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// newQueue opens the telemetry queue under the data dir; nil when telemetry
// is off or there is nowhere to keep it. Its health records name the model
// being served (servingModel).
func newQueue(cfg config.Config, link *fleetlink.Link, current func() protocol.ModelRef, log *slog.Logger) (*telemetry.Queue, error) {
	t := cfg.Telemetry
	if t.Disabled || cfg.DataDir == "" {
		return nil, nil
	}
	opts := telemetry.Options{
		Path:              filepath.Join(cfg.DataDir, "telemetry.db"),
		MaxBytes:          t.MaxBytes,
		MaxAge:            t.MaxAge,
		SampleRate:        t.SampleRate,
		AggregateInterval: t.AggregateInterval,
		HealthInterval:    t.HealthInterval,
		CurrentModel:      current,
		Logger:            log.With("component", "telemetry"),
	}
	if link != nil { // a nil *Link in the interface would look like a link
		opts.Link, opts.Topic = link, link.Topics().Events
	}
	return telemetry.New(opts)
}

// servingModel names the model a health record concerns: the one served or,
// with several, the first by name; empty when none is loaded.
func (a *Agent) servingModel() protocol.ModelRef {
	if es := a.registry.List(); len(es) > 0 {
		return modelRef(es[0])
	}
	return protocol.ModelRef{}
}

// sampleBytes bounds each tensor kept in a prediction sample.
const sampleBytes = 4 << 10

// inferenceTelemetry turns answered requests into telemetry: every one into
// its model's aggregates, and a sample of them (at the configured rate) into
// sample records and the per-input statistics. Summing every input element
// of every request would cost more than the invoke on small models; a
// sample costs nothing on the others. For a model whose signed manifest
// has a reference profile, every answered request also adds its features
// (profile.Extractor, which reads at most profile.MaxSampled elements per
// tensor) to the aggregate's feature histograms: that is what drift
// detection compares with the reference.
type inferenceTelemetry struct {
	q    *telemetry.Queue
	refs *references
}

func (t inferenceTelemetry) ObserveInference(in *api.Inference) {
	if in.Model.Name == "" {
		return // no such model: nothing to account it to
	}
	ref := modelRef(in.Model)
	o := telemetry.Observation{Model: ref, Latency: in.Latency, ErrCode: errCode(in.Code)}
	if in.Inputs != nil && t.q.ShouldSample() {
		o.Inputs = summarize(in.Inputs)
		s := &protocol.Sample{Latency: in.Latency, Inputs: samples(in.Inputs), Outputs: samples(in.Outputs)}
		if in.Err != nil {
			s.Error = in.Err.Error()
		}
		t.q.Record(protocol.Record{Kind: protocol.KindSample, Model: ref, Sample: s})
	}
	observeFeatures(t.q, t.refs, in.Model, o, in.Inputs, in.Outputs)
}

// trialTelemetry turns a candidate's trial into its telemetry
// (docs/PROTOCOL.md, Trials): in shadow, the copies sent to it make its
// shadow aggregate (the candidate's answers: latency, errors, inputs and
// features, with the serving version's latency on the same requests and
// the outputs' agreement); in canary, a request it failed and the serving
// version answered counts as a failed request of the candidate.
type trialTelemetry struct {
	q    *telemetry.Queue
	refs *references
}

func (t trialTelemetry) ObserveCanaryFailure(f *serving.CanaryFailure) {
	code := "internal"
	if errors.Is(f.Err, catalog.ErrOverloaded) {
		code = "overload"
	}
	t.q.Observe(telemetry.Observation{Model: modelRef(f.Candidate), Latency: f.Invoke, ErrCode: code})
}

func (t trialTelemetry) ObserveShadow(r *serving.ShadowResult) {
	if r.Candidate.Name == "" {
		return
	}
	sh := &telemetry.ShadowObservation{Baseline: strconv.FormatInt(r.Baseline.Version, 10), Dropped: r.Dropped}
	o := telemetry.Observation{Model: modelRef(r.Candidate), Shadow: sh}
	if r.Dropped {
		t.q.Observe(o)
		return
	}
	o.Latency, sh.BaselineLatency = r.CandidateInvoke, r.BaselineInvoke
	if r.Err != nil {
		o.ErrCode = "internal"
		if errors.Is(r.Err, catalog.ErrBadInput) {
			o.ErrCode = "bad_input"
		}
	}
	sh.Outputs = make([]telemetry.OutputComparison, len(r.Agreement))
	for i, a := range r.Agreement {
		sh.Outputs[i] = telemetry.OutputComparison{Name: a.Name, Compared: a.Compared, MaxAbsDiff: a.MaxAbsDiff, MeanAbsDiff: a.MeanAbsDiff,
			Top1Rows: uint64(a.Top1Rows), Top1Agree: uint64(a.Top1Agree)}
	}
	if r.Inputs != nil && t.q.ShouldSample() {
		o.Inputs = summarize(r.Inputs)
	}
	observeFeatures(t.q, t.refs, r.Candidate, o, r.Inputs, r.Outputs)
}

// observeFeatures hands o to the queue, with the request's features when
// it was answered and the model e has a reference profile.
func observeFeatures(q *telemetry.Queue, refs *references, e catalog.Entry, o telemetry.Observation, ins, outs []tensor.Tensor) {
	if o.ErrCode == "" && ins != nil && outs != nil {
		if r := refs.lookup(e); r != nil && r.features(ins, outs, func(vals []float64) {
			o.Reference, o.Features = r.p, vals
			q.Observe(o)
		}) {
			return
		}
	}
	q.Observe(o)
}

func modelRef(e catalog.Entry) protocol.ModelRef {
	return protocol.ModelRef{Name: e.Name, Version: strconv.FormatInt(e.Version, 10), Digest: e.Digest}
}

// errCode is the short code telemetry counts errors by.
func errCode(status int) string {
	switch {
	case status == http.StatusOK:
		return ""
	case status == http.StatusServiceUnavailable:
		return "overload"
	case status == 499:
		return "canceled"
	case status >= 400 && status < 500:
		return "bad_input"
	}
	return "internal"
}

func summarize(ts []tensor.Tensor) []telemetry.InputSummary {
	out := make([]telemetry.InputSummary, 0, len(ts))
	for _, t := range ts {
		s := telemetry.InputSummary{Name: t.Name}
		if tensor.Each(t.DataType, t.Data, s.Add) {
			out = append(out, s)
		}
	}
	return out
}

func samples(ts []tensor.Tensor) []protocol.TensorSample {
	out := make([]protocol.TensorSample, len(ts))
	for i, t := range ts {
		data := t.Data
		if len(data) > sampleBytes {
			data = data[:sampleBytes]
		}
		shape := make([]int64, len(t.Shape))
		for j, d := range t.Shape {
			shape[j] = int64(d)
		}
		out[i] = protocol.TensorSample{Name: t.Name, Datatype: string(t.DataType), Shape: shape,
			Data: append([]byte(nil), data...), Truncated: len(data) < len(t.Data)}
	}
	return out
}
