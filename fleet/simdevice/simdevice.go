// Package simdevice is a lightweight simulated device for testing and
// benchmarking the fleet controller: it speaks the device side of the wire
// protocol (status, state, signed commands, chunked downloads, acks) over a
// real MQTT connection with paho, verifies commands and releases against a
// trust root exactly as the real agent must, checks every chunk's hash and
// the whole artifact against the signed manifest, and walks the update states
// without running a model. Failures (validation, probation) are injected per
// model version.
//
// It is not the agent: agent/updater is. It exists so the controller can be
// tested with hundreds of devices in one process.
package simdevice

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
)

// Options for New. Broker, Fleet, Device and Root are required.
type Options struct {
	Broker        string
	Fleet, Device string
	Labels        map[string]string
	// Root is the trust anchor the device was provisioned with.
	Root *trust.Root
	// Models the device serves at start.
	Models []protocol.ModelStatus
	// Window is how many chunks it asks for at a time; 0 means 16.
	Window int
	// RetryAfter: with no chunk for this long it asks again from the first
	// chunk it lacks; 0 means 2 s.
	RetryAfter time.Duration
	// FailValidation and FailProbation, when they return true for a model
	// version, make the install fail at validating (golden outputs differ)
	// or roll back after activation (probation error rate).
	FailValidation, FailProbation func(model string, version int64) bool
	// Unverified, when it returns true for a model version, makes the
	// commit unverified (probation ended without its minimum requests).
	// Otherwise a commit is verified, having served the install's
	// Probation.MinRequests (or ProbationRequests when the install sets
	// none).
	Unverified func(model string, version int64) bool
	// ProbationRequests a version serves in probation; 0 means 100.
	ProbationRequests int64
	// Trials makes the device take installs with a trial (docs/PROTOCOL.md,
	// Trials) and list "trial" in its status's features: it holds the
	// validated candidate in shadow or canary until an install without a
	// trial promotes it or an abort discards it. Without it, an install
	// with a trial is refused, as an agent older than trials does.
	Trials bool
	// FailTrial, when it returns true for a model version, makes an install
	// with a trial fail instead of holding the candidate (as a candidate
	// that cannot load beside the serving version).
	FailTrial func(model string, version int64) bool
	// Traffic, when set, makes the device send aggregates of simulated
	// traffic (traffic.go); nil sends no telemetry.
	Traffic *Traffic
	// BackoffMin and BackoffMax bound the jittered backoff waited after a
	// failed connection and after a connection ends, as the real agent's
	// link waits (agent/fleetlink); 0 means protocol.ReconnectBackoffMin
	// and 5 s (the agent's maximum, ReconnectBackoffMax, is 2 minutes:
	// tests restart brokers and want the devices back sooner). A fixed short retry made a herd of a thousand devices
	// retry in step and kept a NATS cluster too busy to take any of them.
	BackoffMin, BackoffMax time.Duration
	// CleanSession connects with a clean session and subscribes to cmd at
	// QoS 0, as the agent's fleet.clean_session does.
	CleanSession bool
	Logger       *slog.Logger
}

// Counters of one simulated device. Commands counts the commands accepted,
// one per command id; Rejected those refused, a command id seen before
// (a redelivery) among them.
type Counters struct {
	Commands, Rejected, Chunks, BadChunks, Requests, Acks uint64
	// Aggregates counts the aggregate records sent (Options.Traffic).
	Aggregates uint64
	// Connects counts the connections made (subscribed and online).
	Connects uint64
	// FirstAfterReconnect is the first chunk index asked for after each
	// reconnection that found a download under way.
	FirstAfterReconnect []int64
}

