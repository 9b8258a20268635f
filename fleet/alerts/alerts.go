// Package alerts calls the operator's webhooks when something in the fleet
// needs a person or a pipeline: a model drifts (the retraining trigger), a
// rollout halts, a device goes offline, a device's audit chain breaks.
//
// Delivery goes through a durable outbox in the registry (schema 0007):
//
//   - Emit inserts one row per webhook that subscribes to the event, in one
//     transaction, and returns once it is committed: an event Emit returned
//     for is delivered even if the controller is killed the next instant.
//     An event has an ID; emitting the same ID again (another replica saw the
//     same transition, or a restarted leader repeats itself) adds nothing.
//   - Run delivers: one goroutine per webhook posts that webhook's pending
//     rows one at a time, oldest first, so each webhook sees its events in
//     the order they were emitted. On PostgreSQL only the replica holding
//     the lease "alerts-delivery" delivers; SQLite has one process.
//   - Each POST carries the same body and Outpost-Idempotency-Key on every
//     attempt, across restarts, and a fresh HMAC-SHA256 signature over a
//     timestamp and the body (Sign, Verify). Delivery is at least once: a
//     controller killed after the receiver answered but before the answer
//     was recorded posts again with the same key, and the receiver drops
//     keys it has seen.
//   - Network errors, timeouts, 408, 429 and 5xx are retried with jittered
//     exponential backoff (internal/backoff) until the row is MaxAge old,
//     then it fails; any other answer outside 2xx fails the row after
//     MaxRejects attempts (a receiver being redeployed may answer 404 for a
//     moment; one that refuses our signature will not change its mind). A
//     failed row no longer blocks the webhook's later events.
//   - Rows that left pending are kept for Retention (GET
//     /v1/alerts/deliveries shows them), then pruned.
//
// Crash points, each covered by the SIGKILL test in cmd/outpost-fleet:
//   - before Emit's transaction commits: no row; the caller's own state
//     change (a rollout halted) is repeated or re-emitted by its owner;
//   - after the POST, before the attempt is recorded: the row is still
//     pending and is posted again with the same key (the duplicate the
//     receiver drops);
//   - after the attempt is recorded: nothing is repeated.
package alerts

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
)

// Type is an event type; the webhook's Outpost-Event header and the body's
// "event" field carry it.
type Type string

// The event types.
const (
	// Drift: a model version's drift state changed, fleet-wide or on one
	// device (DriftData).
	Drift Type = "drift"
	// RolloutHalted: a gate failed or a wave timed out (RolloutData).
	RolloutHalted Type = "rollout_halted"
	// DeviceOffline: a device went offline and stayed so for the offline
	// grace (DeviceData).
	DeviceOffline Type = "device_offline"
	// AuditChainBroken: a device's audit records do not chain (AuditData).
	AuditChainBroken Type = "audit_chain_broken"
)

// Types are every event type, in the order the docs list them.
var Types = []Type{Drift, RolloutHalted, DeviceOffline, AuditChainBroken}

// Errors; callers test with errors.Is.
var (
	// ErrConfig: the alerts configuration is unusable (the message says
	// which webhook and why).
	ErrConfig = errors.New("alerts: invalid configuration")
)

// Webhook is one receiver, as fleet.yaml's alerts.webhooks lists it.
type Webhook struct {
	// Name identifies the webhook in the outbox and in the deliveries
	// listing; default: the URL without its query and user. Renaming a webhook abandons its pending
	// rows (they are marked failed).
	Name string `yaml:"name"`
	// URL receives the POSTs: http or https.
	URL string `yaml:"url"`
	// Secret keys the HMAC-SHA256 signature; SecretFile names a file
	// holding it instead (surrounding white space is dropped). One of the
	// two is required.
	Secret     string `yaml:"secret"`
	SecretFile string `yaml:"secret_file"`
	// Events the webhook receives; empty means all.
	Events []Type `yaml:"events"`
}

// Config is fleet.yaml's alerts section; the zero value sends nothing.
type Config struct {
	Webhooks []Webhook `yaml:"webhooks"`
	// OfflineGrace: a device that comes back within it after going
	// offline sends no device_offline event; 0 means 5 minutes.
	OfflineGrace time.Duration `yaml:"offline_grace"`
	// Retention: how long delivered, failed and cancelled rows are kept;
	// 0 means 7 days.
	Retention time.Duration `yaml:"retention"`
	// MaxAge: a row still undelivered this long after its event fails;
	// 0 means 72 hours.
	MaxAge time.Duration `yaml:"max_age"`
}

// minSecret is the shortest secret accepted, in bytes: an HMAC key
// shorter than this is guessable.
const minSecret = 16

// shownURL is a webhook URL as viewers may see it (the default name, the
// delivery errors): without its query and user, where receivers often
// carry a token.
func shownURL(u *url.URL) string {
	return (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path}).String()
}

