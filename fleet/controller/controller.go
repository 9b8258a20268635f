// Package controller is the one place that wires the fleet controller: the
// registry, the embedded broker (or an external one), the MQTT client that
// receives device status, state, acks, telemetry and chunk requests, the
// artifact server, the rollout engine and the admin API with the web
// console.
package controller

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/outpost-edge/outpost/fleet/admin"
	"github.com/outpost-edge/outpost/fleet/alerts"
	"github.com/outpost-edge/outpost/fleet/analysis"
	"github.com/outpost-edge/outpost/fleet/artifacts"
	"github.com/outpost-edge/outpost/fleet/broker"
	"github.com/outpost-edge/outpost/fleet/console"
	"github.com/outpost-edge/outpost/fleet/drift"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/rollout"
	"github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/protocol"
)

// Options configure a controller. Fleet, DataDir and Keys are required.
type Options struct {
	Fleet   string
	DataDir string
	// Store selects the registry's engine (registry.Options.Store): a
	// postgres:// URL, or empty for the embedded store in DataDir.
	Store string
	// Keys is the keys directory (keyring): its root verifies pushed
	// releases and its command-role keys sign commands.
	Keys string
	// Broker is an external broker URL (tcp://host:port, ssl://...); empty,
	// with no Brokers either, runs the embedded broker on ListenMQTT.
	Broker string
	// Brokers are more external broker URLs, tried after Broker in this
	// order: the nodes of one clustered broker. The controller fails over
	// between them.
	Brokers []string
	// ListenMQTT is the embedded broker's address (default 127.0.0.1:1883).
	ListenMQTT string
	// BrokerTLS, when set, makes the embedded broker speak TLS.
	BrokerTLS *tls.Config
	// BrokerUsers are legacy plain device passwords for the embedded
	// broker (fleet.yaml's mqtt.users); the registry's credentials
	// (devices enroll) replace them. Either locks the broker.
	BrokerUsers map[string]string
	// OpenBroker lets any client use any topic of the embedded broker,
	// whatever is enrolled: for demos on loopback only. Without it the
	// embedded broker is open only until the first device is enrolled.
	OpenBroker bool
	// Username and Password are the controller's own MQTT credentials on
	// an external broker. On the embedded broker the controller logs in
	// as broker.ControllerUser with a secret made at start and kept in
	// memory, and these are ignored. ClientTLS is the client's TLS.
	Username, Password string
	// ConnectTimeout bounds the first connection to the broker: a broker
	// that cannot be reached within it, or that refuses the controller's
	// login at all, is an error from Run. 0 means 30 seconds.
	ConnectTimeout time.Duration
	ClientTLS      *tls.Config
	// ClientID defaults to "outpost-fleet-<fleet>", followed by
	// "-<ReplicaID>" on a PostgreSQL store.
	ClientID string
	// ShareGroup, when set, subscribes to telemetry and chunk requests
	// with $share/<group>/, so several controller replicas split that
	// load. Status, state and acks reach every replica; the rollout
	// engine runs on one (leader.go). Chunk requests then come on a
	// second, clean-session connection (client id ClientID + "-req"):
	// a replica that dies leaves no session behind in the group for the
	// broker to keep queueing requests to (see dial).
	ShareGroup string
	// Admin is the admin API address (default 127.0.0.1:8490); AdminTLS,
	// if set, serves it over TLS.
	Admin    string
	AdminTLS *tls.Config
	// ChunkSize of pushed artifacts; BytesPerSecond paces chunk traffic.
	ChunkSize      int
	BytesPerSecond int64
	// CommandTTL, ResendAfter and Tick tune the rollout engine.
	CommandTTL, ResendAfter, Tick time.Duration
	// Analyzer judges rollouts' shadow, canary and wave analyses; nil
	// means fleet/analysis over the controller's store (tests give others).
	Analyzer rollout.Analyzer
	// DefaultAnalysis is the analysis config of rollouts with phases and
	// none of their own (fleet.yaml rollouts.analysis); nil refuses them.
	DefaultAnalysis *analysis.Config
	// AnalyzeEvery is how often a phase waiting for evidence is analysed
	// again (0: the engine's default).
	AnalyzeEvery time.Duration
	// ReplicaID names this process among the replicas on one PostgreSQL
	// store, in the rollout engine's lease; empty means a random id. Each
	// replica needs its own.
	ReplicaID string
	// LeaseTTL is how long the rollout engine's lease runs without a
	// renewal (0 means 10 s); the leader renews it every third of it, and
	// a standby takes over within about LeaseTTL plus a third of it after
	// the leader dies. Only the PostgreSQL store has a lease: on the
	// embedded store the one process runs the engine.
	LeaseTTL time.Duration
	// Alerts are the webhooks and their settings (fleet.yaml's alerts).
	Alerts alerts.Config
	// Drift configures drift detection (fleet.yaml's monitoring.drift).
	Drift DriftOptions
	// Retention is how long the telemetry the controller keeps lives
	// (zero fields: registry's defaults); a pass prunes it every
	// PruneEvery (0: 10 minutes), on the leader only when replicas share
	// a store.
	Retention  registry.Retention
	PruneEvery time.Duration
	// MaxSamples and MaxSampleBytes bound the kept sample records (0:
	// registry.DefaultMaxSamples, DefaultMaxSampleBytes).
	MaxSamples     int
	MaxSampleBytes int64
	// OnAuditChainBroken, if set, is told of every break of a device's
	// audit chain found at ingest (registry.Options.OnAuditChainBroken);
	// it must not block.
	OnAuditChainBroken func(registry.ChainBreak)
	Logger             *slog.Logger
}

