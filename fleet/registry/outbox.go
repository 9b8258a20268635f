package registry

import (
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// The webhook outbox (schema 0007, used by fleet/alerts): one row per
// event per webhook. A row is inserted in the flow that saw the event and
// is durable when EnqueueAlerts returns; a delivery loop reads each
// webhook's oldest pending row (NextAlert), posts it and records the
// attempt (RecordAlertAttempt). Rows that left pending are pruned after a
// retention (PruneAlerts).

// Alert delivery states.
const (
	AlertPending   = "pending"
	AlertDelivered = "delivered"
	AlertFailed    = "failed"
	// AlertCancelled: withdrawn before its first attempt (CancelAlerts).
	AlertCancelled = "cancelled"
)

// AlertDelivery is one event for one webhook.
type AlertDelivery struct {
	ID      int64  `json:"id"`
	Webhook string `json:"webhook"`
	// EventID identifies the event: the same (Webhook, EventID) is
	// inserted once.
	EventID string `json:"event_id"`
	Event   string `json:"event"`
	// Subject is what the event is about (a device, a rollout), for
	// CancelAlerts.
	Subject string `json:"subject,omitempty"`
	// Key is the idempotency key sent with every attempt.
	Key string `json:"key"`
	// Body is the JSON posted, the same bytes on every attempt.
	Body    []byte    `json:"-"`
	State   string    `json:"state"`
	Created time.Time `json:"created"`
	// Due is when the next attempt may start.
	Due        time.Time `json:"due"`
	Attempts   int       `json:"attempts"`
	LastStatus int       `json:"last_status,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
	// Done is when the row left pending.
	Done time.Time `json:"done,omitzero"`
}

const alertColumns = `id, webhook, event_id, event, subject, idem_key, body, state, created, due, attempts, last_status, last_error, done`

func scanAlert(s scanner) (AlertDelivery, error) {
	var d AlertDelivery
	var body string
	var created, due, done int64
	err := s.Scan(&d.ID, &d.Webhook, &d.EventID, &d.Event, &d.Subject, &d.Key, &body, &d.State, &created, &due,
		&d.Attempts, &d.LastStatus, &d.LastError, &done)
	d.Body, d.Created, d.Due, d.Done = []byte(body), fromTS(created), fromTS(due), fromTS(done)
	return d, err
}

// EnqueueAlerts inserts ds (ID, State, Attempts and Done are ignored) in
// one transaction, skipping any whose (Webhook, EventID) is stored
// already, and returns the webhooks of the rows it inserted.
func (r *Registry) EnqueueAlerts(ds []AlertDelivery) ([]string, error) {
	var added []string
	err := r.write(func(tx *sql.Tx) error {
		var err error
		added, err = r.enqueueAlerts(tx, ds)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("registry: enqueue alerts: %w", err)
	}
	return added, nil
}

// enqueueAlerts stores ds in tx and returns the webhooks of the rows added.
func (r *Registry) enqueueAlerts(tx *sql.Tx, ds []AlertDelivery) ([]string, error) {
	var added []string
	for _, d := range ds {
		res, err := r.exec(tx, `INSERT INTO alert_deliveries (webhook, event_id, event, subject, idem_key, body, state, created, due)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (webhook, event_id) DO NOTHING`,
			d.Webhook, d.EventID, d.Event, d.Subject, d.Key, string(d.Body), AlertPending, ts(d.Created), ts(d.Due))
		if err != nil {
			return nil, err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			added = append(added, d.Webhook)
		}
	}
	return added, nil
}

// NextAlert returns webhook's oldest pending delivery that is either due
// at now or was attempted already (and waits for its retry), or
// ErrNotFound. A row never attempted and due later (held by a delay) does
// not hold back the rows behind it.
func (r *Registry) NextAlert(webhook string, now time.Time) (AlertDelivery, error) {
	d, err := scanAlert(r.r.QueryRow(r.q(`SELECT `+alertColumns+` FROM alert_deliveries
		WHERE webhook = ? AND state = ? AND (attempts > 0 OR due <= ?) ORDER BY id LIMIT 1`), webhook, AlertPending, ts(now)))
	if err != nil {
		return d, fmt.Errorf("registry: next alert: %w", notFound(err))
	}
	return d, nil
}

// AlertAttempt is the outcome of one delivery attempt: State stays
// AlertPending (to be tried again at Due) or becomes AlertDelivered or
// AlertFailed (at Done).
type AlertAttempt struct {
	State  string
	Due    time.Time
	Done   time.Time
	Status int
	Error  string
}

// RecordAlertAttempt counts an attempt of the pending delivery id and
// stores its outcome; ErrNotFound if id is not pending (any more).
func (r *Registry) RecordAlertAttempt(id int64, a AlertAttempt) error {
	err := r.write(func(tx *sql.Tx) error {
		res, err := r.exec(tx, `UPDATE alert_deliveries SET attempts = attempts + 1, state = ?, due = ?, done = ?, last_status = ?, last_error = ?
			WHERE id = ? AND state = ?`, a.State, ts(a.Due), ts(a.Done), a.Status, a.Error, id, AlertPending)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("registry: alert %d: %w", id, err)
	}
	return nil
}

// CancelAlerts marks cancelled the pending deliveries of event about
// subject that were never attempted and are due after now, and returns how
// many it cancelled.
func (r *Registry) CancelAlerts(event, subject string, now time.Time) (int, error) {
	var n int64
	err := r.write(func(tx *sql.Tx) error {
		res, err := r.exec(tx, `UPDATE alert_deliveries SET state = ?, done = ?
			WHERE event = ? AND subject = ? AND state = ? AND attempts = 0 AND due > ?`,
			AlertCancelled, ts(now), event, subject, AlertPending, ts(now))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("registry: cancel alerts: %w", err)
	}
	return int(n), nil
}

// FailOrphanAlerts marks failed, with reason, the pending deliveries of
// every webhook not in keep (webhooks removed from the configuration), and
// returns how many.
func (r *Registry) FailOrphanAlerts(keep []string, reason string, now time.Time) (int, error) {
	q := `UPDATE alert_deliveries SET state = ?, done = ?, last_error = ? WHERE state = ?`
	args := []any{AlertFailed, ts(now), reason, AlertPending}
	if len(keep) > 0 {
		q += ` AND webhook NOT IN (?` + strings.Repeat(`, ?`, len(keep)-1) + `)`
		for _, k := range keep {
			args = append(args, k)
		}
	}
	var n int64
	err := r.write(func(tx *sql.Tx) error {
		res, err := r.exec(tx, q, args...)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("registry: fail orphan alerts: %w", err)
	}
	return int(n), nil
}

// PruneAlerts deletes the deliveries that left pending before before and
// returns how many.
func (r *Registry) PruneAlerts(before time.Time) (int, error) {
	var n int64
	err := r.write(func(tx *sql.Tx) error {
		res, err := r.exec(tx, `DELETE FROM alert_deliveries WHERE state <> ? AND done < ?`, AlertPending, ts(before))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("registry: prune alerts: %w", err)
	}
	return int(n), nil
}

// AlertQuery selects deliveries for AlertDeliveries; zero fields select
// everything.
type AlertQuery struct {
	Webhook string
	State   string
	// Before: only ids below it (paging, newest first).
	Before int64
	// Limit: at most this many (0 means 100).
	Limit int
}

// AlertDeliveries returns the deliveries q selects, newest first.
func (r *Registry) AlertDeliveries(q AlertQuery) ([]AlertDelivery, error) {
	where, args := []string{"1 = 1"}, []any{}
	if q.Webhook != "" {
		where, args = append(where, "webhook = ?"), append(args, q.Webhook)
	}
	if q.State != "" {
		where, args = append(where, "state = ?"), append(args, q.State)
	}
	if q.Before > 0 {
		where, args = append(where, "id < ?"), append(args, q.Before)
	}
	if q.Limit <= 0 {
		q.Limit = 100
	}
	rows, err := r.r.Query(r.q(`SELECT `+alertColumns+` FROM alert_deliveries WHERE `+strings.Join(where, " AND ")+
		` ORDER BY id DESC LIMIT ?`), append(args, q.Limit)...)
	if err != nil {
		return nil, fmt.Errorf("registry: alert deliveries: %w", err)
	}
	defer rows.Close()
	var out []AlertDelivery
	for rows.Next() {
		d, err := scanAlert(rows)
		if err != nil {
			return nil, fmt.Errorf("registry: alert deliveries: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("registry: alert deliveries: %w", err)
	}
	return out, nil
}