// Validate checks c and reads the secret files; errors name the webhook
// as alerts.webhooks[i] and wrap ErrConfig.
func (c *Config) Validate() error {
	var errs []error
	seen := map[string]int{}
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		bad := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%w: alerts.webhooks[%d]: %s", ErrConfig, i, fmt.Sprintf(format, a...)))
		}
		u, err := url.Parse(w.URL)
		switch {
		case w.URL == "":
			bad("url is required")
		case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			bad("url %q is not an http:// or https:// URL", w.URL)
		}
		if w.Name == "" && err == nil {
			w.Name = shownURL(u)
		}
		if j, ok := seen[w.Name]; ok {
			bad("name %q is already used by alerts.webhooks[%d]", w.Name, j)
		}
		seen[w.Name] = i
		switch {
		case w.Secret != "" && w.SecretFile != "":
			bad("secret and secret_file: give one")
		case w.SecretFile != "":
			b, err := os.ReadFile(w.SecretFile)
			if err != nil {
				bad("secret_file: %v", err)
				break
			}
			w.Secret, w.SecretFile = strings.TrimSpace(string(b)), ""
			if len(w.Secret) < minSecret {
				bad("the secret in secret_file is shorter than %d bytes", minSecret)
			}
		case w.Secret == "":
			bad("secret (or secret_file) is required: receivers verify the signature with it")
		case len(w.Secret) < minSecret:
			bad("secret is shorter than %d bytes", minSecret)
		}
		for _, e := range w.Events {
			if !slices.Contains(Types, e) {
				bad("unknown event %q (want one of %s)", e, typeList())
			}
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"offline_grace", c.OfflineGrace}, {"retention", c.Retention}, {"max_age", c.MaxAge}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%w: alerts.%s is negative", ErrConfig, d.name))
		}
	}
	if c.Retention > 0 && c.Retention < time.Hour {
		errs = append(errs, fmt.Errorf("%w: alerts.retention %s is under an hour (a restarted rollout engine emits a recent halt again, and a row kept that long makes the repeat a no-op)", ErrConfig, c.Retention))
	}
	return errors.Join(errs...)
}

func typeList() string {
	s := make([]string, len(Types))
	for i, t := range Types {
		s[i] = string(t)
	}
	return strings.Join(s, ", ")
}

// wants reports whether w subscribes to t.
func (w *Webhook) wants(t Type) bool { return len(w.Events) == 0 || slices.Contains(w.Events, t) }

// Event is one thing that happened. Build one with the constructors
// (DriftEvent, RolloutHaltedEvent, ...), which set ID and Subject.
type Event struct {
	Type Type
	// ID identifies the event: emitting one ID twice delivers it once. It
	// must be the same wherever the same happening is seen (a rollout
	// id, a device and the time it went offline); empty means a random id.
	ID string
	// Subject is what the event is about, for Cancel: a device id, a
	// rollout id.
	Subject string
	// Time is when it happened; zero means now.
	Time time.Time
	// Delay holds the delivery until Time+Delay; Cancel withdraws the
	// event until then.
	Delay time.Duration
	// Data is the event's payload, the body's "data" (JSON).
	Data any
}

// Body is the JSON document posted for an event.
type Body struct {
	// ID is the event's id, the same for every webhook.
	ID    string    `json:"id"`
	Event Type      `json:"event"`
	Time  time.Time `json:"time"`
	Fleet string    `json:"fleet"`
	Data  any       `json:"data"`
}

