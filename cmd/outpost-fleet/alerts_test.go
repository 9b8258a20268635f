package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/internal/testpg"
	"github.com/outpost-edge/outpost/protocol"
)

// hookReceiver is the webhook's receiver: a real HTTP server on loopback
// that answers 503 while down, records every request it accepts, and can
// run a function (a SIGKILL of the controller) before answering the nth.
type hookReceiver struct {
	secret []byte

	mu       sync.Mutex // guards the fields below
	down     bool
	got      []hookPost
	rejected int
	before   map[int]func() // run before answering the nth accepted post (from 1)
}

type hookPost struct {
	key, event, id string
	sigErr         error
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	var body alerts.Body
	_ = json.Unmarshal(b, &body)
	p := hookPost{key: r.Header.Get(alerts.HeaderKey), event: r.Header.Get(alerts.HeaderEvent), id: body.ID,
		sigErr: alerts.Verify(h.secret, r.Header.Get(alerts.HeaderSignature), b, time.Now(), 5*time.Minute)}
	h.mu.Lock()
	if h.down {
		h.rejected++
		h.mu.Unlock()
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
		return
	}
	h.got = append(h.got, p)
	fn := h.before[len(h.got)]
	h.mu.Unlock()
	if fn != nil {
		fn() // the controller dies before it reads the answer
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *hookReceiver) state() (posts []hookPost, rejected int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookPost(nil), h.got...), h.rejected
}

// TestWebhooksSurviveSIGKILL: the real outpost-fleet with a fleet.yaml
// naming a receiver. Devices go offline (device_offline events) while the
// receiver answers 503; the controller is SIGKILLed with every delivery
// pending and started again; the receiver comes back, and the controller
// is SIGKILLed once more while a delivery waits for its answer, and
// started again. Every event arrives, signed, each under one key (the one
// whose answer was lost arrives twice with the same key: at least once).
// On the embedded store and on PostgreSQL (where the restarted process
// waits for the killed one's delivery lease to expire).
func TestWebhooksSurviveSIGKILL(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { webhooksSurviveSIGKILL(t, nil) })
	t.Run("postgres", func(t *testing.T) {
		webhooksSurviveSIGKILL(t, []string{"--store", testpg.Database(t), "--lease-ttl", "1s"})
	})
}

