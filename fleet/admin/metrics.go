package admin

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
)

// modelMetrics serves GET /v1/models/{name}/metrics?version=&device=&since=&until=&step=
// (docs/API.md): the model's traffic from the registry's time buckets.
func (s *Server) modelMetrics(w http.ResponseWriter, r *http.Request) {
	q, err := metricsQuery(r.PathValue("name"), r.URL.Query(), s.opts.Now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	m, err := s.opts.Registry.Metrics(q)
	if err != nil {
		status := statusOf(err)
		if errors.Is(err, registry.ErrInvalidQuery) {
			status = http.StatusBadRequest
		}
		writeError(w, status, err)
		return
	}
	writeJSON(w, http.StatusOK, m)
}

// metricsQuery reads the query string: since and until are RFC 3339 times
// or durations back from now (default since 1h, until now), step a Go
// duration (default from the range, registry.DefaultStep).
func metricsQuery(model string, v url.Values, now time.Time) (registry.MetricsQuery, error) {
	q := registry.MetricsQuery{Model: model, Version: v.Get("version"), Device: v.Get("device"),
		Since: now.Add(-time.Hour), Until: now}
	var err error
	if s := v.Get("since"); s != "" {
		if q.Since, err = timeOrAgo(s, now); err != nil {
			return q, fmt.Errorf("since: %w", err)
		}
	}
	if s := v.Get("until"); s != "" {
		if q.Until, err = timeOrAgo(s, now); err != nil {
			return q, fmt.Errorf("until: %w", err)
		}
	}
	if s := v.Get("step"); s != "" {
		if q.Step, err = time.ParseDuration(s); err != nil || q.Step <= 0 {
			return q, fmt.Errorf("step %q: want a duration such as 1m or 1h", s)
		}
	}
	return q, nil
}

// timeOrAgo parses an RFC 3339 time or a positive duration back from now.
func timeOrAgo(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time or a duration back from now such as 24h", s)
	}
	return t, nil
}