// Controller is a running fleet controller.
type Controller struct {
	opts    Options
	log     *slog.Logger
	reg     *registry.Registry
	keys    *keyring.Keyring
	signers []ed25519.PrivateKey
	roots   [][]byte
	brk     *broker.Broker // nil with an external broker
	art     *artifacts.Server
	// eng serves the admin API (create, pause, status) and records acks;
	// on SQLite it also runs the rollouts. On PostgreSQL rollouts run in
	// leader, an engine on a Fenced view made for each lease holding.
	eng    *rollout.Engine
	leader atomic.Pointer[rollout.Engine] // nil while this replica does not hold the lease
	adm    *admin.Server
	alerts *alerts.Outbox
	refs   refCache       // reference profiles, for drift detection
	drift  *drift.Monitor // on the embedded store; with a lease, holdLease runs one

	urls []string // the brokers, in the order tried

	mu   sync.Mutex // guards conn
	conn *mqttConn  // the live connection, or nil

	msgsIn, msgsOut, bad atomic.Uint64
	started              time.Time
	ready                chan struct{}
	readyOnce            sync.Once
	queues               [workers]chan func()
	states               stateChecks   // "offline"s to check against the broker's retained state
	stopping             chan struct{} // closed when Run ends the workers
}

// New opens the registry and keys and prepares every part; listeners are
// opened here so their addresses are known before Run.
func New(opts Options) (*Controller, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Fleet == "" || opts.DataDir == "" || opts.Keys == "" {
		return nil, errors.New("controller: fleet, data dir and keys are required")
	}
	if err := opts.Drift.Validate(); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if _, err := protocol.ArtifactsReqTopic(opts.Fleet); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 30 * time.Second
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 10 * time.Second
	}
	if opts.LeaseTTL < minLeaseTTL {
		return nil, fmt.Errorf("controller: lease ttl %s is under %s", opts.LeaseTTL, minLeaseTTL)
	}
	if opts.ReplicaID == "" {
		opts.ReplicaID = registry.NewID("replica-")[:20]
	}
	c := &Controller{opts: opts, log: opts.Logger, started: time.Now(), ready: make(chan struct{})}
	var err error
	if c.keys, err = keyring.Open(opts.Keys, keyring.Options{}); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if c.signers, err = c.keys.Signers(protocol.CommandRole(&c.keys.Root().Doc)); err != nil {
		return nil, fmt.Errorf("controller: command keys: %w", err)
	}
	if c.roots, err = c.keys.Roots(); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if opts.PruneEvery <= 0 {
		c.opts.PruneEvery = 10 * time.Minute
	}
	if c.reg, err = registry.Open(opts.DataDir, registry.Options{Store: opts.Store, Logger: opts.Logger.With("component", "registry"),
		MaxSamples: opts.MaxSamples, MaxSampleBytes: opts.MaxSampleBytes, OnAuditChainBroken: c.onChainBreak, AuditBreakAlerts: c.breakAlerts,
		FineStep: opts.Drift.fineStep()}); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	fail := func(err error) (*Controller, error) {
		c.reg.Close()
		return nil, fmt.Errorf("controller: %w", err)
	}
	if c.opts.ClientID == "" {
		c.opts.ClientID = broker.ControllerUser + "-" + opts.Fleet
		if c.reg.Engine() == "postgres" {
			// Replicas share a broker: one client id each, or they take
			// each other's session.
			c.opts.ClientID += "-" + opts.ReplicaID
		}
	}
	for _, u := range append([]string{opts.Broker}, opts.Brokers...) {
		if u != "" && !slices.Contains(c.urls, u) {
			c.urls = append(c.urls, u)
		}
	}
	if len(c.urls) == 0 {
		if c.brk, err = broker.New(broker.Options{Addr: opts.ListenMQTT, TLS: opts.BrokerTLS, Fleet: opts.Fleet,
			Credentials: c.reg, Users: opts.BrokerUsers, Open: opts.OpenBroker,
			Logger: opts.Logger.With("component", "broker")}); err != nil {
			return fail(err)
		}
		c.urls = []string{c.brk.URL()}
		if opts.Username != "" {
			c.log.Warn("mqtt.username is for an external broker; on the embedded one the controller logs in with a secret of this process")
		}
		c.opts.Username, c.opts.Password = broker.ControllerUser, c.brk.ControllerPassword()
	}
	if c.art, err = artifacts.New(artifacts.Options{Fleet: opts.Fleet, Publisher: chunkPublisher{c}, Catalog: catalog{c.reg},
		BytesPerSecond: opts.BytesPerSecond, Logger: opts.Logger.With("component", "artifacts")}); err != nil {
		return fail(err)
	}
	if c.alerts, err = alerts.New(alerts.Options{Registry: c.reg, Fleet: opts.Fleet, Config: opts.Alerts, ReplicaID: opts.ReplicaID,
		LeaseTTL: opts.LeaseTTL, Logger: opts.Logger.With("component", "alerts")}); err != nil {
		return fail(err)
	}
	if c.opts.Analyzer == nil {
		an, err := analysis.New(analysis.Options{Store: c.reg, Reference: c.reference, Logger: opts.Logger.With("component", "analysis")})
		if err != nil {
			return fail(err)
		}
		c.opts.Analyzer = an
	}
	if c.opts.DefaultAnalysis == nil {
		d := analysis.Defaults()
		c.opts.DefaultAnalysis = &d
	}
	if c.eng, err = c.newEngine(c.reg); err != nil {
		return fail(err)
	}
	var disc admin.Disconnecter
	if c.brk != nil {
		disc = c.brk
	}
	if c.reg.Engine() != "postgres" {
		if c.drift, err = c.newDriftMonitor(c.reg); err != nil {
			return fail(err)
		}
	}
	if c.adm, err = admin.New(admin.Options{Addr: opts.Admin, Registry: c.reg, Engine: c.eng, Root: c.keys.Root(),
		Fleet: opts.Fleet, Broker: c.urls[0], Brokers: c.urls[1:], Disconnect: disc, TLS: opts.AdminTLS, Alerts: c.alerts,
		ChunkSize: opts.ChunkSize, DriftThresholds: opts.Drift.Thresholds, Stats: func() any { return c.Stats() }, Console: console.Handler(),
		Logger: opts.Logger.With("component", "admin"),
		// Drift scores (outpost_fleet_drift_psi) come with drift detection (issue #12 part 6).
		Metrics: c.metricsHandler(c.driftScores)}); err != nil {
		return fail(err)
	}
	return c, nil
}

