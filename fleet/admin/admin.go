// Package admin is the fleet controller's JSON admin API (default
// 127.0.0.1:8490): models, devices and rollouts, behind bearer tokens with
// roles (auth.go), optionally over TLS, every change recorded in the
// registry's audit log. The outpost-fleet client commands talk to it;
// docs/API.md ("Fleet admin API") describes it.
package admin

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/drift"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/internal/ratelimit"
	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
)

// DefaultAddr is where the admin API listens unless told.
const DefaultAddr = "127.0.0.1:8490"

// Limits on request bodies.
const (
	maxJSONBody    = 1 << 20
	maxReleaseSize = 8 << 20
	// MaxModelSize bounds an uploaded model.
	MaxModelSize = 2 << 30
)

// Options for New. Registry, Engine and Root are required.
type Options struct {
	Addr     string
	Registry *registry.Registry
	Engine   *rollout.Engine
	// Root verifies pushed releases: the controller stores only versions
	// its own trust root accepts.
	Root *trust.Root
	// ChunkSize for pushed artifacts; 0 means registry.DefaultChunkSize.
	ChunkSize int
	// DriftThresholds are the drift monitor's, shown with drift reports
	// (zero: drift.Defaults).
	DriftThresholds drift.Thresholds
	// Fleet names the fleet (default "default"); enrolled device names
	// must fit its topics.
	Fleet string
	// Broker is the MQTT broker URL enrolments name (Credential.Broker).
	Broker string
	// Brokers are more broker URLs after Broker, the other nodes of a
	// clustered broker, in the order devices try them (Credential.Brokers).
	Brokers []string
	// Disconnect, if set, cuts off a device whose credential is revoked
	// or replaced (the embedded broker).
	Disconnect Disconnecter
	// Stats, if set, is served at GET /v1/stats.
	Stats func() any
	// Alerts, if set, lists the webhook outbox at GET /v1/alerts/deliveries.
	Alerts Deliveries
	// Metrics, if set, is served at GET /metrics (Prometheus text format;
	// a viewer token, like every GET).
	Metrics http.Handler
	// Console, if set, is served at /console/ (and / redirects there)
	// without authentication: the web console's static assets, which
	// call this API with the user's token.
	Console http.Handler
	// TLS, if set, serves the API over TLS (its Certificates).
	TLS *tls.Config
	// FailedAuthBurst failed authentications are let through (401) per
	// client address before the rest get 429, refilled at FailedAuthRate
	// per second. 0 means 10 and 10 a minute.
	FailedAuthBurst int
	FailedAuthRate  float64
	// DrainTimeout bounds the wait for requests in flight at shutdown (a
	// model push of up to MaxModelSize among them); 0 means 2 minutes.
	DrainTimeout time.Duration
	Logger       *slog.Logger
	Now          func() time.Time
}

// Server is the admin API.
type Server struct {
	opts    Options
	log     *slog.Logger
	ln      net.Listener
	mux     *http.ServeMux
	handler http.Handler
	fails   *ratelimit.PerKey
	// locked is set once a token is known to exist: bootstrap is over.
	locked  atomic.Bool
	summary summaryCache // GET /v1/overview's (console.go)
}

