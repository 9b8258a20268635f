package admin

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/outpost-edge/outpost/fleet/registry"
)

// Deliveries lists the webhook outbox (*alerts.Outbox), newest first. It
// must be safe for concurrent use; an empty outbox is an empty list.
type Deliveries interface {
	Deliveries(q registry.AlertQuery) ([]registry.AlertDelivery, error)
}

// DeliveryList is GET /v1/alerts/deliveries: the outbox's rows, newest
// first; Next, when set, is the before= of the next page.
type DeliveryList struct {
	Deliveries []registry.AlertDelivery `json:"deliveries"`
	Next       int64                    `json:"next,omitempty"`
}

// alertDeliveries serves GET /v1/alerts/deliveries?webhook=&state=&limit=&before=.
func (s *Server) alertDeliveries(w http.ResponseWriter, r *http.Request) {
	if s.opts.Alerts == nil {
		writeError(w, http.StatusNotFound, errors.New("no alerts"))
		return
	}
	q := registry.AlertQuery{Webhook: r.FormValue("webhook"), State: r.FormValue("state"), Limit: 100}
	switch q.State {
	case "", registry.AlertPending, registry.AlertDelivered, registry.AlertFailed, registry.AlertCancelled:
	default:
		writeError(w, http.StatusBadRequest, errors.New("state: want pending, delivered, failed or cancelled"))
		return
	}
	limit, err := positive(r.FormValue("limit"), 100, 1000)
	if err != nil {
		writeError(w, http.StatusBadRequest, errors.New("limit: "+err.Error()))
		return
	}
	if q.Before, err = positive(r.FormValue("before"), 0, math.MaxInt64); err != nil {
		writeError(w, http.StatusBadRequest, errors.New("before: "+err.Error()))
		return
	}
	q.Limit = int(limit)
	ds, err := s.opts.Alerts.Deliveries(q)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	out := DeliveryList{Deliveries: ds}
	if out.Deliveries == nil {
		out.Deliveries = []registry.AlertDelivery{}
	}
	if len(ds) == q.Limit {
		out.Next = ds[len(ds)-1].ID
	}
	writeJSON(w, http.StatusOK, out)
}

// positive parses v as an integer in [1, max]; empty gives def.
func positive(v string, def, max int64) (int64, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 || n > max {
		return 0, fmt.Errorf("want an integer from 1 to %d", max)
	}
	return n, nil
}
