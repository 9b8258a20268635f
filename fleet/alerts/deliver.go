package alerts

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/backoff"
)

// deliveryLease names the lease that picks the one replica delivering on
// a PostgreSQL store.
const deliveryLease = "alerts-delivery"

// pruneEvery: how often the deliverer prunes rows past the retention.
const pruneEvery = time.Hour

// Run delivers the outbox until ctx ends: at once on the embedded store,
// while this replica holds the delivery lease on PostgreSQL. The
// delivering controller's configuration decides: pending rows of webhooks
// it does not know are marked failed when it starts (with no webhook at
// all, every pending row), and it prunes rows past its retention.
func (o *Outbox) Run(ctx context.Context) error {
	if o.reg.Engine() != "postgres" {
		o.deliver(ctx, o.reg)
		return ctx.Err()
	}
	every := o.opts.LeaseTTL / 3
	for {
		l, err := o.reg.AcquireLease(deliveryLease, o.opts.ReplicaID, o.opts.LeaseTTL, time.Now())
		switch {
		case err == nil:
			o.holdLease(ctx, l)
		case !errors.Is(err, registry.ErrLeaseHeld):
			o.log.Warn("alerts delivery lease", "err", err)
		}
		wait := every/2 + rand.N(every/2+1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// holdLease delivers through a view fenced by l and renews l until it is
// lost or ctx ends; on ctx's end it releases l.
func (o *Outbox) holdLease(ctx context.Context, l registry.Lease) {
	log := o.log.With("replica", o.opts.ReplicaID, "token", l.Token)
	log.Info("alerts delivery lease acquired: delivering")
	dctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { o.deliver(dctx, o.reg.Fenced(l)) })
	defer func() {
		stop()
		wg.Wait()
		if ctx.Err() != nil {
			if err := o.reg.ReleaseLease(l); err != nil {
				log.Warn("alerts delivery lease release", "err", err)
			}
		}
	}()
	t := time.NewTicker(o.opts.LeaseTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		nl, err := o.reg.RenewLease(l, o.opts.LeaseTTL, time.Now())
		if err == nil {
			l = nl
			continue
		}
		if errors.Is(err, registry.ErrLeaseLost) || !time.Now().Before(l.Expires) {
			log.Warn("alerts delivery lease lost: standing by", "err", err)
			return
		}
		log.Warn("alerts delivery lease renewal", "err", err)
	}
}

// deliver runs a worker per webhook and the pruner until ctx ends; reg is
// where attempts are recorded (fenced on PostgreSQL).
func (o *Outbox) deliver(ctx context.Context, reg *registry.Registry) {
	names := make([]string, len(o.hooks))
	for i, h := range o.hooks {
		names[i] = h.Name
	}
	if n, err := reg.FailOrphanAlerts(names, "webhook no longer configured", o.opts.Now()); err != nil {
		o.log.Warn("alerts: orphans", "err", err)
	} else if n > 0 {
		o.log.Warn("alerts of webhooks no longer configured marked failed", "deliveries", n)
	}
	var wg sync.WaitGroup
	for _, h := range o.hooks {
		wg.Go(func() { o.work(ctx, reg, h) })
	}
	wg.Go(func() { o.prune(ctx, reg) })
	wg.Wait()
}

func (o *Outbox) prune(ctx context.Context, reg *registry.Registry) {
	for {
		n, err := reg.PruneAlerts(o.opts.Now().Add(-o.opts.Config.Retention))
		if err != nil {
			o.log.Warn("alerts: prune", "err", err)
		} else if n > 0 {
			o.log.Info("alerts pruned", "deliveries", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pruneEvery):
		}
	}
}

// work posts h's pending rows one at a time, oldest first, until ctx ends.
func (o *Outbox) work(ctx context.Context, reg *registry.Registry, h *hook) {
	log := o.log.With("webhook", h.Name)
	bo := backoff.New(o.opts.MinBackoff, o.opts.MaxBackoff, nil)
	for ctx.Err() == nil {
		d, err := reg.NextAlert(h.Name, o.opts.Now())
		if err != nil {
			if !errors.Is(err, registry.ErrNotFound) {
				log.Warn("alerts: next", "err", err)
			}
			o.sleep(ctx, h, o.opts.Poll)
			continue
		}
		if wait := d.Due.Sub(o.opts.Now()); wait > 0 {
			// A retry's wait: the row keeps its place.
			o.sleep(ctx, h, min(wait, o.opts.Poll))
			continue
		}
		a := o.attempt(ctx, h, d)
		if ctx.Err() != nil && a.State == registry.AlertPending {
			return // cut short by shutdown: the row stays as it was
		}
		if a.State == registry.AlertPending {
			a.Due = o.opts.Now().Add(bo.Next())
		} else {
			bo.Reset()
		}
		if err := reg.RecordAlertAttempt(d.ID, a); err != nil && !errors.Is(err, registry.ErrNotFound) {
			log.Warn("alerts: record attempt", "id", d.ID, "err", err)
			o.sleep(ctx, h, o.opts.Poll)
			continue
		}
		switch a.State {
		case registry.AlertDelivered:
			log.Debug("alert delivered", "event", d.Event, "id", d.EventID, "attempts", d.Attempts+1)
		case registry.AlertFailed:
			log.Warn("alert delivery failed", "event", d.Event, "id", d.EventID, "attempts", d.Attempts+1, "err", a.Error)
		default:
			log.Info("alert delivery to retry", "event", d.Event, "id", d.EventID, "attempts", d.Attempts+1,
				"retry_in", a.Due.Sub(o.opts.Now()).Round(time.Millisecond), "err", a.Error)
			o.sleep(ctx, nil, a.Due.Sub(o.opts.Now()))
		}
	}
}

// sleep waits for d, ctx's end, or (h not nil) a wake-up from Emit.
func (o *Outbox) sleep(ctx context.Context, h *hook, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	var wake chan struct{}
	if h != nil {
		wake = h.wake
	}
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-wake:
	}
}

// attempt posts d once and says what became of it (Due is left to the
// caller).
func (o *Outbox) attempt(ctx context.Context, h *hook, d registry.AlertDelivery) registry.AlertAttempt {
	now := o.opts.Now()
	status, err := o.post(ctx, h, d)
	a := registry.AlertAttempt{State: registry.AlertPending, Status: status}
	if err != nil {
		a.Error = err.Error()
	}
	retry := status == 0 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests || status >= 500
	switch {
	case err == nil:
		a.State, a.Done = registry.AlertDelivered, now
	case retry && now.Sub(d.Created) >= o.opts.Config.MaxAge:
		a.State, a.Done = registry.AlertFailed, now
		a.Error = fmt.Sprintf("given up after %s: %s", o.opts.Config.MaxAge, a.Error)
	case !retry && d.Attempts+1 >= o.opts.MaxRejects:
		a.State, a.Done = registry.AlertFailed, now
	}
	return a
}

// post sends d to h and returns the answer's status code; an error means
// no answer (or, with a status, an answer outside 2xx).
func (o *Outbox) post(ctx context.Context, h *hook, d registry.AlertDelivery) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, o.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(d.Body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "outpost-fleet")
	req.Header.Set(HeaderEvent, d.Event)
	req.Header.Set(HeaderKey, d.Key)
	req.Header.Set(HeaderAttempt, strconv.Itoa(d.Attempts+1))
	req.Header.Set(HeaderSignature, Sign([]byte(h.Secret), o.opts.Now(), d.Body))
	resp, err := o.opts.Client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			ue.URL = shownURL(req.URL) // the error is stored for viewers to read
		}
		return 0, err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return resp.StatusCode, nil
	}
	text := strings.TrimSpace(string(msg))
	if text != "" {
		return resp.StatusCode, fmt.Errorf("%s: %s", resp.Status, text)
	}
	return resp.StatusCode, errors.New(resp.Status)
}
