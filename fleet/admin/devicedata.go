package admin

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
)

// What the controller keeps of a device's telemetry (docs/MONITORING.md):
// its health series and its audit log.

// maxHealthPoints bounds one health answer (the newest are kept): a day of
// snapshots a minute apart fits.
const maxHealthPoints = 5000

// DeviceHealth is the answer of GET /v1/devices/{id}/health.
type DeviceHealth struct {
	Device string                 `json:"device"`
	Points []registry.HealthPoint `json:"points"`
}

// DeviceAudit is the answer of GET /v1/devices/{id}/audit: newest first;
// the next page is ?before= the last record's seq.
type DeviceAudit struct {
	Device  string                       `json:"device"`
	Records []registry.DeviceAuditRecord `json:"records"`
	// Breaks counts the breaks of the device's audit chain found so far.
	Breaks uint64 `json:"breaks"`
}

// deviceHealth: ?since= an RFC 3339 time or a Go duration back from now
// (default 24h).
func (s *Server) deviceHealth(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.opts.Registry.Device(id); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	since := s.opts.Now().Add(-24 * time.Hour)
	if v := r.URL.Query().Get("since"); v != "" {
		var err error
		if since, err = timeOrAgo(v, s.opts.Now()); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("since: %w", err))
			return
		}
	}
	pts, err := s.opts.Registry.DeviceHealth(id, since, maxHealthPoints)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, DeviceHealth{Device: id, Points: pts})
}

// deviceAudit: ?limit= (default 100, at most 1000) and ?before= a seq.
func (s *Server) deviceAudit(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, err := s.opts.Registry.Device(id); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	q := r.URL.Query()
	limit, before := 100, uint64(0)
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > 1000 {
			writeError(w, http.StatusBadRequest, errors.New("limit: want an integer from 1 to 1000"))
			return
		}
		limit = n
	}
	if v := q.Get("before"); v != "" {
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			writeError(w, http.StatusBadRequest, errors.New("before: want a record's seq"))
			return
		}
		before = n
	}
	recs, err := s.opts.Registry.DeviceAudit(id, limit, before)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	breaks, err := s.opts.Registry.AuditChainBreaks(id)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, DeviceAudit{Device: id, Records: recs, Breaks: breaks})
}
