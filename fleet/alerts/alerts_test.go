package alerts

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/internal/freeport"
	"github.com/outpost-edge/outpost/internal/testpg"
	"github.com/stretchr/testify/require"
)

func TestMain(m *testing.M) { os.Exit(testpg.Main(m)) }

const secret = "0123456789abcdef-test-secret"

func TestConfigValidate(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "secret")
	require.NoError(t, os.WriteFile(good, []byte(secret+"\n"), 0o600))
	short := filepath.Join(dir, "short")
	require.NoError(t, os.WriteFile(short, []byte("abc"), 0o600))
	for _, tc := range []struct {
		name string
		hook Webhook
		want string // "" for valid
	}{
		{"valid", Webhook{URL: "https://ml.example/retrain", Secret: secret, Events: []Type{Drift}}, ""},
		{"secret file", Webhook{URL: "http://127.0.0.1:9/x", SecretFile: good}, ""},
		{"no url", Webhook{Secret: secret}, "alerts.webhooks[0]: url is required"},
		{"bad scheme", Webhook{URL: "ftp://x/y", Secret: secret}, `url "ftp://x/y" is not an http:// or https:// URL`},
		{"no host", Webhook{URL: "http:///y", Secret: secret}, "is not an http:// or https:// URL"},
		{"no secret", Webhook{URL: "http://x/"}, "secret (or secret_file) is required"},
		{"both secrets", Webhook{URL: "http://x/", Secret: secret, SecretFile: good}, "secret and secret_file: give one"},
		{"short secret", Webhook{URL: "http://x/", Secret: "abc"}, "secret is shorter than 16 bytes"},
		{"short secret file", Webhook{URL: "http://x/", SecretFile: short}, "the secret in secret_file is shorter than 16 bytes"},
		{"missing secret file", Webhook{URL: "http://x/", SecretFile: filepath.Join(dir, "nope")}, "secret_file: open"},
		{"unknown event", Webhook{URL: "http://x/", Secret: secret, Events: []Type{"drifted"}},
			`unknown event "drifted" (want one of drift, rollout_halted, device_offline, audit_chain_broken)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Config{Webhooks: []Webhook{tc.hook}}
			err := c.Validate()
			if tc.want == "" {
				require.NoError(t, err)
				require.Equal(t, tc.hook.URL, c.Webhooks[0].Name, "the name defaults to the URL")
				require.Equal(t, secret, c.Webhooks[0].Secret)
				return
			}
			require.ErrorIs(t, err, ErrConfig)
			require.Contains(t, err.Error(), tc.want)
		})
	}
	c := Config{Webhooks: []Webhook{{Name: "a", URL: "http://x/", Secret: secret}, {Name: "a", URL: "http://y/", Secret: secret}}}
	require.ErrorContains(t, c.Validate(), `alerts.webhooks[1]: name "a" is already used by alerts.webhooks[0]`)
	c = Config{OfflineGrace: -time.Second}
	require.ErrorContains(t, c.Validate(), "alerts.offline_grace is negative")
	c = Config{Retention: time.Minute}
	require.ErrorContains(t, c.Validate(), "alerts.retention 1m0s is under an hour")
	// The default name is shown to viewers: without the URL's user and query.
	c = Config{Webhooks: []Webhook{{URL: "https://bot:pw@hooks.example/in?token=hush-hush", Secret: secret}}}
	require.NoError(t, c.Validate())
	require.Equal(t, "https://hooks.example/in", c.Webhooks[0].Name)
}

func TestSignVerify(t *testing.T) {
	body := []byte(`{"id":"x","event":"drift"}`)
	now := time.Unix(1_800_000_000, 0)
	sig := Sign([]byte(secret), now, body)
	require.NoError(t, Verify([]byte(secret), sig, body, now.Add(time.Minute), 5*time.Minute))
	// A receiver that knows nothing of this package computes the same.
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte("1800000000." + string(body)))
	require.Equal(t, "t=1800000000,sha256="+hex.EncodeToString(m.Sum(nil)), sig)

	require.ErrorIs(t, Verify([]byte(secret), sig, append(body, ' '), now, time.Minute), ErrSignature)
	require.ErrorIs(t, Verify([]byte("another secret of some length"), sig, body, now, time.Minute), ErrSignature)
	require.ErrorIs(t, Verify([]byte(secret), sig, body, now.Add(10*time.Minute), 5*time.Minute), ErrStale)
	// Moving the timestamp breaks the signature.
	forged := strings.Replace(sig, "t=1800000000", "t=1800000600", 1)
	require.ErrorIs(t, Verify([]byte(secret), forged, body, now.Add(10*time.Minute), 5*time.Minute), ErrSignature)
	for _, h := range []string{"", "t=1", "sha256=00", "t=x,sha256=zz"} {
		require.ErrorIs(t, Verify([]byte(secret), h, body, now, time.Minute), ErrSignature, "header %q", h)
	}
}

// receiver is a real HTTP server on a loopback port that records every
// request; it can be taken down (nothing listens) and brought back on the
// same address, or told to answer a status.
type receiver struct {
	t    *testing.T
	addr string

	mu     sync.Mutex // guards the fields below
	srv    *http.Server
	status int // answer; 0 means 200
	// redirect, when set, is where a 302 answer sends the caller.
	redirect string
	got      []delivery
	notify   chan struct{}
}

type delivery struct {
	key, event, sig string
	attempt         string
	body            []byte
	sigErr          error
	status          int
}

func newReceiver(t *testing.T) *receiver {
	// A port below the ephemeral range: while the receiver is down, no
	// outgoing connection of another test takes it as its source port.
	a, err := freeport.Addr()
	require.NoError(t, err)
	l, err := net.Listen("tcp", a)
	require.NoError(t, err)
	rc := &receiver{t: t, addr: l.Addr().String(), notify: make(chan struct{}, 1)}
	rc.serve(l)
	t.Cleanup(rc.down)
	return rc
}

func (rc *receiver) url() string { return "http://" + rc.addr + "/hook" }

func (rc *receiver) serve(l net.Listener) {
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		d := delivery{key: r.Header.Get(HeaderKey), event: r.Header.Get(HeaderEvent), sig: r.Header.Get(HeaderSignature),
			attempt: r.Header.Get(HeaderAttempt), body: b}
		d.sigErr = Verify([]byte(secret), d.sig, b, time.Now(), 5*time.Minute)
		rc.mu.Lock()
		d.status = rc.status
		if d.status == 0 {
			d.status = http.StatusOK
		}
		redirect := rc.redirect
		if redirect != "" {
			d.status = http.StatusFound
		}
		rc.got = append(rc.got, d)
		rc.mu.Unlock()
		select {
		case rc.notify <- struct{}{}:
		default:
		}
		if redirect != "" {
			http.Redirect(w, r, redirect, http.StatusFound)
			return
		}
		w.WriteHeader(d.status)
	})}
	rc.mu.Lock()
	rc.srv = srv
	rc.mu.Unlock()
	go func() { _ = srv.Serve(l) }() // ends with down's Close
}

// down closes the listener and every connection: connections are refused.
func (rc *receiver) down() {
	rc.mu.Lock()
	srv := rc.srv
	rc.srv = nil
	rc.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// up listens again on the same address.
func (rc *receiver) up() {
	l, err := net.Listen("tcp", rc.addr)
	require.NoError(rc.t, err)
	rc.serve(l)
}

func (rc *receiver) setStatus(s int) {
	rc.mu.Lock()
	rc.status = s
	rc.mu.Unlock()
}

func (rc *receiver) deliveries() []delivery {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]delivery(nil), rc.got...)
}

// waitFor waits until cond holds over the deliveries, failing after a
// minute (a bound for a loaded machine, not a timing assertion).
func (rc *receiver) waitFor(what string, cond func([]delivery) bool) []delivery {
	rc.t.Helper()
	deadline := time.After(time.Minute)
	for {
		ds := rc.deliveries()
		if cond(ds) {
			return ds
		}
		select {
		case <-rc.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			rc.t.Fatalf("receiver: %s: not within a minute; got %d deliveries", what, len(ds))
		}
	}
}

// accepted returns the 2xx deliveries.
func accepted(ds []delivery) []delivery {
	var out []delivery
	for _, d := range ds {
		if d.status < 300 {
			out = append(out, d)
		}
	}
	return out
}

func openStore(t *testing.T, store string) *registry.Registry {
	reg, err := registry.Open(t.TempDir(), registry.Options{Store: store})
	require.NoError(t, err)
	t.Cleanup(func() { reg.Close() })
	return reg
}

func newOutbox(t *testing.T, reg *registry.Registry, hooks []Webhook, opts Options) *Outbox {
	t.Helper()
	opts.Registry, opts.Fleet = reg, "acme"
	opts.Config.Webhooks = hooks
	if opts.MinBackoff == 0 {
		opts.MinBackoff, opts.MaxBackoff = 20*time.Millisecond, 200*time.Millisecond
	}
	if opts.Poll == 0 {
		opts.Poll = 50 * time.Millisecond
	}
	o, err := New(opts)
	require.NoError(t, err)
	return o
}

// run runs o until the test ends and returns a stop that waits for Run.
func run(t *testing.T, o *Outbox) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

type seqData struct {
	Seq int `json:"seq"`
}

func seqOf(t *testing.T, d delivery) int {
	var b struct {
		Data seqData `json:"data"`
	}
	require.NoError(t, json.Unmarshal(d.body, &b))
	return b.Data.Seq
}

// TestReceiverDownThenBack: events emitted while the receiver does not
// listen are retried until it does, then delivered in emission order,
// each with a valid signature and its own stable key; the outbox shows
// them delivered.
func TestReceiverDownThenBack(t *testing.T) {
	reg := openStore(t, "")
	rc := newReceiver(t)
	rc.down()
	// A token in the URL is the receiver's secret: the errors viewers can
	// read (GET /v1/alerts/deliveries) must not show it.
	o := newOutbox(t, reg, []Webhook{{Name: "ml", URL: rc.url() + "?token=hush-hush", Secret: secret}}, Options{})
	run(t, o)
	const n = 20
	for i := range n {
		require.NoError(t, o.Emit(context.Background(), Event{Type: Drift, ID: "e" + string(rune('a'+i)), Data: seqData{i}}))
	}
	// Wait for several failed attempts of the head, in the store.
	deadline := time.Now().Add(time.Minute)
	for {
		d, err := reg.NextAlert("ml", time.Now().Add(time.Hour))
		require.NoError(t, err)
		if d.Attempts >= 3 {
			require.Equal(t, "ea", d.EventID, "the head keeps its place while it is retried")
			require.Contains(t, d.LastError, strings.TrimPrefix(rc.url(), "http://"))
			require.NotContains(t, d.LastError, "hush-hush")
			break
		}
		require.False(t, time.Now().After(deadline), "no attempts recorded")
		time.Sleep(20 * time.Millisecond)
	}
	rc.up()
	ds := rc.waitFor("all delivered", func(ds []delivery) bool { return len(ds) >= n })
	require.Len(t, ds, n, "each event posted once after the receiver came back")
	keys := map[string]bool{}
	for i, d := range ds {
		require.NoError(t, d.sigErr, "delivery %d", i)
		require.Equal(t, i, seqOf(t, d), "delivered in emission order")
		require.Equal(t, string(Drift), d.event)
		require.Equal(t, IdempotencyKey("ml", "e"+string(rune('a'+i))), d.key)
		require.False(t, keys[d.key], "key %s twice", d.key)
		keys[d.key] = true
	}
	require.NotEqual(t, "1", ds[0].attempt, "the head was attempted while the receiver was down")
	var b Body
	require.NoError(t, json.Unmarshal(ds[0].body, &b))
	require.Equal(t, "ea", b.ID)
	require.Equal(t, "acme", b.Fleet)
	waitState(t, reg, n, registry.AlertDelivered)
}

// waitState waits until the outbox holds n rows, all in state.
func waitState(t *testing.T, reg *registry.Registry, n int, state string) []registry.AlertDelivery {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ds, err := reg.AlertDeliveries(registry.AlertQuery{Limit: 1000})
		require.NoError(t, err)
		ok := len(ds) == n
		for _, d := range ds {
			ok = ok && d.State == state
		}
		if ok {
			return ds
		}
		if time.Now().After(deadline) {
			t.Fatalf("outbox: want %d rows %s, got %+v", n, state, ds)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRetryPolicy: 5xx and 429 are retried (with the same key) until
// accepted; a 4xx fails the row after MaxRejects attempts and the next
// event goes on.
func TestRetryPolicy(t *testing.T) {
	reg := openStore(t, "")
	rc := newReceiver(t)
	o := newOutbox(t, reg, []Webhook{{Name: "ml", URL: rc.url(), Secret: secret}}, Options{MaxRejects: 2})
	run(t, o)

	rc.setStatus(http.StatusServiceUnavailable)
	require.NoError(t, o.Emit(context.Background(), Event{Type: RolloutHalted, ID: "r1", Data: seqData{1}}))
	rc.waitFor("two 503s", func(ds []delivery) bool { return len(ds) >= 2 })
	rc.setStatus(http.StatusTooManyRequests)
	rc.waitFor("a 429", func(ds []delivery) bool { return ds[len(ds)-1].status == http.StatusTooManyRequests })
	rc.setStatus(0)
	ds := rc.waitFor("accepted", func(ds []delivery) bool { return len(accepted(ds)) == 1 })
	for _, d := range ds {
		require.Equal(t, ds[0].key, d.key, "one key across retries")
	}

	rc.setStatus(http.StatusBadRequest)
	require.NoError(t, o.Emit(context.Background(), Event{Type: RolloutHalted, ID: "r2", Data: seqData{2}}))
	require.NoError(t, o.Emit(context.Background(), Event{Type: RolloutHalted, ID: "r3", Data: seqData{3}}))
	rc.waitFor("r2 rejected twice", func(ds []delivery) bool { return countKey(ds, IdempotencyKey("ml", "r2")) == 2 })
	rc.setStatus(0)
	rc.waitFor("r3 accepted", func(ds []delivery) bool { return len(accepted(ds)) == 2 })
	require.Equal(t, 2, countKey(rc.deliveries(), IdempotencyKey("ml", "r2")), "a rejected row is not posted again")
	rows, err := reg.AlertDeliveries(registry.AlertQuery{})
	require.NoError(t, err)
	require.Len(t, rows, 3)
	require.Equal(t, registry.AlertFailed, rows[1].State)
	require.Equal(t, 400, rows[1].LastStatus)
	require.Equal(t, 2, rows[1].Attempts)
}

// TestMaxAge: a row the receiver keeps refusing with a retryable answer is
// given up (failed, saying so) once the event is max_age old, so it does
// not block the webhook: the next event is delivered.
func TestMaxAge(t *testing.T) {
	reg := openStore(t, "")
	rc := newReceiver(t)
	o := newOutbox(t, reg, []Webhook{{Name: "ml", URL: rc.url(), Secret: secret}}, Options{Config: Config{MaxAge: 300 * time.Millisecond}})
	run(t, o)
	rc.setStatus(http.StatusServiceUnavailable)
	require.NoError(t, o.Emit(context.Background(), Event{Type: RolloutHalted, ID: "old", Data: seqData{1}}))
	// The receiver refuses until the head is given up.
	deadline := time.Now().Add(30 * time.Second)
	var old registry.AlertDelivery
	for {
		rows, err := reg.AlertDeliveries(registry.AlertQuery{})
		require.NoError(t, err)
		for _, r := range rows {
			if r.EventID == "old" {
				old = r
			}
		}
		if old.State == registry.AlertFailed {
			break
		}
		require.False(t, time.Now().After(deadline), "the head was never given up: %+v", old)
		time.Sleep(20 * time.Millisecond)
	}
	require.Contains(t, old.LastError, "given up after 300ms")
	require.GreaterOrEqual(t, old.Attempts, 2)
	rc.setStatus(0)
	require.NoError(t, o.Emit(context.Background(), Event{Type: RolloutHalted, ID: "next", Data: seqData{2}}))
	ds := rc.waitFor("the next row delivered", func(ds []delivery) bool { return len(accepted(ds)) >= 1 })
	require.Equal(t, IdempotencyKey("ml", "next"), accepted(ds)[0].key)
	require.Zero(t, countKey(accepted(ds), IdempotencyKey("ml", "old")), "the row given up was posted again")
}

// TestRedirectNotFollowed: a 3xx is an answer to refuse, not a place to
// go: the location is never posted to, and the row fails after MaxRejects
// attempts like any other refusal.
func TestRedirectNotFollowed(t *testing.T) {
	reg := openStore(t, "")
	elsewhere := newReceiver(t)
	rc := newReceiver(t)
	rc.mu.Lock()
	rc.redirect = elsewhere.url()
	rc.mu.Unlock()
	o := newOutbox(t, reg, []Webhook{{Name: "ml", URL: rc.url(), Secret: secret}}, Options{MaxRejects: 3})
	run(t, o)
	require.NoError(t, o.Emit(context.Background(), Event{Type: RolloutHalted, ID: "r1", Data: seqData{1}}))
	rows := waitState(t, reg, 1, registry.AlertFailed)
	require.Equal(t, 3, rows[0].Attempts)
	require.Equal(t, http.StatusFound, rows[0].LastStatus)
	require.Len(t, rc.deliveries(), 3)
	require.Empty(t, elsewhere.deliveries(), "the redirect was followed")
}

func countKey(ds []delivery, key string) int {
	n := 0
	for _, d := range ds {
		if d.key == key {
			n++
		}
	}
	return n
}

// TestDelayAndCancel: an event held by a delay and cancelled in time is
// never posted and does not hold back later events; one not cancelled is
// posted once its delay ends; events reach only the webhooks that
// subscribe to them; the same event ID emitted twice is posted once.
func TestDelayAndCancel(t *testing.T) {
	reg := openStore(t, "")
	rc, rc2 := newReceiver(t), newReceiver(t)
	o := newOutbox(t, reg, []Webhook{
		{Name: "ops", URL: rc.url(), Secret: secret, Events: []Type{DeviceOffline, RolloutHalted}},
		{Name: "ml", URL: rc2.url(), Secret: secret, Events: []Type{Drift}},
	}, Options{})
	run(t, o)
	ctx := context.Background()
	now := time.Now()
	require.NoError(t, o.Emit(ctx, DeviceOfflineEvent("gw-1", now, time.Hour, nil)))
	require.NoError(t, o.Emit(ctx, Event{Type: RolloutHalted, ID: "ro-1", Data: seqData{1}}))
	require.NoError(t, o.Emit(ctx, Event{Type: RolloutHalted, ID: "ro-1", Data: seqData{1}}))
	ds := rc.waitFor("the halt", func(ds []delivery) bool { return len(ds) >= 1 })
	require.Equal(t, string(RolloutHalted), ds[0].event, "the halt is not held back by the delayed event")
	n, err := o.Cancel(ctx, DeviceOffline, "gw-1")
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, o.Emit(ctx, DeviceOfflineEvent("gw-2", time.Now(), 300*time.Millisecond, map[string]string{"site": "a"})))
	ds = rc.waitFor("gw-2", func(ds []delivery) bool { return len(ds) >= 2 })
	require.Equal(t, string(DeviceOffline), ds[1].event)
	var b struct {
		Data DeviceData `json:"data"`
	}
	require.NoError(t, json.Unmarshal(ds[1].body, &b))
	require.Equal(t, "gw-2", b.Data.Device)
	require.Equal(t, "a", b.Data.Labels["site"])
	require.Empty(t, rc2.deliveries(), "ml subscribes to drift only")
	require.NoError(t, o.Emit(ctx, DriftEvent(DriftData{Model: "m", Version: "3", State: "drifting", Since: now,
		Features: []DriftFeature{{Name: "input0.mean", PSI: 0.4, JS: 0.2, Count: 1000, ReferenceCount: 500, Drifting: true}}})))
	rc2.waitFor("drift", func(ds []delivery) bool { return len(ds) == 1 })
	var rows []registry.AlertDelivery
	require.Eventually(t, func() bool {
		var err error
		rows, err = reg.AlertDeliveries(registry.AlertQuery{Webhook: "ops"})
		return err == nil && len(rows) == 3 && rows[0].State == registry.AlertDelivered
	}, time.Minute, 10*time.Millisecond, "ro-1 once, gw-1, gw-2 delivered")
	require.Equal(t, registry.AlertCancelled, rows[2].State, "gw-1")
	require.Len(t, rc.deliveries(), 2)
}

// TestReplicasDeliverOnce: two outboxes (two controller replicas) on one
// PostgreSQL store both emit and run; every event reaches the receiver,
// from one deliverer at a time, in order, none with a second key.
func TestReplicasDeliverOnce(t *testing.T) {
	url := testpg.Database(t)
	rc := newReceiver(t)
	hooks := []Webhook{{Name: "ml", URL: rc.url(), Secret: secret}}
	var obs []*Outbox
	var stops []func()
	for _, id := range []string{"r1", "r2"} {
		o := newOutbox(t, openStore(t, url), hooks, Options{ReplicaID: id, LeaseTTL: 600 * time.Millisecond})
		obs = append(obs, o)
		stops = append(stops, run(t, o))
	}
	const n = 30
	for i := range n {
		require.NoError(t, obs[i%2].Emit(context.Background(), Event{Type: Drift, ID: "d" + strings.Repeat("x", i), Data: seqData{i}}))
		if i == n/2 {
			stops[0]() // one replica stops half way: the other carries on
		}
	}
	// Every event, counted once: the replica stopped half way may have
	// delivered one whose row it could not mark, which the other delivers
	// again (at least once, under the same key).
	ds := rc.waitFor("every event delivered", func(ds []delivery) bool {
		distinct := map[string]bool{}
		for _, d := range accepted(ds) {
			distinct[d.key] = true
		}
		return len(distinct) >= n
	})
	seen := map[int]string{}
	for _, d := range ds {
		s := seqOf(t, d)
		if k, ok := seen[s]; ok {
			require.Equal(t, k, d.key, "event %d under two keys", s)
		}
		seen[s] = d.key
	}
	require.Len(t, seen, n)
}

// TestRemovedWebhook: the pending rows of a webhook the running
// configuration no longer names are marked failed when delivery starts,
// and the other webhooks' rows are delivered.
func TestRemovedWebhook(t *testing.T) {
	reg := openStore(t, "")
	rc := newReceiver(t)
	old := newOutbox(t, reg, []Webhook{{Name: "old", URL: "http://127.0.0.1:9/", Secret: secret}, {Name: "kept", URL: rc.url(), Secret: secret}}, Options{})
	require.NoError(t, old.Emit(context.Background(), Event{Type: Drift, ID: "x"}))
	run(t, newOutbox(t, reg, []Webhook{{Name: "kept", URL: rc.url(), Secret: secret}}, Options{}))
	rc.waitFor("kept's delivery", func(ds []delivery) bool { return len(ds) == 1 })
	require.Eventually(t, func() bool {
		rows, err := reg.AlertDeliveries(registry.AlertQuery{Webhook: "old"})
		return err == nil && len(rows) == 1 && rows[0].State == registry.AlertFailed && rows[0].LastError == "webhook no longer configured"
	}, time.Minute, 10*time.Millisecond)
}

// FuzzVerify: Verify never panics, and a header it accepts is bound to
// the body and the secret (seeded from TestSignVerify's headers).
func FuzzVerify(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"id":"x","event":"drift"}`)
	for _, h := range []string{Sign([]byte(secret), now, body), "", "t=1", "sha256=00", "t=x,sha256=zz", "t=1800000000,sha256=" + strings.Repeat("0", 64)} {
		f.Add(h, body)
	}
	f.Fuzz(func(t *testing.T, header string, b []byte) {
		if Verify([]byte(secret), header, b, now, time.Hour) != nil {
			return
		}
		// Accepted: the signature binds this body and this secret only.
		if Verify([]byte(secret), header, append(b, 'x'), now, time.Hour) == nil {
			t.Fatalf("%q verifies %q and the same with one byte more", header, b)
		}
		if Verify([]byte(secret+"!"), header, b, now, time.Hour) == nil {
			t.Fatalf("%q verifies %q under another secret", header, b)
		}
	})
}