// Options for New. Registry and Fleet are required.
type Options struct {
	Registry *registry.Registry
	Fleet    string
	Config   Config
	// ReplicaID and LeaseTTL: this replica's name in the delivery lease
	// on PostgreSQL and the lease's time to live (0 means 10 s).
	ReplicaID string
	LeaseTTL  time.Duration
	// Timeout bounds one POST; 0 means 10 s.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between retries of one
	// row; 0 means 1 s and 5 minutes.
	MinBackoff, MaxBackoff time.Duration
	// MaxRejects: attempts before a row answered with a 4xx (other than
	// 408 and 429) or 3xx fails; 0 means 3.
	MaxRejects int
	// Poll: how often a webhook with nothing pending looks again for rows
	// emitted by another replica; 0 means 1 s.
	Poll time.Duration
	// Client posts; nil means a client that follows no redirects.
	Client *http.Client
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Outbox emits events into the registry's outbox and delivers them. Its
// methods are safe for concurrent use; a nil *Outbox emits nothing.
type Outbox struct {
	opts  Options
	reg   *registry.Registry
	hooks []*hook
	log   *slog.Logger
}

// hook is a configured webhook and the channel that wakes its worker.
type hook struct {
	Webhook
	wake chan struct{}
}

// New checks the options and the configuration (Config.Validate).
func New(opts Options) (*Outbox, error) {
	if opts.Registry == nil || opts.Fleet == "" {
		return nil, errors.New("alerts: Registry and Fleet are required")
	}
	if err := opts.Config.Validate(); err != nil {
		return nil, err
	}
	c := &opts.Config
	if c.OfflineGrace == 0 {
		c.OfflineGrace = 5 * time.Minute
	}
	if c.Retention == 0 {
		c.Retention = 7 * 24 * time.Hour
	}
	if c.MaxAge == 0 {
		c.MaxAge = 72 * time.Hour
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 10 * time.Second
	}
	if opts.ReplicaID == "" {
		opts.ReplicaID = registry.NewID("replica-")[:20]
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Minute
	}
	if opts.MaxRejects <= 0 {
		opts.MaxRejects = 3
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	if opts.Client == nil {
		opts.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	o := &Outbox{opts: opts, reg: opts.Registry, log: opts.Logger}
	for _, w := range c.Webhooks {
		o.hooks = append(o.hooks, &hook{Webhook: w, wake: make(chan struct{}, 1)})
	}
	return o, nil
}

// OfflineGrace is the configured offline grace (for the caller that emits
// DeviceOffline).
func (o *Outbox) OfflineGrace() time.Duration {
	if o == nil {
		return 0
	}
	return o.opts.Config.OfflineGrace
}

// Wants reports whether a webhook subscribes to t: when none does, Emit
// and Cancel of t do nothing and cost nothing.
func (o *Outbox) Wants(t Type) bool {
	return o != nil && slices.ContainsFunc(o.hooks, func(h *hook) bool { return h.wants(t) })
}

// Emit stores ev for every webhook that subscribes to its type and
// returns once that is durable. An event ID stored already adds nothing.
// With no matching webhook it does nothing.
func (o *Outbox) Emit(ctx context.Context, ev Event) error {
	if err := ctx.Err(); err != nil && o.Wants(ev.Type) {
		return fmt.Errorf("alerts: emit %s: %w", ev.Type, err)
	}
	rows, err := o.Rows(ev)
	if err != nil || len(rows) == 0 {
		return err
	}
	added, err := o.reg.EnqueueAlerts(rows)
	if err != nil {
		return fmt.Errorf("alerts: emit %s: %w", ev.Type, err)
	}
	if len(added) > 0 {
		o.Wake(added...)
		o.log.Info("alert emitted", "event", ev.Type, "id", ev.ID, "webhooks", len(added))
	}
	return nil
}

// Rows are the outbox rows of ev, one per webhook that subscribes to its
// type (none without one), for a caller that stores them in its own
// transaction (registry.Options.AuditBreakAlerts) and then calls Wake.
func (o *Outbox) Rows(ev Event) ([]registry.AlertDelivery, error) {
	if !o.Wants(ev.Type) {
		return nil, nil
	}
	now := o.opts.Now().UTC()
	if ev.Time.IsZero() {
		ev.Time = now
	}
	ev.Time = ev.Time.UTC()
	if ev.ID == "" {
		ev.ID = registry.NewID(string(ev.Type) + "/")
	}
	body, err := json.Marshal(Body{ID: ev.ID, Event: ev.Type, Time: ev.Time, Fleet: o.opts.Fleet, Data: ev.Data})
	if err != nil {
		return nil, fmt.Errorf("alerts: emit %s: %w", ev.Type, err)
	}
	var rows []registry.AlertDelivery
	for _, h := range o.hooks {
		if h.wants(ev.Type) {
			rows = append(rows, registry.AlertDelivery{Webhook: h.Name, EventID: ev.ID, Event: string(ev.Type), Subject: ev.Subject,
				Key: IdempotencyKey(h.Name, ev.ID), Body: body, Created: now, Due: ev.Time.Add(ev.Delay)})
		}
	}
	return rows, nil
}

// Wake tells the named webhooks' workers (every webhook's without names)
// that rows were added; this replica's workers deliver them at once, any
// other's on its next poll.
func (o *Outbox) Wake(webhooks ...string) {
	if o == nil {
		return
	}
	for _, h := range o.hooks {
		if len(webhooks) == 0 || slices.Contains(webhooks, h.Name) {
			select {
			case h.wake <- struct{}{}:
			default:
			}
		}
	}
}

// Cancel withdraws the events of type t about subject that are still held
// by their Delay, and returns how many deliveries it withdrew.
func (o *Outbox) Cancel(ctx context.Context, t Type, subject string) (int, error) {
	if !o.Wants(t) {
		return 0, nil
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("alerts: cancel %s: %w", t, err)
	}
	n, err := o.reg.CancelAlerts(string(t), subject, o.opts.Now())
	if err != nil {
		return 0, fmt.Errorf("alerts: cancel %s: %w", t, err)
	}
	if n > 0 {
		o.log.Info("alert withdrawn", "event", t, "subject", subject, "deliveries", n)
	}
	return n, nil
}

// Deliveries lists the outbox's rows, newest first (the admin API's GET
// /v1/alerts/deliveries).
func (o *Outbox) Deliveries(q registry.AlertQuery) ([]registry.AlertDelivery, error) {
	if o == nil {
		return nil, nil
	}
	ds, err := o.reg.AlertDeliveries(q)
	if err != nil {
		return nil, fmt.Errorf("alerts: %w", err)
	}
	return ds, nil
}

// IdempotencyKey is the Outpost-Idempotency-Key of event id for webhook:
// stable across attempts and restarts, different per webhook.
func IdempotencyKey(webhook, id string) string {
	h := sha256.Sum256([]byte(webhook + "\x00" + id))
	return hex.EncodeToString(h[:16])
}