// New opens the listener (so Addr is known before Run).
func New(opts Options) (*Server, error) {
	if opts.Registry == nil || opts.Engine == nil || opts.Root == nil {
		return nil, errors.New("admin: Registry, Engine and Root are required")
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Fleet == "" {
		opts.Fleet = "default"
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 2 * time.Minute
	}
	if opts.FailedAuthBurst <= 0 {
		opts.FailedAuthBurst = 10
	}
	if opts.FailedAuthRate <= 0 {
		opts.FailedAuthRate = 10.0 / 60
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	s := &Server{opts: opts, log: opts.Logger, ln: ln, mux: http.NewServeMux(),
		fails: ratelimit.New(opts.FailedAuthRate, opts.FailedAuthBurst, opts.Now)}
	s.routes()
	s.handler = s.withAuth(s.mux)
	return s, nil
}

// Addr is the listening address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Handler returns the API's handler, auth included.
func (s *Server) Handler() http.Handler { return s.handler }

// logMode says at start whether the API is in bootstrap mode and warns
// when it is reachable from the network in clear.
func (s *Server) logMode() {
	boot, err := s.bootstrap()
	if err != nil {
		s.log.Error("admin api: cannot read tokens", "err", err)
		return
	}
	if boot {
		s.log.Info("admin api in bootstrap mode: no token exists, requests without one are accepted from loopback only (actor local); create one with outpost-fleet tokens create")
	}
	if w := exposure(s.Addr(), s.opts.TLS != nil, boot); w != "" {
		s.log.Warn(w, "addr", s.Addr())
	}
}

// exposure is the warning for an API listening on addr, or "" when it is
// on loopback or speaks TLS.
func exposure(addr string, tlsOn, boot bool) string {
	switch {
	case isLoopback(addr) || tlsOn:
		return ""
	case boot:
		return "ADMIN API EXPOSED: it listens on a non-loopback address without TLS and no token exists; create a token and configure admin_tls"
	default:
		return "ADMIN API WITHOUT TLS on a non-loopback address: tokens travel in clear; configure admin_tls"
	}
}

// Run serves until ctx is cancelled, then stops accepting, lets requests in
// flight (a model push still uploading) finish within DrainTimeout, and
// returns nil on a clean drain. Requests do not see ctx's cancellation: the
// caller keeps what they use (the registry) open until Run returns.
func (s *Server) Run(ctx context.Context) error {
	srv := &http.Server{
		Handler:           s.handler,
		TLSConfig:         s.opts.TLS,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() {
		if s.opts.TLS != nil {
			errc <- srv.ServeTLS(s.ln, "", "")
			return
		}
		errc <- srv.Serve(s.ln)
	}()
	s.log.Info("admin api listening", "addr", s.Addr(), "tls", s.opts.TLS != nil)
	if s.opts.Console != nil {
		scheme := "http"
		if s.opts.TLS != nil {
			scheme = "https"
		}
		s.log.Info("web console", "url", scheme+"://"+s.Addr()+"/console/")
	}
	s.logMode()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: %w", err)
	case <-ctx.Done():
	}
	drain, cancel := context.WithTimeout(context.Background(), s.opts.DrainTimeout)
	defer cancel()
	err := srv.Shutdown(drain)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return fmt.Errorf("admin: %w", serr)
	}
	if err != nil {
		srv.Close()
		return fmt.Errorf("admin: drain: %w", err)
	}
	return nil
}

// ctxReader stops reading once ctx is done: a push whose client went away
// (or whose server gave up draining) ends instead of reading on.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	s.mux.HandleFunc("GET /v1/models", s.listModels)
	s.mux.HandleFunc("POST /v1/models", s.pushModel)
	s.mux.HandleFunc("GET /v1/devices", s.listDevices)
	s.mux.HandleFunc("GET /v1/devices/{id}", s.getDevice)
	s.mux.HandleFunc("GET /v1/devices/{id}/updates", s.deviceUpdates)
	s.mux.HandleFunc("GET /v1/overview", s.overview)
	s.mux.HandleFunc("GET /v1/whoami", s.whoami)
	s.mux.HandleFunc("GET /v1/devices/{id}/health", s.deviceHealth)
	s.mux.HandleFunc("GET /v1/devices/{id}/audit", s.deviceAudit)
	s.mux.HandleFunc("POST /v1/devices/{id}/credential", s.enroll)
	s.mux.HandleFunc("DELETE /v1/devices/{id}/credential", s.revoke)
	s.mux.HandleFunc("GET /v1/rollouts", s.listRollouts)
	s.mux.HandleFunc("POST /v1/rollouts", s.createRollout)
	s.mux.HandleFunc("GET /v1/rollouts/{id}", s.getRollout)
	s.mux.HandleFunc("GET /v1/rollouts/{id}/devices", s.rolloutDevices)
	s.mux.HandleFunc("POST /v1/rollouts/{id}/{action}", s.rolloutAction)
	s.mux.HandleFunc("POST /v1/tokens", s.createToken)
	s.mux.HandleFunc("GET /v1/tokens", s.listTokens)
	s.mux.HandleFunc("DELETE /v1/tokens/{id}", s.revokeToken)
	s.mux.HandleFunc("GET /v1/audit", s.getAudit)
	s.mux.HandleFunc("GET /v1/alerts/deliveries", s.alertDeliveries)
	s.mux.HandleFunc("GET /v1/models/{name}/metrics", s.modelMetrics)
	s.mux.HandleFunc("GET /v1/models/{name}/drift", s.modelDrift)
	s.mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Metrics == nil {
			writeError(w, http.StatusNotFound, errors.New("no metrics"))
			return
		}
		s.opts.Metrics.ServeHTTP(w, r)
	})
	s.mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Stats == nil {
			writeError(w, http.StatusNotFound, errors.New("no stats"))
			return
		}
		writeJSON(w, http.StatusOK, s.opts.Stats())
	})
	if s.opts.Console != nil {
		s.mux.Handle("GET /console/", s.opts.Console)
		s.mux.Handle("GET /{$}", http.RedirectHandler("/console/", http.StatusFound))
	}
}