// Agent is one simulated device.
type Agent struct {
	opts   Options
	topics protocol.Topics
	log    *slog.Logger
	events chan event

	mu       sync.Mutex // guards models, anchor, update, seen, firsts, client, ready, trial
	anchor   *trust.Root
	models   map[string]protocol.ModelStatus
	update   *protocol.UpdateStatus
	seen     map[string]bool
	firsts   []int64
	client   mqtt.Client
	ready    bool                            // client subscribed and said it is online
	lastRoll map[string]protocol.UpdateState // rollout -> final state
	// trial is the candidate held on trial, nil when none.
	trial *held

	commands, rejected, chunks, badChunks, requests, acks, connects atomic.Uint64
	// seq numbers the telemetry records in epoch (one per Agent, as a
	// device whose queue is new); aggs counts the records sent.
	seq, aggs atomic.Uint64
	epoch     uint64
}

// held is a candidate held on trial: the install that brought it (its
// command id the last trial command's), the trial, and the artifact's
// length and digest for the promotion.
type held struct {
	cmd    protocol.Command
	in     protocol.Install
	trial  protocol.Trial
	length int64
	digest string
}

// Trial returns the candidate the device holds on trial: its model,
// version and mode; zero values when it holds none.
func (a *Agent) Trial() (model string, version int64, mode protocol.TrialMode) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.trial == nil {
		return "", 0, ""
	}
	return a.trial.in.Model, a.trial.in.Version, a.trial.trial.Mode
}

// takeTrial removes and returns the held candidate if match says so.
func (a *Agent) takeTrial(match func(h *held) bool) *held {
	a.mu.Lock()
	defer a.mu.Unlock()
	h := a.trial
	if h == nil || !match(h) {
		return nil
	}
	a.trial = nil
	return h
}

type event struct {
	topic   string
	payload []byte
}

// New checks the options.
func New(opts Options) (*Agent, error) {
	if opts.Root == nil || opts.Broker == "" {
		return nil, errors.New("simdevice: Broker and Root are required")
	}
	t, err := protocol.DeviceTopics(opts.Fleet, opts.Device)
	if err != nil {
		return nil, fmt.Errorf("simdevice: %w", err)
	}
	if opts.Window <= 0 {
		opts.Window = 16
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = 2 * time.Second
	}
	if opts.ProbationRequests <= 0 {
		opts.ProbationRequests = 100
	}
	if opts.BackoffMin <= 0 {
		opts.BackoffMin = protocol.ReconnectBackoffMin
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if tr := opts.Traffic; tr != nil {
		c := *tr
		if c.Every <= 0 {
			c.Every = time.Second
		}
		if c.Requests == 0 {
			c.Requests = 100
		}
		if c.BaseLatency <= 0 {
			c.BaseLatency = 2 * time.Millisecond
		}
		opts.Traffic = &c
	}
	a := &Agent{opts: opts, topics: t, log: opts.Logger.With("device", opts.Device), events: make(chan event, 4096),
		anchor: opts.Root, models: map[string]protocol.ModelStatus{}, seen: map[string]bool{}, lastRoll: map[string]protocol.UpdateState{}}
	for _, m := range opts.Models {
		a.models[m.Name] = m
	}
	a.epoch = uint64(time.Now().UnixNano())
	return a, nil
}

// Running returns the version of model the device serves, 0 if none.
func (a *Agent) Running(model string) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.models[model].Version
}

// Models returns the models the device serves, as its status lists them.
func (a *Agent) Models() []protocol.ModelStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]protocol.ModelStatus, 0, len(a.models))
	for _, m := range a.models {
		out = append(out, m)
	}
	return out
}

// Counters returns the device's counters.
func (a *Agent) Counters() Counters {
	a.mu.Lock()
	firsts := append([]int64(nil), a.firsts...)
	a.mu.Unlock()
	return Counters{Commands: a.commands.Load(), Rejected: a.rejected.Load(), Chunks: a.chunks.Load(),
		BadChunks: a.badChunks.Load(), Requests: a.requests.Load(), Acks: a.acks.Load(), Connects: a.connects.Load(), FirstAfterReconnect: firsts,
		Aggregates: a.aggs.Load()}
}

// Connected reports whether the device has a live connection on which it
// subscribed and said it is online.
func (a *Agent) Connected() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ready && a.client != nil && a.client.IsConnectionOpen()
}