// BrokerURL is the MQTT broker devices and the controller use: the first
// of the list with several.
func (c *Controller) BrokerURL() string { return c.urls[0] }

// BrokerURLs are every broker the controller fails over between.
func (c *Controller) BrokerURLs() []string { return slices.Clone(c.urls) }

// ConnectedBroker is the broker the controller is connected to now, or "".
func (c *Controller) ConnectedBroker() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn == nil {
		return ""
	}
	return c.conn.broker
}

// AdminAddr is the admin API's address.
func (c *Controller) AdminAddr() string { return c.adm.Addr() }

// Registry is the controller's registry (for tests and tools in-process).
func (c *Controller) Registry() *registry.Registry { return c.reg }

// Engine is the rollout engine.
func (c *Controller) Engine() *rollout.Engine { return c.eng }

// Alerts is the webhook outbox: drift detection and audit ingest emit
// their events through it.
func (c *Controller) Alerts() *alerts.Outbox { return c.alerts }

// Stats are the controller's counters.
type Stats struct {
	MessagesIn  uint64          `json:"messages_in"`
	MessagesOut uint64          `json:"messages_out"`
	BadMessages uint64          `json:"bad_messages"`
	Artifacts   artifacts.Stats `json:"artifacts"`
	HeapBytes   uint64          `json:"heap_bytes"`
	SysBytes    uint64          `json:"sys_bytes"`
	Goroutines  int             `json:"goroutines"`
	Uptime      string          `json:"uptime"`
	// Replica is this process's id in the rollout engine's lease; Leader
	// is set while it runs the rollout engine.
	Replica string `json:"replica"`
	Leader  bool   `json:"leader"`
}

// Stats returns the counters and the process's memory.
func (c *Controller) Stats() Stats {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return Stats{MessagesIn: c.msgsIn.Load(), MessagesOut: c.msgsOut.Load(), BadMessages: c.bad.Load(),
		Artifacts: c.art.Stats(), HeapBytes: ms.HeapAlloc, SysBytes: ms.Sys, Goroutines: runtime.NumGoroutine(),
		Uptime: time.Since(c.started).Round(time.Second).String(), Replica: c.opts.ReplicaID, Leader: c.leader.Load() != nil}
}