// ModelInfo is a model version as the API lists it (without the release
// bytes).
type ModelInfo struct {
	Name      string    `json:"name"`
	Version   int64     `json:"version"`
	SHA256    string    `json:"sha256"`
	Length    int64     `json:"length"`
	ChunkSize int       `json:"chunk_size"`
	Serial    int64     `json:"serial"`
	Expires   time.Time `json:"expires"`
	Created   time.Time `json:"created"`
}

func info(m *registry.ModelVersion) ModelInfo {
	return ModelInfo{Name: m.Name, Version: m.Version, SHA256: m.SHA256, Length: m.Length, ChunkSize: m.ChunkSize,
		Serial: m.Serial, Expires: m.Expires, Created: m.Created}
}

func (s *Server) listModels(w http.ResponseWriter, r *http.Request) {
	ms, err := s.opts.Registry.Models()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	out := make([]ModelInfo, 0, len(ms))
	for i := range ms {
		out = append(out, info(&ms[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

// pushModel takes multipart/form-data with a "release" part (the signed
// release.json of a bundle) followed by a "model" part (the .tflite bytes).
// The release is verified against the controller's root and the model
// streamed to disk through the manifest's checks.
func (s *Server) pushModel(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxModelSize+maxReleaseSize+1<<20)
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		writeError(w, http.StatusBadRequest, errors.New("want multipart/form-data with release and model parts"))
		return
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	var release []byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			writeError(w, http.StatusBadRequest, errors.New("no model part"))
			return
		}
		if err != nil {
			writeError(w, statusOf(err), fmt.Errorf("read upload: %w", err))
			return
		}
		switch p.FormName() {
		case "release":
			release, err = io.ReadAll(io.LimitReader(p, maxReleaseSize+1))
			if err != nil || len(release) > maxReleaseSize {
				writeError(w, http.StatusRequestEntityTooLarge, errors.New("release too large"))
				return
			}
		case "model":
			if release == nil {
				writeError(w, http.StatusBadRequest, errors.New("the release part must come before the model part"))
				return
			}
			mv, err := s.opts.Registry.PutModel(s.opts.Root, release, ctxReader{r.Context(), p}, s.opts.ChunkSize, s.opts.Now())
			if err != nil {
				writeError(w, statusOf(err), err)
				return
			}
			writeJSON(w, http.StatusCreated, info(mv))
			return
		}
	}
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) {
	if paged(r) {
		s.listDevicesPage(w, r)
		return
	}
	ds, err := s.opts.Registry.Devices()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if ds == nil {
		ds = []registry.Device{}
	}
	writeJSON(w, http.StatusOK, ds)
}

func (s *Server) getDevice(w http.ResponseWriter, r *http.Request) {
	d, err := s.opts.Registry.Device(r.PathValue("id"))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, d)
}

// RolloutRequest is the body of POST /v1/rollouts.
type RolloutRequest struct {
	Model    string            `json:"model"`
	Version  int64             `json:"version"`
	Selector map[string]string `json:"selector,omitempty"`
	Waves    []int             `json:"waves,omitempty"`
	// MaxFailureRatio: nil means 0.1.
	MaxFailureRatio *float64 `json:"max_failure_ratio,omitempty"`
	MinSuccesses    int      `json:"min_successes,omitempty"`
	// Bake is a Go duration ("5m"); empty means none.
	Bake string `json:"bake,omitempty"`
	// RequireVerified counts only verified commits as a wave's successes.
	RequireVerified bool `json:"require_verified,omitempty"`
	// ProbationMinRequests and ProbationMax (a Go duration, whole
	// seconds) go into every install command, overriding the devices' own
	// probation; zero and empty keep the devices' settings.
	ProbationMinRequests int64  `json:"probation_min_requests,omitempty"`
	ProbationMax         string `json:"probation_max,omitempty"`
	// WaveTimeout (a Go duration) ends a wave's wait for evidence as
	// OnWaveTimeout says ("halt", the default, or "continue"); empty waits
	// forever.
	WaveTimeout   string `json:"wave_timeout,omitempty"`
	OnWaveTimeout string `json:"on_wave_timeout,omitempty"`
	// RatePerMinute limits the installs sent to this many devices a
	// minute (0: no limit). RateFactor and RateEvery ramp it: multiplied
	// by RateFactor every RateEvery successes, up to RateMax (0: no cap).
	RatePerMinute int     `json:"rate_per_minute,omitempty"`
	RateFactor    float64 `json:"rate_factor,omitempty"`
	RateEvery     int     `json:"rate_every,omitempty"`
	RateMax       int     `json:"rate_max,omitempty"`
	// Shadow and Canary are the trial phases of each wave; absent: none.
	Shadow *PhaseRequest `json:"shadow,omitempty"`
	Canary *PhaseRequest `json:"canary,omitempty"`
	// Analysis judges the phases and the waves (durations in nanoseconds,
	// as analysis.Config encodes them); absent: no analysis, or the
	// controller's default for a rollout with phases.
	Analysis *analysis.Config `json:"analysis,omitempty"`
}

// PhaseRequest is a shadow or canary phase: the share of requests, above 0
// and at most 100, and how long the window lasts (a Go duration, "15m").
type PhaseRequest struct {
	Percent  float64 `json:"percent"`
	Duration string  `json:"duration"`
}

// phase parses a phase of a request named name.
func (p *PhaseRequest) phase(name string) (*registry.TrialPhase, error) {
	if p == nil {
		return nil, nil
	}
	d, err := time.ParseDuration(p.Duration)
	if err != nil || d <= 0 {
		return nil, fmt.Errorf("%s duration %q: want a positive duration", name, p.Duration)
	}
	return &registry.TrialPhase{Percent: p.Percent, Duration: d}, nil
}

func (s *Server) createRollout(w http.ResponseWriter, r *http.Request) {
	var req RolloutRequest
	if err := readJSON(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	spec := rollout.Spec{Model: req.Model, Version: req.Version, Selector: req.Selector, Waves: req.Waves,
		MaxFailureRatio: -1, MinSuccesses: req.MinSuccesses, RequireVerified: req.RequireVerified, OnWaveTimeout: req.OnWaveTimeout,
		Rate: registry.Rate{PerMinute: req.RatePerMinute, Factor: req.RateFactor, Every: req.RateEvery, Max: req.RateMax}}
	if req.MaxFailureRatio != nil {
		spec.MaxFailureRatio = *req.MaxFailureRatio
		if spec.MaxFailureRatio < 0 {
			writeError(w, http.StatusBadRequest, errors.New("max_failure_ratio must be in [0, 1]"))
			return
		}
	}
	if req.Bake != "" {
		d, err := time.ParseDuration(req.Bake)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("bake: %w", err))
			return
		}
		spec.Bake = d
	}
	if req.WaveTimeout != "" {
		d, err := time.ParseDuration(req.WaveTimeout)
		if err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("wave_timeout %q: want a positive duration", req.WaveTimeout))
			return
		}
		spec.WaveTimeout = d
	}
	if req.ProbationMinRequests != 0 || req.ProbationMax != "" {
		spec.Probation = &protocol.Probation{MinRequests: req.ProbationMinRequests}
		if req.ProbationMax != "" {
			d, err := time.ParseDuration(req.ProbationMax)
			if err != nil || d < time.Second || d%time.Second != 0 {
				writeError(w, http.StatusBadRequest, fmt.Errorf("probation_max %q: want whole seconds, at least 1s", req.ProbationMax))
				return
			}
			spec.Probation.MaxSeconds = int64(d / time.Second)
		}
	}
	var err error
	if spec.Shadow, err = req.Shadow.phase("shadow"); err == nil {
		spec.Canary, err = req.Canary.phase("canary")
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	spec.Analysis = req.Analysis
	ro, err := s.opts.Engine.Create(spec)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	rep, err := s.opts.Engine.Status(ro.ID)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusCreated, rep)
}

