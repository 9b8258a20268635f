package admin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/ratelimit"
)

// Role is what a token may do. Each role can do everything the one before
// it can.
type Role string

const (
	// RoleViewer reads: every GET but the token list and the audit log.
	RoleViewer Role = "viewer"
	// RoleOperator also pushes models and creates, pauses, resumes and
	// aborts rollouts.
	RoleOperator Role = "operator"
	// RoleAdmin does everything: tokens, device enrolment and revocation,
	// the audit log.
	RoleAdmin Role = "admin"
)

func (r Role) rank() int {
	switch r {
	case RoleViewer:
		return 1
	case RoleOperator:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// ParseRole checks a role name.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if r.rank() == 0 {
		return "", fmt.Errorf("admin: unknown role %q (viewer, operator, admin)", s)
	}
	return r, nil
}

// TokenPrefix starts every admin token: opt_<id>_<secret>, the id 16 hex
// digits, public, and the secret 256 random bits in unpadded base64url.
const TokenPrefix = "opt_"

// ActorLocal is the audit actor of a request taken without a token in
// bootstrap mode (no token exists yet, and the client is on loopback).
const ActorLocal = "local"

// newToken mints a token: its id, its secret, and the whole string.
func newToken() (id, secret, token string, err error) {
	b := make([]byte, 8+32)
	if _, err := rand.Read(b); err != nil {
		return "", "", "", fmt.Errorf("admin: token: %w", err)
	}
	id = hex.EncodeToString(b[:8])
	secret = base64.RawURLEncoding.EncodeToString(b[8:])
	return id, secret, TokenPrefix + id + "_" + secret, nil
}

// parseToken splits opt_<id>_<secret>.
func parseToken(tok string) (id, secret string, ok bool) {
	rest, ok := strings.CutPrefix(tok, TokenPrefix)
	if !ok {
		return "", "", false
	}
	id, secret, ok = strings.Cut(rest, "_")
	if !ok || len(id) != 16 || secret == "" {
		return "", "", false
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", "", false
	}
	return id, secret, true
}

// hashToken is how a token is kept at rest. As with device credentials
// (broker.HashSecret), a plain SHA-256 is enough for a 256-bit random
// secret; the id and a domain string salt it.
func hashToken(id, secret string) []byte {
	h := sha256.New()
	h.Write([]byte("outpost admin token v1\x00"))
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(secret))
	return h.Sum(nil)
}

// Actor is who makes a request.
type Actor struct {
	ID   string
	Name string
	Role Role
}

type actorKey struct{}

// ActorFrom returns the request's actor (set by the auth layer).
func ActorFrom(ctx context.Context) (Actor, bool) {
	a, ok := ctx.Value(actorKey{}).(Actor)
	return a, ok
}

// required is the role a request needs; 0 rank (empty) means none.
func required(r *http.Request) Role {
	p := r.URL.Path
	if p == "/v1/health" {
		return ""
	}
	// The console's static assets (and the redirect to them) are public;
	// the data they show comes from the API, with the user's token.
	if (r.Method == http.MethodGet || r.Method == http.MethodHead) && (p == "/" || p == "/console" || strings.HasPrefix(p, "/console/")) {
		return ""
	}
	if p == "/v1/tokens" || strings.HasPrefix(p, "/v1/tokens/") || p == "/v1/audit" {
		return RoleAdmin
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return RoleViewer
	case http.MethodPost:
		if p == "/v1/models" || p == "/v1/rollouts" || strings.HasPrefix(p, "/v1/rollouts/") {
			return RoleOperator
		}
	}
	return RoleAdmin
}

func mutating(r *http.Request) bool {
	return r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions
}

func isLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// bootstrap reports whether no token was ever made. Once one exists the
// answer stays false (revoked tokens are kept), so it is cached.
func (s *Server) bootstrap() (bool, error) {
	if s.locked.Load() {
		return false, nil
	}
	exists, err := s.opts.Registry.AnyToken()
	if err != nil {
		return false, err
	}
	if exists {
		s.locked.Store(true)
	}
	return !exists, nil
}

// authenticate finds the request's actor; a nil actor with a nil error
// means the credentials are missing or wrong (401).
func (s *Server) authenticate(r *http.Request) (*Actor, error) {
	h := r.Header.Get("Authorization")
	if h == "" {
		boot, err := s.bootstrap()
		if err != nil {
			return nil, err
		}
		if boot && isLoopback(r.RemoteAddr) {
			return &Actor{ID: ActorLocal, Role: RoleAdmin}, nil
		}
		return nil, nil
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return nil, nil
	}
	id, secret, ok := parseToken(strings.TrimSpace(tok))
	if !ok {
		return nil, nil
	}
	t, err := s.opts.Registry.Token(id)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(hashToken(id, secret), t.Hash) != 1 || t.Revoked != nil {
		return nil, nil
	}
	return &Actor{ID: t.ID, Name: t.Name, Role: Role(t.Role)}, nil
}

// statusWriter records the status a handler answered with.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// withAuth is the auth layer in front of every route: it finds the actor,
// answers 401 (no or bad token; failures limited per client address, 429
// past the limit) or 403 (role too low), and records every mutating call it
// lets through, or refuses with 403, in the audit log.
func (s *Server) withAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		need := required(r)
		if need == "" {
			next.ServeHTTP(w, r)
			return
		}
		a, err := s.authenticate(r)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		if a == nil {
			if wait, ok := s.fails.Allow(ratelimit.ClientKey(r)); !ok {
				w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
				writeError(w, http.StatusTooManyRequests, errors.New("too many failed authentications, retry later"))
				return
			}
			s.log.Warn("admin api: authentication failed", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
			w.Header().Set("WWW-Authenticate", `Bearer realm="outpost-fleet"`)
			writeError(w, http.StatusUnauthorized, errors.New("missing or invalid token"))
			return
		}
		sw := &statusWriter{ResponseWriter: w}
		if a.Role.rank() < need.rank() {
			writeError(sw, http.StatusForbidden, fmt.Errorf("role %s may not %s %s (needs %s)", a.Role, r.Method, r.URL.Path, need))
		} else {
			next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), actorKey{}, *a)))
		}
		if !mutating(r) {
			return
		}
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		if _, err := s.opts.Registry.AppendAudit(registry.AuditRecord{Time: s.opts.Now(), Actor: a.ID, ActorName: a.Name,
			Role: string(a.Role), Remote: ratelimit.ClientKey(r), Method: r.Method, Path: r.URL.Path, Status: sw.status}); err != nil {
			s.log.Error("admin api: audit", "err", err, "actor", a.ID, "method", r.Method, "path", r.URL.Path)
		}
	})
}