// Run runs every part until ctx is cancelled, then stops them and closes
// the registry.
func (c *Controller) Run(ctx context.Context) error {
	defer c.reg.Close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	run := func(name string, fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && !errors.Is(err, context.Canceled) {
				c.log.Error(name+" stopped", "err", err)
				cancel(fmt.Errorf("controller: %s: %w", name, err))
			}
		}()
	}
	var brokerWG sync.WaitGroup
	bctx, bcancel := context.WithCancel(context.Background())
	if c.brk != nil {
		brokerWG.Add(1)
		go func() {
			defer brokerWG.Done()
			if err := c.brk.Run(bctx); err != nil && !errors.Is(err, context.Canceled) {
				c.log.Error("broker stopped", "err", err)
				cancel(err)
			}
		}()
	}
	var workWG sync.WaitGroup
	c.stopping = make(chan struct{})
	for i := range c.queues {
		c.queues[i] = make(chan func(), 256)
		workWG.Add(1)
		go func() { defer workWG.Done(); c.work(c.queues[i]) }()
	}
	stopWorkers := func() {
		close(c.stopping)
		workWG.Wait()
	}
	next, err := c.connectFirst(ctx)
	if err != nil {
		stopWorkers()
		bcancel()
		brokerWG.Wait()
		return err
	}
	run("mqtt", func(ctx context.Context) error { return c.keepConnected(ctx, next) })
	run("artifacts", c.art.Run)
	if c.reg.Engine() == "postgres" {
		run("rollout", c.lead)
	} else {
		c.leader.Store(c.eng)
		run("rollout", c.eng.Run)
		if c.drift != nil {
			run("drift", c.drift.Run)
		}
	}
	run("admin", c.adm.Run)
	run("alerts", c.alerts.Run)
	run("retention", c.prune)
	run("state checks", c.checkStates)
	<-ctx.Done()
	wg.Wait()
	// The workers stop before the client disconnects, so that what they
	// stored is acknowledged on a live connection; what they had not
	// started stays unacknowledged and comes again from the session.
	stopWorkers()
	c.mu.Lock()
	if c.conn != nil {
		c.conn.disconnect(500)
		c.conn = nil
	}
	c.mu.Unlock()
	bcancel() // the broker goes last, after the client said goodbye
	brokerWG.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return ctx.Err()
}

// The controller's MQTT connection. paho's own reconnect is not used: it
// resends a pending publish itself and can complete its token without the
// broker's PUBACK, so the rollout engine or the artifact server would count
// a command or a chunk the broker never took. Every connection is a fresh
// paho client with a fresh in-memory store (as the agent's fleet link does);
// a publish pending when its connection ends fails, and its caller sends it
// again. With several brokers (the nodes of a clustered broker) each new
// connection goes to the next one of the list, round robin.

// ErrNotConnected is wrapped by Publish and Send when nothing was sent
// because the controller has no broker connection right now.
var ErrNotConnected = errors.New("controller: not connected to the broker")

// errConnLost: the connection ended while a publish waited for its PUBACK.
var errConnLost = errors.New("controller: connection lost")

// ackTimeout bounds the wait for a PUBACK on a live connection; a publish
// that waits longer drops the connection, so the next one starts fresh.
const ackTimeout = 30 * time.Second

// stableConnection is how long a connection must last for the next one to
// be tried at once when it ends.
const stableConnection = 10 * time.Second

// mqttConn is one connection to a broker (with a share group, two: see
// dial); lost is closed when either ends.
type mqttConn struct {
	client mqtt.Client
	reqs   mqtt.Client // the chunk requests' clean session, or nil
	broker string
	since  time.Time // when it came up
	lost   chan struct{}
	once   sync.Once
}

func (m *mqttConn) markLost() { m.once.Do(func() { close(m.lost) }) }

// disconnect ends both clients, waiting up to quiesce ms for each.
func (m *mqttConn) disconnect(quiesce uint) {
	if m.reqs != nil {
		m.reqs.Disconnect(quiesce)
	}
	m.client.Disconnect(quiesce)
}

// connectFirst makes the first connection, trying every broker of the list
// in turn while none can be reached, for at most ConnectTimeout. A broker
// that answers and refuses the login is an error at once: it will not change
// its mind, and a controller waiting for it would serve an admin API that
// never answers.
func (c *Controller) connectFirst(ctx context.Context) (next int, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ConnectTimeout)
	defer cancel()
	for {
		for range c.urls {
			url := c.urls[next]
			next = (next + 1) % len(c.urls)
			err = c.dial(ctx, url)
			if err == nil {
				return next, nil
			}
			if refused(err) {
				return 0, fmt.Errorf("controller: mqtt broker %s refused the controller's login (user %q): %w", url, c.opts.Username, err)
			}
			if ctx.Err() != nil {
				break
			}
			c.log.Warn("mqtt connect", "broker", url, "err", err)
		}
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			if context.Cause(ctx) == context.DeadlineExceeded {
				return 0, fmt.Errorf("controller: mqtt broker %s: not reached within %s: %w", strings.Join(c.urls, ", "), c.opts.ConnectTimeout, err)
			}
			return 0, ctx.Err()
		}
	}
}