func (s *Server) listRollouts(w http.ResponseWriter, r *http.Request) {
	ros, err := s.rolloutsFor(r)
	if errors.Is(err, registry.ErrInvalidQuery) {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	out := []*rollout.Report{}
	for _, ro := range ros {
		rep, err := s.opts.Engine.Status(ro.ID)
		if err != nil {
			writeError(w, statusOf(err), err)
			return
		}
		out = append(out, rep)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) getRollout(w http.ResponseWriter, r *http.Request) {
	rep, err := s.opts.Engine.Status(r.PathValue("id"))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (s *Server) rolloutDevices(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.opts.Registry.Rollout(id); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	as, err := s.opts.Registry.Assignments(id)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	if as == nil {
		as = []registry.Assignment{}
	}
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("limit %q: want a positive number", l))
			return
		}
		as = as[:min(n, len(as))]
	}
	writeJSON(w, http.StatusOK, as)
}

func (s *Server) rolloutAction(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	var err error
	switch r.PathValue("action") {
	case "pause":
		_, err = s.opts.Engine.Pause(id)
	case "resume":
		_, err = s.opts.Engine.Resume(id)
	case "abort":
		var body struct {
			Reason string `json:"reason"`
		}
		if r.ContentLength != 0 {
			if err := readJSON(w, r, &body); err != nil {
				writeError(w, http.StatusBadRequest, err)
				return
			}
		}
		_, err = s.opts.Engine.Abort(id, body.Reason)
	default:
		writeError(w, http.StatusNotFound, fmt.Errorf("unknown action %q (pause, resume, abort)", r.PathValue("action")))
		return
	}
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	rep, err := s.opts.Engine.Status(id)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// statusOf maps errors to HTTP statuses.
func statusOf(err error) int {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, registry.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, registry.ErrExists), errors.Is(err, rollout.ErrState):
		return http.StatusConflict
	case errors.Is(err, rollout.ErrInvalid), errors.Is(err, dsse.ErrThreshold), errors.Is(err, dsse.ErrMalformed),
		errors.Is(err, dsse.ErrPayloadType), errors.Is(err, trust.ErrExpired), errors.Is(err, trust.ErrInvalid),
		errors.Is(err, manifest.ErrInvalid), errors.Is(err, manifest.ErrDigest), errors.Is(err, manifest.ErrTooLong),
		errors.Is(err, manifest.ErrTooShort):
		return http.StatusBadRequest
	default:
		return http.StatusInternalServerError
	}
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	r.Body = http.MaxBytesReader(w, r.Body, maxJSONBody)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad JSON body: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
