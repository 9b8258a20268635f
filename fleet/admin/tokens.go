package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
)

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Role string `json:"role"`
	Name string `json:"name,omitempty"`
}

// TokenInfo is a token as the API lists it: never its secret or hash.
type TokenInfo struct {
	ID      string     `json:"id"`
	Name    string     `json:"name,omitempty"`
	Role    string     `json:"role"`
	Created time.Time  `json:"created"`
	Revoked *time.Time `json:"revoked,omitempty"`
}

// NewToken is the answer to POST /v1/tokens: the token itself is shown
// this once; the controller keeps only its hash.
type NewToken struct {
	TokenInfo
	Token string `json:"token"`
}

// AuditPage is the answer to GET /v1/audit: the records asked for, and
// whether the whole chain verified (Verified, else ChainError says where it
// broke).
type AuditPage struct {
	Records    []registry.AuditRecord `json:"records"`
	Verified   bool                   `json:"verified"`
	Count      int                    `json:"count"`
	ChainError string                 `json:"chain_error,omitempty"`
}

func tokenInfo(t *registry.Token) TokenInfo {
	return TokenInfo{ID: t.ID, Name: t.Name, Role: t.Role, Created: t.Created, Revoked: t.Revoked}
}

const maxTokenName = 128

func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req TokenRequest
	if err := readJSON(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	role, err := ParseRole(req.Role)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	if len(req.Name) > maxTokenName {
		writeError(w, http.StatusBadRequest, fmt.Errorf("name is over %d bytes", maxTokenName))
		return
	}
	id, secret, tok, err := newToken()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	t := registry.Token{ID: id, Name: req.Name, Role: string(role), Hash: hashToken(id, secret), Created: s.opts.Now()}
	if err := s.opts.Registry.PutToken(t); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	s.locked.Store(true)
	by, _ := ActorFrom(r.Context())
	s.log.Info("admin token created", "id", id, "name", req.Name, "role", role, "by", by.ID)
	writeJSON(w, http.StatusCreated, NewToken{TokenInfo: tokenInfo(&t), Token: tok})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.opts.Registry.Tokens()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	out := make([]TokenInfo, 0, len(ts))
	for i := range ts {
		out = append(out, tokenInfo(&ts[i]))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.opts.Registry.RevokeToken(id, s.opts.Now()); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	t, err := s.opts.Registry.Token(id)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	by, _ := ActorFrom(r.Context())
	s.log.Info("admin token revoked", "id", id, "by", by.ID)
	writeJSON(w, http.StatusOK, tokenInfo(t))
}

// getAudit serves GET /v1/audit?since=RFC3339&limit=N.
func (s *Server) getAudit(w http.ResponseWriter, r *http.Request) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("since: want RFC 3339: %w", err))
			return
		}
		since = t
	}
	limit := 0
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, errors.New("limit: want a non-negative integer"))
			return
		}
		limit = n
	}
	recs, err := s.opts.Registry.Audit(since, limit)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	page := AuditPage{Records: recs}
	page.Count, err = s.opts.Registry.VerifyAudit()
	if err != nil {
		if !errors.Is(err, registry.ErrTampered) {
			writeError(w, http.StatusInternalServerError, err)
			return
		}
		page.ChainError = err.Error()
	} else {
		page.Verified = true
	}
	writeJSON(w, http.StatusOK, page)
}