// keepConnected makes a new connection whenever the current one ends, until
// ctx is done; next is the broker to try first.
func (c *Controller) keepConnected(ctx context.Context, next int) error {
	bo := backoff.New(100*time.Millisecond, 5*time.Second, nil)
	for {
		c.mu.Lock()
		m := c.conn
		c.mu.Unlock()
		short := false
		if m != nil {
			select {
			case <-m.lost:
			case <-ctx.Done():
				return nil
			}
			c.log.Warn("mqtt connection lost", "broker", m.broker)
			c.mu.Lock()
			c.conn = nil
			c.mu.Unlock()
			m.disconnect(0)
			// One the broker drops at once (a second controller with the
			// same client id, an ACL) must not make a busy loop.
			if short = time.Since(m.since) < stableConnection; !short {
				bo.Reset()
			}
		}
		// The next broker at once after a connection that held; after a
		// short one, and after a failed round of the whole list, a growing
		// jittered wait.
		for i := 0; ; i++ {
			if (i == 0 && short) || (i > 0 && i%len(c.urls) == 0) {
				if bo.Wait(ctx, nil) != nil {
					return nil
				}
			}
			url := c.urls[next]
			next = (next + 1) % len(c.urls)
			err := c.dial(ctx, url)
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				break
			}
			c.log.Warn("mqtt connect", "broker", url, "err", err)
		}
	}
}

// dial connects to url with a fresh client, subscribes to the fleet's
// topics and makes the connection the current one.
//
// With a share group the chunk requests come on a second client with a
// clean session. The broker drops a clean session, and with it the
// session's place in the share group, as soon as its connection ends. A
// persistent session stays in the group while its controller is gone, and
// Mosquitto keeps giving it its share of the requests, which nobody
// answers until that replica is back (the devices wait their retry
// interval and may land there again: the tail after a replica's crash in
// docs/SCALE.md). A request lost with a connection costs nothing: the
// device asks again. Telemetry stays on the persistent session, where
// nothing it holds is lost.
func (c *Controller) dial(ctx context.Context, url string) error {
	m := &mqttConn{broker: url, lost: make(chan struct{})}
	m.client = mqtt.NewClient(c.clientOptions(url, c.opts.ClientID, false, m))
	// Routes before CONNECT: a persistent session's queue arrives right
	// after CONNACK, before any SUBSCRIBE.
	filters := c.routes(m.client)
	req := c.requestRoute(m.client)
	if c.opts.ShareGroup == "" {
		maps.Copy(filters, req)
	}
	if err := c.connect(ctx, m.client, url, filters, m.lost); err != nil {
		m.disconnect(0)
		return err
	}
	if c.opts.ShareGroup != "" {
		// The persistent session may hold the requests' subscription from
		// an older release; what it queued is answered (the route stays).
		if err := c.wait(ctx, m.client.Unsubscribe(slices.Collect(maps.Keys(req))...), ackTimeout, m.lost); err != nil {
			m.disconnect(0)
			return fmt.Errorf("unsubscribe %s: %w", url, err)
		}
		m.reqs = mqtt.NewClient(c.clientOptions(url, c.opts.ClientID+"-req", true, m))
		if err := c.connect(ctx, m.reqs, url, c.requestRoute(m.reqs), m.lost); err != nil {
			m.disconnect(0)
			return fmt.Errorf("chunk requests' session: %w", err)
		}
	}
	m.since = time.Now()
	c.mu.Lock()
	c.conn = m
	c.mu.Unlock()
	c.log.Info("controller connected", "broker", url, "fleet", c.opts.Fleet, "filters", len(filters), "request_session", m.reqs != nil)
	c.readyOnce.Do(func() { close(c.ready) })
	return nil
}

// clientOptions are a connection's to url; either client losing its
// connection marks m lost.
func (c *Controller) clientOptions(url, clientID string, clean bool, m *mqttConn) *mqtt.ClientOptions {
	o := mqtt.NewClientOptions().
		AddBroker(url).
		// MQTT 3.1.1 only: no second CONNECT in MQTT 3.1 after a refusal
		// (the device's link explains why).
		SetProtocolVersion(4).
		SetClientID(clientID).
		SetUsername(c.opts.Username).
		SetPassword(c.opts.Password).
		SetCleanSession(clean).
		// In order: the handlers only hand messages to the per-device
		// workers (see dispatch), which keep each device's order.
		SetOrderMatters(true).
		// Telemetry is acknowledged (PUBACK) only once stored (onEvents):
		// a controller that stops or crashes first has it again from its
		// session.
		SetAutoAckDisabled(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(min(10*time.Second, c.opts.ConnectTimeout)).
		SetKeepAlive(30 * time.Second).
		SetWriteTimeout(ackTimeout).
		SetStore(mqtt.NewMemoryStore()).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			c.log.Debug("mqtt connection lost", "broker", url, "client", clientID, "err", err)
			m.markLost()
		})
	if c.opts.ClientTLS != nil {
		o.SetTLSConfig(c.opts.ClientTLS)
	}
	return o
}

