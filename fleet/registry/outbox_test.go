package registry

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAlertOutbox: the outbox's contract on both engines: one row per
// (webhook, event), each webhook's rows in order, attempts recorded,
// cancel only before the first attempt, prune only what left pending,
// and everything still there after the store is opened again.
func TestAlertOutbox(t *testing.T) {
	eachEngine(t, func(t *testing.T, newTarget func(*testing.T) target) {
		g := newTarget(t)
		r := g.open(t)
		now := time.Unix(1_800_000_000, 0).UTC()
		row := func(hook, event, id string, due time.Time) AlertDelivery {
			return AlertDelivery{Webhook: hook, EventID: id, Event: event, Subject: "gw-" + id, Key: hook + "/" + id,
				Body: []byte(`{"id":"` + id + `"}`), Created: now, Due: due}
		}
		added, err := r.EnqueueAlerts([]AlertDelivery{row("a", "x", "1", now), row("b", "x", "1", now), row("a", "x", "2", now)})
		require.NoError(t, err)
		require.Equal(t, []string{"a", "b", "a"}, added)
		// The same events again (another replica saw them too): nothing new.
		added, err = r.EnqueueAlerts([]AlertDelivery{row("a", "x", "1", now), row("a", "x", "2", now)})
		require.NoError(t, err)
		require.Empty(t, added)

		d, err := r.NextAlert("a", now)
		require.NoError(t, err)
		require.Equal(t, "1", d.EventID)
		require.Equal(t, `{"id":"1"}`, string(d.Body))
		require.Equal(t, "a/1", d.Key)
		require.True(t, d.Due.Equal(now), "due %s, want %s", d.Due, now)

		// A failed attempt keeps the row at the head, due later.
		require.NoError(t, r.RecordAlertAttempt(d.ID, AlertAttempt{State: AlertPending, Due: now.Add(time.Minute), Status: 503, Error: "503 Service Unavailable"}))
		d2, err := r.NextAlert("a", now)
		require.NoError(t, err)
		require.Equal(t, d.ID, d2.ID)
		require.Equal(t, 1, d2.Attempts)
		require.Equal(t, 503, d2.LastStatus)
		require.NoError(t, r.RecordAlertAttempt(d.ID, AlertAttempt{State: AlertDelivered, Done: now, Status: 200}))
		require.ErrorIs(t, r.RecordAlertAttempt(d.ID, AlertAttempt{State: AlertDelivered, Done: now}), ErrNotFound)
		d3, err := r.NextAlert("a", now)
		require.NoError(t, err)
		require.Equal(t, "2", d3.EventID)

		// Cancel: only rows due later and never attempted.
		_, err = r.EnqueueAlerts([]AlertDelivery{row("a", "off", "3", now.Add(time.Hour)), row("a", "off", "4", now)})
		require.NoError(t, err)
		d4, err := r.NextAlert("a", now)
		require.NoError(t, err)
		require.Equal(t, "2", d4.EventID, "a row held by a delay does not hold back the next")
		n, err := r.CancelAlerts("off", "gw-3", now)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		n, err = r.CancelAlerts("off", "gw-4", now)
		require.NoError(t, err)
		require.Equal(t, 0, n, "a row already due is not cancelled")

		// Orphans: webhook b is no longer configured.
		n, err = r.FailOrphanAlerts([]string{"a"}, "webhook removed", now)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		_, err = r.NextAlert("b", now)
		require.ErrorIs(t, err, ErrNotFound)

		all, err := r.AlertDeliveries(AlertQuery{})
		require.NoError(t, err)
		require.Len(t, all, 5)
		require.Greater(t, all[0].ID, all[4].ID, "newest first")
		pending, err := r.AlertDeliveries(AlertQuery{Webhook: "a", State: AlertPending})
		require.NoError(t, err)
		require.Len(t, pending, 2)
		page, err := r.AlertDeliveries(AlertQuery{Before: all[1].ID, Limit: 2})
		require.NoError(t, err)
		require.Equal(t, []int64{all[2].ID, all[3].ID}, []int64{page[0].ID, page[1].ID})

		require.NoError(t, r.Close())
		r = g.open(t)
		defer r.Close()
		n, err = r.PruneAlerts(now.Add(time.Second))
		require.NoError(t, err)
		require.Equal(t, 3, n, "delivered, cancelled and failed go; pending stay")
		left, err := r.AlertDeliveries(AlertQuery{})
		require.NoError(t, err)
		var ids []string
		for _, d := range left {
			require.Equal(t, AlertPending, d.State)
			ids = append(ids, d.EventID)
		}
		require.Equal(t, []string{"4", "2"}, ids)
		_, err = r.NextAlert("nobody", now)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("got %v, want ErrNotFound", fmt.Sprint(err))
		}
	})
}