// Run connects (with a persistent session and a last will) and plays the
// device until ctx is cancelled; then it publishes "offline" and leaves.
// It reconnects on its own, with a fresh paho client each time, and
// publishes only once a connection is complete: paho's own reconnect
// replays its store while an OnConnect handler may already publish, a data
// race on the replayed packets (the real agent's link does the same).
func (a *Agent) Run(ctx context.Context) error {
	var dl *download
	bo := backoff.New(a.opts.BackoffMin, a.opts.BackoffMax, nil)
	for {
		cl, lost, err := a.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			a.log.Debug("connect", "err", err)
			if bo.Wait(ctx, nil) != nil {
				return ctx.Err()
			}
			continue
		}
		since := time.Now()
		if dl != nil {
			first := dl.firstMissing()
			a.mu.Lock()
			a.firsts = append(a.firsts, first)
			a.mu.Unlock()
			a.request(cl, dl, first)
		}
		dl = a.session(ctx, cl, lost, dl)
		a.mu.Lock()
		a.ready = false
		a.mu.Unlock()
		if ctx.Err() != nil {
			cl.Publish(a.topics.State, 1, true, protocol.StateOffline).WaitTimeout(2 * time.Second)
			cl.Disconnect(200)
			return ctx.Err()
		}
		cl.Disconnect(0)
		// As the agent: from the minimum again only after a connection
		// that held.
		if time.Since(since) >= protocol.StableConnection {
			bo.Reset()
		}
		if bo.Wait(ctx, nil) != nil {
			return ctx.Err()
		}
	}
}