// connect connects cl to url and subscribes it to filters.
func (c *Controller) connect(ctx context.Context, cl mqtt.Client, url string, filters map[string]byte, lost <-chan struct{}) error {
	if err := c.wait(ctx, cl.Connect(), min(10*time.Second, c.opts.ConnectTimeout)+time.Second, nil); err != nil {
		return fmt.Errorf("connect %s: %w", url, err)
	}
	tok := cl.SubscribeMultiple(filters, nil)
	if err := c.wait(ctx, tok, ackTimeout, lost); err != nil {
		return fmt.Errorf("subscribe %s: %w", url, err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		if err := protocol.Granted(st.Result()); err != nil {
			return fmt.Errorf("subscribe %s: %w", url, err)
		}
	}
	return nil
}

// wait waits for t, ctx, the timeout, or lost.
func (c *Controller) wait(ctx context.Context, t mqtt.Token, timeout time.Duration, lost <-chan struct{}) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return errors.New("timed out")
	case <-lost:
		return errConnLost
	}
}

// refused reports whether err is a CONNACK refusing the login.
func refused(err error) bool {
	for _, e := range []error{packets.ErrorRefusedBadUsernameOrPassword, packets.ErrorRefusedNotAuthorised,
		packets.ErrorRefusedIDRejected, packets.ErrorRefusedBadProtocolVersion} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// routes adds the handlers of the fleet's device topics to cl and returns
// the filters to subscribe to.
func (c *Controller) routes(cl mqtt.Client) map[string]byte {
	share := c.sharePrefix()
	filters := map[string]byte{}
	handlers := map[string]mqtt.MessageHandler{}
	for leaf, h := range map[string]func(device string, payload []byte) bool{
		protocol.LeafStatus: acked(c.onStatus), protocol.LeafState: acked(c.onState), protocol.LeafAck: acked(c.onAck),
		protocol.LeafEvents: c.onEvents,
	} {
		f, _ := protocol.FleetFilter(c.opts.Fleet, leaf)
		// Only telemetry is split between replicas. Status, state and acks
		// come to every replica: rollouts live in one controller's registry,
		// which must see every device and every answer.
		if leaf == protocol.LeafEvents {
			f = share + f
		}
		filters[f] = 1
		handlers[f] = func(_ mqtt.Client, m mqtt.Message) {
			c.msgsIn.Add(1)
			_, dev, _, err := protocol.ParseDeviceTopic(m.Topic())
			if err != nil {
				c.bad.Add(1)
				m.Ack()
				return
			}
			// The PUBACK goes once the handler is done with the message; a
			// message still queued when the controller stops is never
			// acknowledged, and the broker delivers it again.
			c.dispatch(dev, func() {
				if h(dev, m.Payload()) {
					m.Ack()
				}
				// A live "offline" may be a late last will (stateverify.go);
				// a retained one is what the broker holds now.
				if leaf == protocol.LeafState && !m.Retained() && string(m.Payload()) == protocol.StateOffline {
					c.states.add(dev)
				}
			})
		}
	}
	for f, h := range handlers {
		cl.AddRoute(f, h)
	}
	return filters
}

// sharePrefix is "$share/<group>/" with a share group, else "".
func (c *Controller) sharePrefix() string {
	if c.opts.ShareGroup == "" {
		return ""
	}
	return "$share/" + c.opts.ShareGroup + "/"
}

// requestRoute adds the handler of the chunk requests to cl and returns its
// filter.
func (c *Controller) requestRoute(cl mqtt.Client) map[string]byte {
	share := c.sharePrefix()
	req, _ := protocol.ArtifactsReqTopic(c.opts.Fleet)
	// Without a share group every replica on PostgreSQL receives every
	// chunk request (NATS): only the leader answers, so a device gets each
	// chunk once. In a leader's absence the device asks again.
	leaderOnly := share == "" && c.reg.Engine() == "postgres"
	cl.AddRoute(share+req, func(_ mqtt.Client, m mqtt.Message) {
		c.msgsIn.Add(1)
		defer m.Ack() // a lost request is asked again
		if leaderOnly && c.leader.Load() == nil {
			return
		}
		if err := c.art.Handle(m.Payload()); err != nil {
			c.bad.Add(1)
			c.log.Debug("chunk request", "err", err)
		}
	})
	return map[string]byte{share + req: 1}
}

// workers is how many goroutines handle device messages. Each device's
// messages go to one of them, in arrival order, which telemetry
// de-duplication relies on (a sequence number not seen before is above every
// one seen); different devices are handled in parallel, so registry writes
// group into shared transactions (RecordBatch's group commit): the more
// workers, the bigger a group can get when many devices drain a backlog at
// once (TestBacklogDrain: 64 stored 1,000 devices' backlog in two thirds
// of the time 16 took).
const workers = 64

// dispatch queues fn on the worker that owns device. It blocks when that
// worker is behind, which holds the MQTT client back: backpressure.
func (c *Controller) dispatch(device string, fn func()) {
	h := fnv.New32a()
	h.Write([]byte(device))
	select {
	case c.queues[h.Sum32()%workers] <- fn:
	case <-c.stopping:
	}
}

// work runs one worker until the controller stops.
func (c *Controller) work(q <-chan func()) {
	for {
		select {
		case fn := <-q:
			fn()
		case <-c.stopping:
			return
		}
	}
}

// Ready is closed once the controller has subscribed to its fleet's topics
// for the first time: from then on no device message is missed.
func (c *Controller) Ready() <-chan struct{} { return c.ready }

func (c *Controller) onStatus(device string, payload []byte) {
	if len(payload) == 0 {
		return // a cleared retained message
	}
	st, err := protocol.ParseStatus(payload)
	if err != nil || st.Device != device {
		c.bad.Add(1)
		c.log.Warn("status refused", "device", device, "err", err) // the device stays invisible to rollouts
		return
	}
	now := time.Now().UTC()
	if _, err := c.reg.UpdateDevice(device, func(d *registry.Device) {
		if !st.Time.IsZero() && st.Time.Before(d.StatusTime) {
			return
		}
		d.Labels, d.AgentVersion, d.Models, d.Update, d.Health = st.Labels, st.AgentVersion, st.Models, st.Update, st.Health
		d.Features = st.Features
		d.RootVersion, d.StatusTime, d.LastSeen = st.RootVersion, st.Time, now
	}); err != nil {
		c.log.Warn("status", "device", device, "err", err)
		return
	}
	c.deviceEngine().HandleStatus(device, st.Update)
	c.deviceChanged(device)
}

func (c *Controller) onState(device string, payload []byte) {
	online := string(payload) == protocol.StateOnline
	if !online && string(payload) != protocol.StateOffline {
		if len(payload) != 0 {
			c.bad.Add(1)
		}
		return
	}
	now := time.Now().UTC()
	var changed bool
	d, err := c.reg.UpdateDevice(device, func(d *registry.Device) {
		changed = online != d.Online
		// A device says "online" after every connection, and a new
		// connection may have lost whatever the broker held for it (a
		// restarted embedded broker keeps no sessions): OnlineSince is
		// the last connection, and the rollout engine sends again what
		// was sent before it.
		if online {
			d.OnlineSince = now
		}
		d.Online, d.LastSeen = online, now
	})
	if err != nil {
		c.log.Warn("state", "device", device, "err", err)
		return
	}
	if changed {
		c.alertState(device, online, d)
	}
	c.log.Debug("device "+string(payload), "device", device)
	c.deviceChanged(device)
}

func (c *Controller) onAck(device string, payload []byte) {
	a, err := protocol.ParseAck(payload)
	if err != nil {
		c.bad.Add(1)
		c.log.Debug("bad ack", "device", device, "err", err)
		return
	}
	c.deviceEngine().HandleAck(device, a)
	c.kick()
}

// acked makes a handler whose message is acknowledged whatever happens.
func acked(h func(device string, payload []byte)) func(string, []byte) bool {
	return func(device string, payload []byte) bool {
		h(device, payload)
		return true
	}
}

// onEvents stores a telemetry batch and reports whether to acknowledge it:
// once stored, or if it is not a batch at all. A store that fails is tried
// again, with a growing wait, until it works or the controller stops; then
// the batch is left unacknowledged for the broker to deliver again. The
// device's worker waits meanwhile, which holds the MQTT client back.
func (c *Controller) onEvents(device string, payload []byte) bool {
	b, err := protocol.DecodeBatch(payload)
	if err != nil {
		c.bad.Add(1)
		return true
	}
	bo := backoff.New(100*time.Millisecond, 5*time.Second, nil)
	for {
		_, err := c.reg.RecordBatch(device, &b, time.Now())
		if err == nil {
			return true
		}
		c.log.Warn("telemetry not stored, trying again", "device", device, "err", err)
		t := time.NewTimer(bo.Next())
		select {
		case <-t.C:
		case <-c.stopping:
			t.Stop()
			return false
		}
	}
}

// prune applies the retention every PruneEvery while this replica runs
// the rollout engine (always on the embedded store), so that replicas
// sharing PostgreSQL do not all do the same deletes.
func (c *Controller) prune(ctx context.Context) error {
	t := time.NewTicker(c.opts.PruneEvery)
	defer t.Stop()
	for {
		// The first pass waits a period too: after a long outage the
		// broker redelivers what this controller had stored and not yet
		// acknowledged, and the raw rows must still be there to tell.
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if c.leader.Load() != nil {
			start := time.Now()
			p, err := c.reg.Prune(ctx, start, c.opts.Retention)
			switch {
			case ctx.Err() != nil:
				return nil
			case err != nil:
				c.log.Warn("retention", "err", err)
			case p != (registry.Pruned{}):
				c.log.Info("retention", "minute_buckets", p.MinuteBuckets, "hour_buckets", p.HourBuckets,
					"over_bound", p.OverBound, "health", p.Health, "telemetry", p.Telemetry, "took", time.Since(start).Round(time.Millisecond))
			}
		}
	}
}

// Publish sends one QoS 1 message and returns nil once the broker
// acknowledged it (PUBACK) on the current connection. An error wrapping
// ErrNotConnected means nothing was sent; any other error means the message
// may or may not have reached the broker, and the caller sends it again if
// it must arrive. A publish without a PUBACK within 30 s drops the
// connection, so the next one starts fresh.
func (c *Controller) Publish(ctx context.Context, topic string, payload []byte) error {
	return c.publish(ctx, topic, 1, payload)
}

// chunkPublisher publishes artifact chunks at protocol.ChunkQoS
// (artifacts.Publisher): Publish returns once the chunk is written to the
// broker's connection, and a device asks again for a chunk it misses.
type chunkPublisher struct{ c *Controller }

func (p chunkPublisher) Publish(ctx context.Context, topic string, payload []byte) error {
	return p.c.publish(ctx, topic, protocol.ChunkQoS, payload)
}

func (c *Controller) publish(ctx context.Context, topic string, qos byte, payload []byte) error {
	c.mu.Lock()
	m := c.conn
	c.mu.Unlock()
	if m == nil {
		return fmt.Errorf("controller: publish %s: %w", topic, ErrNotConnected)
	}
	err := c.wait(ctx, m.client.Publish(topic, qos, false, payload), ackTimeout, m.lost)
	if err == nil {
		c.msgsOut.Add(1)
		return nil
	}
	if errors.Is(err, mqtt.ErrNotConnected) {
		return fmt.Errorf("controller: publish %s: %w", topic, ErrNotConnected)
	}
	if ctx.Err() == nil && !errors.Is(err, errConnLost) {
		// Stuck or refused: drop the connection; keepConnected makes a new one.
		m.markLost()
	}
	return fmt.Errorf("controller: publish %s: %w", topic, err)
}

// Send signs cmd with the command keys and publishes it to its device's
// cmd topic (rollout.Sender).
func (c *Controller) Send(ctx context.Context, cmd *protocol.Command) error {
	topics, err := protocol.DeviceTopics(c.opts.Fleet, cmd.Device)
	if err != nil {
		return err
	}
	b, err := protocol.SignCommand(cmd, c.roots, c.signers...)
	if err != nil {
		return err
	}
	c.log.Debug("command", "device", cmd.Device, "kind", cmd.Kind, "id", cmd.ID, "rollout", cmd.RolloutID)
	return c.Publish(ctx, topics.Cmd, b)
}

// catalog serves artifacts from the registry's blob files.
type catalog struct{ reg *registry.Registry }

func (k catalog) Artifact(sha string) (artifacts.Artifact, error) {
	m, err := k.reg.ModelBySHA(sha)
	if err != nil {
		return artifacts.Artifact{}, err
	}
	path, err := k.reg.Blob(m) // fetched from the store if pushed to another replica
	if err != nil {
		return artifacts.Artifact{}, err
	}
	return artifacts.Artifact{Path: path, Length: m.Length, ChunkSize: m.ChunkSize}, nil
}

// alertState is called when device went offline or came back (only on
// the change, so a retained "offline" seen again after a reconnect, or by
// a second replica, sends nothing). Going offline emits device_offline,
// held for the offline grace; coming back within the grace withdraws it.
func (c *Controller) alertState(device string, online bool, d *registry.Device) {
	ctx := context.Background()
	if online {
		if _, err := c.alerts.Cancel(ctx, alerts.DeviceOffline, device); err != nil {
			c.log.Warn("device online alert", "device", device, "err", err)
		}
		return
	}
	if err := c.alerts.Emit(ctx, alerts.DeviceOfflineEvent(device, d.LastSeen, c.alerts.OfflineGrace(), d.Labels)); err != nil {
		c.log.Warn("device offline alert", "device", device, "err", err)
	}
}
