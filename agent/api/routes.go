package api

import (
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/outpost-edge/outpost/internal/ratelimit"
)

// route is a parsed request path.
type route struct {
	kind    string // see handler
	model   string
	version int64
	action  string
}

// parseRoute maps a path to an endpoint. It is hand-written because TF
// Serving's ":predict" suffix is not a whole path segment.
func parseRoute(path string) (route, bool) {
	switch path {
	case "/v2", "/v2/":
		return route{kind: "server"}, true
	case "/v2/health/live":
		return route{kind: "live"}, true
	case "/v2/health/ready":
		return route{kind: "ready"}, true
	case "/metrics":
		return route{kind: "metrics"}, true
	case "/agent/status":
		return route{kind: "status"}, true
	case "/v2/repository/index":
		return route{kind: "repo-index"}, true
	}
	if rest, ok := strings.CutPrefix(path, "/v2/repository/models/"); ok {
		name, action, ok := strings.Cut(rest, "/")
		if !ok || name == "" || (action != "load" && action != "unload") {
			return route{}, false
		}
		return route{kind: "repo-" + action, model: name}, true
	}
	if rest, ok := strings.CutPrefix(path, "/v2/models/"); ok {
		parts := strings.Split(rest, "/")
		r := route{kind: "v2"}
		r.model, parts = parts[0], parts[1:]
		if r.model == "" {
			return route{}, false
		}
		if len(parts) >= 2 && parts[0] == "versions" {
			v, ok := parseVersion(parts[1])
			if !ok {
				return route{kind: "bad-version", action: parts[1]}, true
			}
			r.version, parts = v, parts[2:]
		}
		switch {
		case len(parts) == 0:
			r.action = "metadata"
		case len(parts) == 1 && (parts[0] == "infer" || parts[0] == "ready"):
			r.action = parts[0]
		default:
			return route{}, false
		}
		return r, true
	}
	if rest, ok := strings.CutPrefix(path, "/v1/models/"); ok {
		r := route{kind: "v1", action: "status"}
		if head, ok := strings.CutSuffix(rest, ":predict"); ok {
			r.action, rest = "predict", head
		}
		parts := strings.Split(rest, "/")
		r.model, parts = parts[0], parts[1:]
		if r.model == "" {
			return route{}, false
		}
		if n := len(parts); n > 0 && parts[n-1] == "metadata" && r.action == "status" {
			r.action, parts = "metadata", parts[:n-1]
		}
		if len(parts) == 2 && parts[0] == "versions" {
			v, ok := parseVersion(parts[1])
			if !ok {
				return route{kind: "bad-version", action: parts[1]}, true
			}
			r.version, parts = v, nil
		}
		if len(parts) != 0 {
			return route{}, false
		}
		return r, true
	}
	return route{}, false
}

// parseVersion accepts positive integers, as TF Serving does.
func parseVersion(s string) (int64, bool) {
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil && v > 0
}

// methods lists the method each endpoint takes.
var methods = map[string]string{
	"server": http.MethodGet, "live": http.MethodGet, "ready": http.MethodGet,
	"metrics": http.MethodGet, "status": http.MethodGet,
	"repo-index": http.MethodPost, "repo-load": http.MethodPost, "repo-unload": http.MethodPost,
}

func (s *Server) handler() http.Handler {
	return s.logged(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rt, ok := parseRoute(r.URL.Path)
		if !ok {
			writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
			return
		}
		if rt.kind == "bad-version" {
			writeError(w, http.StatusBadRequest, "model version "+strconv.Quote(rt.action)+" is not a positive integer")
			return
		}
		want := methods[rt.kind]
		switch {
		case rt.kind == "v2" && rt.action == "infer", rt.kind == "v1" && rt.action == "predict":
			want = http.MethodPost
		case want == "":
			want = http.MethodGet
		}
		if r.Method != want && !(want == http.MethodGet && r.Method == http.MethodHead) {
			w.Header().Set("Allow", want)
			writeError(w, http.StatusMethodNotAllowed, r.Method+" is not allowed here; use "+want)
			return
		}
		// Health probes pass freely. Everything else needs the token; all
		// but /metrics is rate limited before the token is checked, so
		// guessing tokens is limited too. /metrics is not: every local
		// scraper shares one loopback address, and a scrape is cheap.
		if probe := rt.kind == "live" || rt.kind == "ready"; !probe {
			if rt.kind != "metrics" {
				if wait, ok := s.Allow(ratelimit.ClientKey(r)); !ok {
					w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
					writeError(w, http.StatusTooManyRequests, "rate limit exceeded for this client")
					return
				}
			}
			if !s.authorized(r) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="outpost"`)
				writeError(w, http.StatusUnauthorized, "missing or wrong bearer token")
				return
			}
		}
		switch rt.kind {
		case "server":
			s.serverMetadata(w)
		case "live":
			writeJSON(w, http.StatusOK, map[string]bool{"live": true})
		case "ready":
			s.serverReady(w)
		case "metrics":
			s.metrics.handler.ServeHTTP(w, r)
		case "status":
			s.agentStatus(w)
		case "repo-index", "repo-load", "repo-unload":
			s.repository(w, r, rt)
		case "v2":
			switch rt.action {
			case "metadata":
				s.modelMetadata(w, rt)
			case "ready":
				s.modelReady(w, rt)
			case "infer":
				s.infer(w, r, rt)
			}
		case "v1":
			switch rt.action {
			case "predict":
				s.predict(w, r, rt)
			case "metadata":
				s.tfsMetadata(w, rt)
			default:
				s.tfsStatus(w, rt)
			}
		}
	}))
}

func (s *Server) authorized(r *http.Request) bool {
	return s.Authorized(r.Header.Get("Authorization"))
}