// connect makes one connection: subscribed, "online" and status published.
func (a *Agent) connect(ctx context.Context) (mqtt.Client, <-chan struct{}, error) {
	lost := make(chan struct{})
	var once sync.Once
	o := mqtt.NewClientOptions().AddBroker(a.opts.Broker).SetProtocolVersion(4).SetClientID(a.opts.Device).
		SetCleanSession(a.opts.CleanSession).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5*time.Second).SetKeepAlive(10*time.Second).
		SetStore(mqtt.NewMemoryStore()).
		SetWill(a.topics.State, protocol.StateOffline, 1, true).
		SetConnectionLostHandler(func(mqtt.Client, error) { once.Do(func() { close(lost) }) })
	handler := func(_ mqtt.Client, m mqtt.Message) {
		select {
		case a.events <- event{topic: m.Topic(), payload: m.Payload()}:
		default: // overflow: a lost chunk is asked for again
		}
	}
	o.SetDefaultPublishHandler(handler)
	cl := mqtt.NewClient(o)
	// Routes before CONNECT: the broker delivers what it queued for the
	// session right after CONNACK.
	cl.AddRoute(a.topics.Cmd, handler)
	cl.AddRoute(a.topics.Chunk, handler)
	a.mu.Lock()
	a.client = cl
	a.mu.Unlock()
	wait := func(t mqtt.Token) error {
		select {
		case <-t.Done():
			return t.Error()
		case <-lost:
			return errors.New("connection lost")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := wait(cl.Connect())
	if err == nil {
		cmdQoS := byte(1)
		if a.opts.CleanSession {
			cmdQoS = 0
		}
		tok := cl.SubscribeMultiple(map[string]byte{a.topics.Cmd: cmdQoS, a.topics.Chunk: protocol.ChunkQoS}, nil)
		if err = wait(tok); err == nil {
			if st, ok := tok.(*mqtt.SubscribeToken); ok {
				err = protocol.Granted(st.Result())
			}
		}
	}
	if err == nil {
		err = wait(cl.Publish(a.topics.State, 1, true, protocol.StateOnline))
	}
	if err != nil {
		cl.Disconnect(0)
		return nil, nil, fmt.Errorf("simdevice %s: connect: %w", a.opts.Device, err)
	}
	a.connects.Add(1)
	a.mu.Lock()
	a.ready = true
	a.mu.Unlock()
	a.publishStatus(cl)
	return cl, lost, nil
}

// session plays the device on one connection until it is lost or ctx ends.
func (a *Agent) session(ctx context.Context, cl mqtt.Client, lost <-chan struct{}, dl *download) *download {
	tick := time.NewTicker(a.opts.RetryAfter / 2)
	defer tick.Stop()
	var traffic <-chan time.Time // nil without Traffic: never ready
	var rng *rand.Rand
	last := time.Now()
	if tr := a.opts.Traffic; tr != nil {
		t := time.NewTicker(tr.Every)
		defer t.Stop()
		traffic = t.C
		rng = rand.New(rand.NewPCG(a.epoch, a.seq.Load()))
	}
	for {
		select {
		case now := <-traffic:
			a.sendAggregates(cl, rng, last, now)
			last = now
		case <-ctx.Done():
			return dl
		case <-lost:
			return dl
		case ev := <-a.events:
			switch {
			case ev.topic == a.topics.Cmd:
				dl = a.onCommand(cl, dl, ev.payload)
			case ev.topic == a.topics.Chunk:
				dl = a.onChunk(cl, dl, ev.payload)
			}
		case <-tick.C:
			if dl != nil && time.Since(dl.last) >= a.opts.RetryAfter {
				a.request(cl, dl, dl.firstMissing())
			}
		}
	}
}

// download is an install under way.
type download struct {
	cmd      protocol.VerifiedCommand
	art      protocol.Artifact
	buf      []byte
	have     []bool
	count    int64
	asked    int64 // end of the window asked for
	last     time.Time
	reported int64
}

func (d *download) firstMissing() int64 {
	for i, h := range d.have {
		if !h {
			return int64(i)
		}
	}
	return int64(len(d.have))
}

func (a *Agent) onCommand(cl mqtt.Client, dl *download, payload []byte) *download {
	a.mu.Lock()
	anchor := a.anchor
	a.mu.Unlock()
	v, err := protocol.VerifyCommand(payload, anchor, protocol.VerifyOptions{Fleet: a.opts.Fleet, Device: a.opts.Device})
	a.mu.Lock()
	replay := err == nil && a.seen[v.ID]
	if err == nil && !replay {
		a.seen[v.ID] = true
		a.anchor = v.Root
	}
	a.mu.Unlock()
	if err != nil || replay {
		a.rejected.Add(1)
		a.log.Info("command refused", "err", err, "replay", replay)
		return dl
	}
	a.commands.Add(1)
	switch v.Kind {
	case protocol.CommandInstall:
		in := v.Install
		if in.Trial != nil && !a.opts.Trials {
			a.rejected.Add(1) // an agent without trials refuses the field
			a.log.Info("command refused", "err", "install with a trial")
			return dl
		}
		same := func(h *held) bool {
			return h.cmd.RolloutID == v.RolloutID && h.in.Model == in.Model && h.in.Version == in.Version
		}
		if h := a.takeTrial(same); h != nil {
			if in.Trial != nil { // a new mode or share: at once
				a.mu.Lock()
				h.cmd, h.trial = v.Command, *in.Trial
				a.trial = h
				a.mu.Unlock()
				a.ack(cl, &v.Command, in.Trial.State(), h.length, "", fmt.Sprintf("%s %g%%", in.Trial.Mode, in.Trial.Percent))
				a.publishStatus(cl)
				return dl
			}
			a.activate(cl, &v.Command, in, h.length, h.digest) // promotion: no second download
			return dl
		}
		if h := a.takeTrial(func(h *held) bool { return h.in.Model == in.Model }); h != nil {
			a.ack(cl, &h.cmd, protocol.UpdateFailed, 0, "aborted", "replaced by "+v.RolloutID)
		}
		if a.Running(in.Model) == in.Version {
			a.ack(cl, &v.Command, protocol.UpdateCommitted, 0, "", "already installed")
			return dl
		}
		if dl != nil && dl.cmd.RolloutID == v.RolloutID && dl.cmd.Install.Version == in.Version {
			dl.cmd.Command.ID = v.ID // carry on; answer the new id
			a.ack(cl, &v.Command, protocol.UpdateDownloading, dl.count*int64(in.Artifact.ChunkSize), "", "")
			a.request(cl, dl, dl.firstMissing())
			return dl
		}
		if dl != nil {
			a.ack(cl, &dl.cmd.Command, protocol.UpdateFailed, 0, "aborted", "replaced by "+v.RolloutID)
		}
		dl = &download{cmd: *v, art: in.Artifact, buf: make([]byte, in.Artifact.Length), have: make([]bool, in.Artifact.Chunks), last: time.Now()}
		a.ack(cl, &v.Command, protocol.UpdateDownloading, 0, "", "")
		a.request(cl, dl, 0)
		return dl
	case protocol.CommandRollback:
		rb := v.Rollback
		if h := a.takeTrial(func(h *held) bool { return h.in.Model == rb.Model && h.in.Version == rb.Version }); h != nil {
			a.ack(cl, &v.Command, protocol.UpdateRolledBack, 0, "", "nothing to roll back")
			a.publishStatus(cl)
			return dl
		}
		if dl != nil && dl.cmd.Install.Model == rb.Model && dl.cmd.Install.Version == rb.Version {
			a.ack(cl, &v.Command, protocol.UpdateRolledBack, 0, rb.Reason, "cancelled before activation")
			return nil
		}
		a.mu.Lock()
		m, ok := a.models[rb.Model]
		a.mu.Unlock()
		switch {
		case !ok || m.Version != rb.Version:
			a.ack(cl, &v.Command, protocol.UpdateRolledBack, 0, "", "nothing to roll back")
		case m.Previous == 0:
			a.ack(cl, &v.Command, protocol.UpdateFailed, 0, "no previous version", "")
		default:
			a.ack(cl, &v.Command, protocol.UpdateRollingBack, 0, "", "")
			a.setModel(rb.Model, m.Previous, "", 0)
			a.ack(cl, &v.Command, protocol.UpdateRolledBack, 0, rb.Reason, "")
		}
		a.publishStatus(cl)
		return dl
	case protocol.CommandAbort:
		if h := a.takeTrial(func(h *held) bool { return h.cmd.RolloutID == v.RolloutID }); h != nil {
			a.ack(cl, &v.Command, protocol.UpdateFailed, 0, "aborted", v.Abort.Reason)
			a.final(v.RolloutID, protocol.UpdateFailed)
			a.publishStatus(cl)
			return dl
		}
		if dl != nil && dl.cmd.RolloutID == v.RolloutID {
			a.ack(cl, &v.Command, protocol.UpdateFailed, 0, "aborted", v.Abort.Reason)
			return nil
		}
		a.mu.Lock()
		st := a.lastRoll[v.RolloutID]
		a.mu.Unlock()
		if st == protocol.UpdateCommitted {
			a.ack(cl, &v.Command, st, 0, "", "already committed")
		} else {
			a.ack(cl, &v.Command, protocol.UpdateFailed, 0, "aborted", "")
		}
		return dl
	}
	return dl
}

func (a *Agent) onChunk(cl mqtt.Client, dl *download, payload []byte) *download {
	c, err := protocol.ParseChunk(payload)
	if err != nil {
		a.badChunks.Add(1)
		return dl
	}
	if dl == nil || c.ArtifactHex() != dl.art.SHA256 {
		return dl // a late chunk of an update that is over
	}
	if c.Kind == protocol.ChunkError {
		a.ack(cl, &dl.cmd.Command, protocol.UpdateFailed, 0, "controller: "+string(c.Data), "")
		return nil
	}
	off := c.Index * int64(dl.art.ChunkSize)
	want := min(int64(dl.art.ChunkSize), dl.art.Length-off)
	if c.Total != dl.art.Chunks || int64(len(c.Data)) != want {
		a.badChunks.Add(1)
		return dl
	}
	a.chunks.Add(1)
	dl.last = time.Now()
	if !dl.have[c.Index] {
		copy(dl.buf[off:], c.Data)
		dl.have[c.Index] = true
		dl.count++
	}
	if dl.count < dl.art.Chunks {
		held := dl.count * int64(dl.art.ChunkSize)
		if held-dl.reported >= dl.art.Length/4 {
			dl.reported = held
			a.ack(cl, &dl.cmd.Command, protocol.UpdateDownloading, held, "", "")
		}
		if c.Index+1 >= dl.asked {
			a.request(cl, dl, dl.firstMissing())
		}
		return dl
	}
	a.finish(cl, dl)
	return nil
}

// finish walks a complete download through the update states.
func (a *Agent) finish(cl mqtt.Client, dl *download) {
	cmd, in := &dl.cmd.Command, dl.cmd.Install
	a.ack(cl, cmd, protocol.UpdateVerifying, dl.art.Length, "", "")
	sum := sha256.Sum256(dl.buf)
	mf := dl.cmd.Release.Model
	if hex.EncodeToString(sum[:]) != mf.SHA256 || int64(len(dl.buf)) != mf.Length {
		a.ack(cl, cmd, protocol.UpdateFailed, 0, "artifact does not match the signed manifest", "")
		a.final(cmd.RolloutID, protocol.UpdateFailed)
		return
	}
	// The bytes must also read cleanly through the manifest's own checks.
	if _, err := bytes.NewBuffer(nil).ReadFrom(mf.Bytes(bytes.NewReader(dl.buf))); err != nil {
		a.ack(cl, cmd, protocol.UpdateFailed, 0, err.Error(), "")
		a.final(cmd.RolloutID, protocol.UpdateFailed)
		return
	}
	a.ack(cl, cmd, protocol.UpdateStaged, dl.art.Length, "", "")
	a.ack(cl, cmd, protocol.UpdateValidating, dl.art.Length, "", "")
	if f := a.opts.FailValidation; f != nil && f(in.Model, in.Version) {
		a.ack(cl, cmd, protocol.UpdateFailed, 0, "validation: golden outputs differ", "")
		a.final(cmd.RolloutID, protocol.UpdateFailed)
		a.publishStatus(cl)
		return
	}
	if tr := in.Trial; tr != nil {
		if a.Running(in.Model) == 0 || (a.opts.FailTrial != nil && a.opts.FailTrial(in.Model, in.Version)) {
			why := "trial needs a serving version"
			if a.Running(in.Model) != 0 {
				why = "trial: the candidate does not load beside the serving version"
			}
			a.ack(cl, cmd, protocol.UpdateFailed, 0, why, "")
			a.final(cmd.RolloutID, protocol.UpdateFailed)
			a.publishStatus(cl)
			return
		}
		a.mu.Lock()
		a.trial = &held{cmd: *cmd, in: *in, trial: *tr, length: dl.art.Length, digest: "sha256:" + mf.SHA256}
		a.mu.Unlock()
		a.ack(cl, cmd, tr.State(), dl.art.Length, "", fmt.Sprintf("%s %g%%", tr.Mode, tr.Percent))
		a.publishStatus(cl)
		return
	}
	a.activate(cl, cmd, in, dl.art.Length, "sha256:"+mf.SHA256)
}

// activate swaps the validated version in, runs probation and commits or
// rolls back.
func (a *Agent) activate(cl mqtt.Client, cmd *protocol.Command, in *protocol.Install, length int64, digest string) {
	a.ack(cl, cmd, protocol.UpdateActivating, length, "", "")
	a.mu.Lock()
	prev := a.models[in.Model]
	a.mu.Unlock()
	a.setModel(in.Model, in.Version, digest, prev.Version)
	a.ack(cl, cmd, protocol.UpdateProbation, length, "", "")
	if f := a.opts.FailProbation; f != nil && f(in.Model, in.Version) {
		a.ack(cl, cmd, protocol.UpdateRollingBack, 0, "", "")
		a.setModel(in.Model, prev.Version, prev.Digest, prev.Previous)
		a.ack(cl, cmd, protocol.UpdateRolledBack, 0, "probation: error rate over budget", "")
		a.final(cmd.RolloutID, protocol.UpdateRolledBack)
		a.publishStatus(cl)
		return
	}
	requests, verified := a.opts.ProbationRequests, true
	if p := in.Probation; p != nil && p.MinRequests > 0 {
		requests = p.MinRequests
	}
	if f := a.opts.Unverified; f != nil && f(in.Model, in.Version) {
		requests, verified = requests/2, false
	}
	a.commit(cl, cmd, length, requests, verified)
	a.final(cmd.RolloutID, protocol.UpdateCommitted)
	a.publishStatus(cl)
}

func (a *Agent) final(rollout string, st protocol.UpdateState) {
	a.mu.Lock()
	a.lastRoll[rollout] = st
	a.mu.Unlock()
}

func (a *Agent) setModel(name string, version int64, digest string, previous int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if version == 0 {
		delete(a.models, name)
		return
	}
	a.models[name] = protocol.ModelStatus{Name: name, Version: version, Digest: digest, Previous: previous}
}

func (a *Agent) request(cl mqtt.Client, dl *download, first int64) {
	if first >= dl.art.Chunks {
		return
	}
	n := min(int64(a.opts.Window), dl.art.Chunks-first)
	b, _ := json.Marshal(protocol.ChunkRequest{Device: a.opts.Device, SHA256: dl.art.SHA256, First: first, Count: int(n)})
	dl.asked = first + n
	dl.last = time.Now()
	a.requests.Add(1)
	cl.Publish(a.topics.ArtifactsReq, 1, false, b)
}

func (a *Agent) ack(cl mqtt.Client, c *protocol.Command, st protocol.UpdateState, progress int64, errText, detail string) {
	a.send(cl, c, protocol.Ack{CommandID: c.ID, RolloutID: c.RolloutID, State: st, Progress: progress, Error: errText, Detail: detail, Time: time.Now().UTC()})
}

// commit acks a commit with what probation saw.
func (a *Agent) commit(cl mqtt.Client, c *protocol.Command, progress, requests int64, verified bool) {
	a.send(cl, c, protocol.Ack{CommandID: c.ID, RolloutID: c.RolloutID, State: protocol.UpdateCommitted, Progress: progress,
		Requests: requests, Verified: verified, Time: time.Now().UTC()})
}

func (a *Agent) send(cl mqtt.Client, c *protocol.Command, ack protocol.Ack) {
	st, progress, errText := ack.State, ack.Progress, ack.Error
	switch {
	case c.Install != nil:
		ack.Model, ack.Version, ack.Total = c.Install.Model, c.Install.Version, c.Install.Artifact.Length
	case c.Rollback != nil:
		ack.Model, ack.Version = c.Rollback.Model, c.Rollback.Version
	}
	b, _ := json.Marshal(ack)
	a.acks.Add(1)
	a.mu.Lock()
	a.update = &protocol.UpdateStatus{CommandID: c.ID, RolloutID: c.RolloutID, Model: ack.Model, Version: ack.Version,
		State: st, Progress: progress, Total: ack.Total, Error: errText, Requests: ack.Requests, Verified: ack.Verified, Time: ack.Time}
	a.mu.Unlock()
	cl.Publish(a.topics.Ack, 1, false, b)
}

func (a *Agent) publishStatus(cl mqtt.Client) {
	a.mu.Lock()
	st := protocol.Status{Protocol: protocol.Version, Device: a.opts.Device, AgentVersion: "sim", Labels: a.opts.Labels,
		RootVersion: a.anchor.Doc.Version, Update: a.update, Health: protocol.HealthSummary{Status: protocol.HealthOK}, Time: time.Now().UTC()}
	for _, m := range a.models {
		st.Models = append(st.Models, m)
	}
	if a.opts.Trials {
		st.Features = []string{protocol.FeatureTrial}
	}
	a.mu.Unlock()
	b, _ := json.Marshal(st)
	cl.Publish(a.topics.Status, 1, true, b)
}