func webhooksSurviveSIGKILL(t *testing.T, storeArgs []string) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	const secret = "webhook-secret-for-the-sigkill-test"
	rc := &hookReceiver{secret: []byte(secret), down: true, before: map[int]func(){}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: rc, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(l) }()
	t.Cleanup(func() { hs.Close() })

	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "fleet.yaml")
	yaml := fmt.Sprintf("alerts:\n  offline_grace: 1ms\n  webhooks:\n    - name: ml\n      url: http://%s/hook\n      secret_file: %s\n      events: [device_offline]\n", l.Addr(), secretFile)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--config", cfg, "--open-broker", "--log-level", "debug"}, storeArgs...)
	srv := startServe(t, bin, serveOptions{Fleet: "acme", Args: args})

	// n devices come online and go offline: n events.
	const n = 12
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + srv.mqtt).SetClientID("webhook-test"))
	if tok := cl.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	for i := range n {
		tp, err := protocol.DeviceTopics("acme", fmt.Sprintf("gw-%02d", i))
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range []string{protocol.StateOnline, protocol.StateOffline} {
			if tok := cl.Publish(tp.State, 1, true, st); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				t.Fatalf("publish: %v", tok.Error())
			}
		}
	}
	cl.Disconnect(100)
	deliveries := func(s *fleetServer) []map[string]any {
		var out admin.DeliveryList
		resp, err := http.Get(s.admin + "/v1/alerts/deliveries?limit=1000")
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&out)
		var rows []map[string]any
		for _, d := range out.Deliveries {
			rows = append(rows, map[string]any{"state": d.State, "attempts": d.Attempts, "key": d.Key})
		}
		return rows
	}
	waitUntil(t, "every event in the outbox and tried", func() bool {
		rows := deliveries(srv)
		_, rejected := rc.state()
		return len(rows) == n && rejected >= 2
	})

	// SIGKILL with every delivery pending, then start again on the same data.
	srv.kill(t)
	srv = srv.restart(t, bin)
	posts, _ := rc.state()
	if len(posts) != 0 {
		t.Fatalf("%d posts accepted while the receiver was down", len(posts))
	}

	// The receiver comes back; the controller dies while the 4th accepted
	// delivery waits for its answer.
	killed := make(chan struct{})
	victim := srv
	rc.mu.Lock()
	rc.before[4] = func() { victim.kill(t); close(killed) }
	rc.down = false
	rc.mu.Unlock()
	select {
	case <-killed:
	case <-time.After(2 * time.Minute):
		t.Fatal("the 4th delivery never came")
	}
	srv = srv.restart(t, bin)

	waitUntil(t, "every event delivered", func() bool {
		posts, _ := rc.state()
		ids := map[string]bool{}
		for _, p := range posts {
			ids[p.id] = true
		}
		return len(ids) == n
	})
	waitUntil(t, "the outbox says delivered", func() bool {
		rows := deliveries(srv)
		for _, r := range rows {
			if r["state"] != "delivered" {
				return false
			}
		}
		return len(rows) == n
	})
	posts, _ = rc.state()
	keyOf, count := map[string]string{}, map[string]int{}
	for _, p := range posts {
		if p.sigErr != nil {
			t.Errorf("event %s: signature: %v", p.id, p.sigErr)
		}
		if p.event != string(alerts.DeviceOffline) {
			t.Errorf("event %s: Outpost-Event %q", p.id, p.event)
		}
		if k, ok := keyOf[p.id]; ok && k != p.key {
			t.Errorf("event %s under two keys: %s and %s", p.id, k, p.key)
		}
		keyOf[p.id] = p.key
		count[p.key]++
	}
	if k := posts[3].key; count[k] != 2 {
		t.Errorf("the delivery whose answer was lost arrived %d times, want 2 (same key)", count[k])
	}
	for k, c := range count {
		if c > 1 && k != posts[3].key {
			t.Errorf("key %s arrived %d times", k, c)
		}
	}
	t.Logf("%d events, %d posts accepted", n, len(posts))
	out := cli(t, bin, 0, "alerts", "--admin", srv.admin, "--state", "delivered")
	if strings.Count(out, "device_offline") != n || !strings.Contains(out, "gw-03") {
		t.Errorf("alerts lists:\n%s", out)
	}
	var list admin.DeliveryList
	if err := json.Unmarshal([]byte(cli(t, bin, 0, "alerts", "--admin", srv.admin, "--limit", "5", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Deliveries) != 5 || list.Next == 0 {
		t.Errorf("alerts -o json --limit 5: %d deliveries, next %d", len(list.Deliveries), list.Next)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 2 minutes", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill SIGKILLs serve and waits for it to be gone.
func (s *fleetServer) kill(tb testing.TB) {
	_ = s.cmd.Process.Kill()
	err := <-s.exited
	s.exited <- err
}

// restart starts serve again from bin on the same keys, data, addresses
// and arguments as s.
func (s *fleetServer) restart(tb testing.TB, bin string) *fleetServer {
	tb.Helper()
	n := &fleetServer{dir: s.dir, keys: s.keys, mqtt: s.mqtt, admin: s.admin, logs: s.logs, exited: make(chan error, 1)}
	n.cmd = exec.Command(bin, s.cmd.Args[1:]...)
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	fmt.Fprintf(n.logs, "--- restart ---\n")
	if err := n.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	go func() { n.exited <- n.cmd.Wait() }()
	tb.Cleanup(func() {
		_ = n.cmd.Process.Kill()
		err := <-n.exited
		n.exited <- err
	})
	waitHTTP(tb, n.admin+"/v1/health")
	return n
}

// TestAlertsConfigErrors: a bad alerts section stops serve before it
// starts, with a message naming the file, the webhook and the problem.
func TestAlertsConfigErrors(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct{ yaml, want string }{
		{"alerts:\n  webhooks:\n    - url: ftp://x/\n      secret: 0123456789abcdef0\n", `alerts.webhooks[0]: url "ftp://x/" is not an http:// or https:// URL`},
		{"alerts:\n  webhooks:\n    - url: http://x/\n", "alerts.webhooks[0]: secret (or secret_file) is required"},
		{"alerts:\n  webhooks:\n    - url: http://x/\n      secret: 0123456789abcdef0\n      events: [drfit]\n", `unknown event "drfit"`},
		{"alerts:\n  webhook:\n    - url: http://x/\n", `unknown key "webhook"`},
	} {
		cfg := filepath.Join(dir, "fleet.yaml")
		if err := os.WriteFile(cfg, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, stderr := cliEnv(t, bin, nil, 2, "serve", "--config", cfg, "--keys", filepath.Join(dir, "keys"))
		if !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, cfg) {
			t.Errorf("config %q: stderr %q, want it to name %s and say %q", tc.yaml, stderr, cfg, tc.want)
		}
	}
}

// TestDriftConfigErrors: monitoring.drift values that cannot work are
// refused at start with what to write instead.
func TestDriftConfigErrors(t *testing.T) {
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct{ yaml, want string }{
		{"monitoring:\n  drift: {window: 7s}\n", "monitoring.drift: window 7s: want whole minutes, or a divisor of a minute in seconds"},
		{"monitoring:\n  drift: {window: 90s}\n", "monitoring.drift: window 1m30s"},
		{"monitoring:\n  drift: {js: 2}\n", "monitoring.drift: threshold js 2 is above 1"},
	} {
		cfg := filepath.Join(dir, "fleet.yaml")
		if err := os.WriteFile(cfg, []byte(tc.yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		_, stderr := cliEnv(t, bin, nil, 2, "serve", "--config", cfg, "--keys", filepath.Join(dir, "keys"))
		if !strings.Contains(stderr, tc.want) {
			t.Errorf("config %q: stderr %q, want %q", tc.yaml, stderr, tc.want)
		}
	}
}
