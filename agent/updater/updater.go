// Package updater is the device side of over-the-air model updates: a state
// machine persisted in bbolt (DATA_DIR/updater.db) that takes a signed
// command from the fleet and carries one model version through
//
//	downloading -> verifying -> staged -> validating -> activating -> probation -> committed
//
// or, when something goes wrong after the swap, rolling_back -> rolled_back,
// and failed when it stops before anything changed.
//
//   - Download fetches the artifact in chunks through a ChunkSource, each
//     chunk checked against its hash and appended to a partial file; progress
//     is made durable by group commit (every chunk, for any artifact size),
//     acked about every 10%, and a dropped link, a reconnection or a restart
//     resumes from the first chunk not held. Memory stays at one window of
//     chunks.
//   - Verify builds a bundle directory (roots, release, model) and runs
//     models/bundle.Verify against the device's trust anchor: signatures,
//     expiry, digest, length, minimum agent version. It fails closed.
//   - Validate loads the model with the real runtime, beside the live one,
//     and runs the golden vectors of the signed manifest within their
//     tolerance and a latency budget.
//   - Activate installs into agent/store (which refuses rollbacks unless the
//     release is a signed rollback instruction) and swaps the model in
//     through an Activator, the daemon's serving registry.
//   - An install with a trial (docs/PROTOCOL.md, Trials) stops after
//     validation in shadow or canary: the candidate is loaded beside the
//     serving version through Trials and held there (the job's state is
//     durable, so a restart holds it again from the staged file) until an
//     install of the same update changes the trial or, without one,
//     promotes it (activating swaps the loaded candidate in); an abort, a
//     rollback of the version, another install or the command's expiry
//     discards it and its staged bytes.
//   - Probation watches the new version's error ratio and latency through a
//     TrafficSource, and needs evidence: it commits once the version served
//     its minimum of requests (a verified commit) or, without them, at its
//     maximum time (an unverified commit, said so in the ack, the status and
//     the audit trail); or it rolls back with store.Rollback and swaps the
//     old version back. The counts survive a restart (Job.Seen).
//
// Commands come from the fleet over MQTT (Link, HandleCommand), verified
// with protocol.VerifyCommand and refused when replayed; install, rollback
// and abort behave as docs/PROTOCOL.md says. One job runs at a time; others
// wait in a durable queue.
//
// Every transition is committed to bbolt, together with a hash-chained
// audit record (agent/audit) and the reports of it, before its effect
// starts; after a crash Run resumes the job from its last state (or rolls it
// back). Reports go out from an outbox: an update and an audit record to
// telemetry (durable, at least once) and an ack through a Reporter (best
// effort; the fleet also learns from telemetry).
//
// Test hook (-tags outposttest, internal/crashpoint):
// OUTPOST_CRASHPOINT=updater-<state> makes the process SIGKILL
// itself right after entering <state>; updater-chunk after the first half of
// a download is durable, updater-installed after the store install and
// updater-store-rolled-back after the store rollback. agent/store's crash
// points work too. TestCrash kills a re-executed test binary at each; for a
// longer run:
//
//	OUTPOST_CRASH_LOOPS=20 go test -race -tags outposttest -run 'TestCrash$' ./agent/updater
package updater

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/agent/audit"
	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/internal/crashpoint"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// Errors; callers test with errors.Is.
var (
	// ErrOptions: New was called without something it needs.
	ErrOptions = errors.New("updater: missing option")
	// ErrCorrupt: updater.db holds something unreadable.
	ErrCorrupt = errors.New("updater: corrupt state")
	// ErrRefused: a command was not carried out (unsigned, expired,
	// replayed, malformed, or not applicable); the wrapped error says why.
	ErrRefused = errors.New("updater: command refused")
	// ErrReplay: a command with this id was already received.
	ErrReplay = errors.New("updater: command replayed")
	// ErrValidation: the model failed validation (load, golden vectors,
	// latency budget).
	ErrValidation = errors.New("updater: validation failed")
	// ErrProbation: the model failed probation.
	ErrProbation = errors.New("updater: probation failed")
	// ErrChunk: a chunk's bytes do not match its hash or its place.
	ErrChunk = errors.New("updater: bad chunk")
	// ErrNoSource: an install needs a ChunkSource and there is none.
	ErrNoSource = errors.New("updater: no chunk source")
)

// Activator makes a model version the one served, without failing a request
// (the daemon implements it with serving.Registry.Load). It is called by the
// Run goroutine only; activating the version already served does nothing.
type Activator interface {
	Activate(ctx context.Context, name string, version int64, data []byte) error
}

// ActivatorFunc adapts a function to Activator.
type ActivatorFunc func(ctx context.Context, name string, version int64, data []byte) error

// Activate calls f.
func (f ActivatorFunc) Activate(ctx context.Context, name string, version int64, data []byte) error {
	return f(ctx, name, version, data)
}

// Emitter keeps telemetry records durably (telemetry.Queue implements it):
// Emit returns once the record is kept, or with an error.
type Emitter interface {
	Emit(ctx context.Context, r protocol.Record) (uint64, error)
}

// Reporter sends an ack to the fleet (the MQTT link implements it). Report
// may fail when the link is down; the updater does not retry, the fleet also
// learns from telemetry and the retained status. It must return soon after
// ctx is done.
type Reporter interface {
	Report(ctx context.Context, a protocol.Ack) error
}

// Trials holds candidates on trial beside the serving versions of models
// (the daemon's serving registry; docs/PROTOCOL.md, Trials). It is called
// by the Run goroutine only. Promotion is not here: Activator.Activate with
// the candidate's version and bytes swaps the candidate in without loading
// it again.
type Trials interface {
	// Serving reports whether name has a serving version for a candidate
	// to stand beside.
	Serving(name string) bool
	// StartTrial loads data as name's candidate at version beside the
	// serving version, held in trial t; for the candidate already loaded
	// (same version and bytes) only the mode and share change, at once.
	StartTrial(ctx context.Context, name string, version int64, data []byte, t protocol.Trial) error
	// EndTrial unloads name's candidate, if any, once its calls in flight
	// finish; the serving version never stops.
	EndTrial(name string)
}

// Probation defaults (Options.ProbationMinRequests, Options.ProbationMax).
const (
	DefaultProbationMinRequests = 20
	DefaultProbationMax         = 15 * time.Minute
)

func (j *Job) ack(detail string) protocol.Ack {
	a := protocol.Ack{CommandID: j.CommandID, RolloutID: j.RolloutID, Model: j.Model, Version: j.Version,
		State: j.State, Total: j.Length, Detail: detail, Time: j.Updated}
	if j.ChunkSize > 0 {
		a.Progress = min(int64(j.Done)*int64(j.ChunkSize), j.Length)
	}
	if j.State == Probation || j.State == Committed {
		a.Requests = int64(j.Seen.Requests)
		a.Verified = j.State == Committed && j.Verified
	}
	if j.State == Failed || j.State == RollingBack || j.State == RolledBack {
		a.Error = j.Error
	}
	return a
}

// The errors of trials' acks, as docs/PROTOCOL.md (Trials) words them.
const (
	trialNeedsServing = "trial needs a serving version"
	trialExpired      = "trial expired"
)

// trialDetail names a trial's share, for its ack.
func trialDetail(t protocol.Trial) string {
	if t.Mode == protocol.TrialCanary {
		return fmt.Sprintf("canary: answering %g%% of the requests", t.Percent)
	}
	return fmt.Sprintf("shadow: copies of %g%% of the requests", t.Percent)
}

// Options configure an Updater. DataDir, Store, Activator and Runtime are
// required; every other zero value works.
type Options struct {
	// DataDir holds updater.db and the work directory updater/.
	DataDir string
	// Store is the model store updates install into.
	Store *store.Store
	// RootPath is the root the device was provisioned with; once the store
	// holds a newer root (store.Root), that one is the anchor.
	RootPath string
	// Source fetches artifacts; without it install commands fail.
	Source ChunkSource
	// Activator swaps a model in.
	Activator Activator
	// Runtime loads models for validation.
	Runtime Runtime
	// Trials holds candidates on trial; without it an install with a
	// trial fails.
	Trials Trials
	// Traffic feeds probation; without it no version is ever verified:
	// probation commits unverified at its maximum.
	Traffic TrafficSource
	// Telemetry receives an update and an audit record per transition.
	Telemetry Emitter
	// Reporter receives an ack per transition and download progress.
	Reporter Reporter
	// Fleet and Device are this device's names; commands for others are
	// refused.
	Fleet, Device string
	// AgentVersion is checked against a manifest's minimum agent version.
	AgentVersion string
	// Probation is the least time a new version is watched (default 1
	// min). Probation then lasts until the version has served
	// ProbationMinRequests requests (default 20), which commits it
	// verified, or until ProbationMax has passed since activation (default
	// 15 min; never less than Probation), which commits it unverified. An
	// install command's protocol.Probation overrides the last two.
	Probation            time.Duration
	ProbationMinRequests uint64
	ProbationMax         time.Duration
	// MaxErrorRatio fails probation when errors/requests exceeds it, once
	// MinRequests were seen, or ProbationMinRequests if fewer (defaults
	// 0.05 and 20): a verified commit is always one whose error ratio was
	// judged.
	MaxErrorRatio float64
	MinRequests   uint64
	// MaxLatency fails probation when the mean latency exceeds it (0: no
	// check).
	MaxLatency time.Duration
	// MaxProbationBoots rolls back when the agent started this many times
	// during one probation (default 3): a model that crashes the agent must
	// not keep it in a crash loop.
	MaxProbationBoots int
	// LatencyBudget bounds one golden vector's inference (default 2 s).
	LatencyBudget time.Duration
	// Window is how many chunks are requested at once (default 8);
	// ChunkTimeout how long to wait for one before asking again (default 10 s).
	Window       int
	ChunkTimeout time.Duration
	// ChunkSize is used when a command names none (default 64 KiB).
	ChunkSize int

	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Updater runs updates. Create it with New and run it with Run; Submit and
// HandleCommand are safe for concurrent use.
type Updater struct {
	opts    Options
	log     *slog.Logger
	db      *bolt.DB
	work    string
	metrics *metrics

	// probationBase and trialSeq are used by the Run goroutine only.
	probationBase probationBase
	// trialSeq is the job whose candidate this process loaded (0: none).
	trialSeq uint64

	wake       chan struct{} // a command was queued
	outboxWake chan struct{} // reports were queued

	// mu guards cancel, cur and retarget, and is held across every write
	// of the job record, so a retransmitted install's new command id
	// (retarget) is never overwritten with the old one.
	mu       sync.Mutex
	cancel   context.CancelCauseFunc
	cur      *Job       // a copy of the job Run is working on, for Status
	retarget *retarget  // what the running job answers to from now on
	stopNext *cancelled // a stop for a job Run had not picked up yet
}

// New opens DATA_DIR/updater.db and checks opts.
func New(opts Options) (*Updater, error) {
	switch {
	case opts.DataDir == "":
		return nil, fmt.Errorf("%w: DataDir", ErrOptions)
	case opts.Store == nil:
		return nil, fmt.Errorf("%w: Store", ErrOptions)
	case opts.Activator == nil:
		return nil, fmt.Errorf("%w: Activator", ErrOptions)
	case opts.Runtime == nil:
		return nil, fmt.Errorf("%w: Runtime", ErrOptions)
	case opts.Fleet == "" || opts.Device == "":
		return nil, fmt.Errorf("%w: Fleet and Device", ErrOptions)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Probation <= 0 {
		opts.Probation = time.Minute
	}
	if opts.ProbationMinRequests == 0 {
		opts.ProbationMinRequests = DefaultProbationMinRequests
	}
	if opts.ProbationMax <= 0 {
		opts.ProbationMax = DefaultProbationMax
	}
	if opts.MaxErrorRatio <= 0 {
		opts.MaxErrorRatio = 0.05
	}
	if opts.MinRequests == 0 {
		opts.MinRequests = 20
	}
	if opts.MaxProbationBoots <= 0 {
		opts.MaxProbationBoots = 3
	}
	if opts.LatencyBudget <= 0 {
		opts.LatencyBudget = 2 * time.Second
	}
	if opts.Window <= 0 {
		opts.Window = 8
	}
	if opts.ChunkTimeout <= 0 {
		opts.ChunkTimeout = 10 * time.Second
	}
	if opts.ChunkSize <= 0 {
		opts.ChunkSize = 64 << 10
	}
	u := &Updater{opts: opts, log: opts.Logger.With("component", "updater"), work: filepath.Join(opts.DataDir, "updater"),
		metrics: newMetrics(), wake: make(chan struct{}, 1), outboxWake: make(chan struct{}, 1)}
	if err := os.MkdirAll(u.work, 0o755); err != nil {
		return nil, fmt.Errorf("updater: %w", err)
	}
	db, err := bolt.Open(filepath.Join(opts.DataDir, "updater.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("updater: open: %w", err)
	}
	if err := db.Update(initDB); err != nil {
		db.Close()
		return nil, fmt.Errorf("updater: open: %w", err)
	}
	u.db = db
	if j, err := u.Job(); err == nil && j != nil {
		u.metrics.setState(j.State)
	}
	return u, nil
}

func (u *Updater) now() time.Time { return u.opts.Now() }

func (u *Updater) crashAt(point string) { crashpoint.At(point) }

// Close closes updater.db; call it after Run returned.
func (u *Updater) Close() error { return u.db.Close() }

// VerifyAudit walks the device's audit trail (agent/audit.Verify) and
// returns its length; an error wrapping audit.ErrTampered names the first
// record that does not fit.
func (u *Updater) VerifyAudit() (int, error) { return audit.Verify(u.db) }

// AuditTrail returns up to limit audit entries after sequence number after,
// oldest first (limit <= 0: all).
func (u *Updater) AuditTrail(after uint64, limit int) ([]audit.Entry, error) {
	return audit.List(u.db, after, limit)
}

// Job returns the current (or last) job, nil when there never was one.
func (u *Updater) Job() (*Job, error) {
	var j *Job
	err := u.db.View(func(tx *bolt.Tx) error {
		var err error
		j, err = readJob(tx)
		return err
	})
	return j, err
}

// Run carries out queued commands one at a time and resumes an interrupted
// job first. It returns nil when ctx is cancelled; a job in progress stays
// in its state and resumes at the next Run.
func (u *Updater) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	wg.Add(1)
	go func() {
		defer wg.Done()
		u.drainOutbox(ctx, u.outboxWake)
	}()
	poke := func() { u.poke(u.outboxWake) }
	boot := true
	for {
		if ctx.Err() != nil {
			return nil
		}
		j, err := u.Job()
		if err != nil {
			return err
		}
		if j != nil && !j.State.Terminal() {
			if boot {
				stop, err := u.pendingStop(j)
				if err != nil {
					return err
				}
				if stop != nil {
					u.mu.Lock()
					u.stopNext = stop
					u.mu.Unlock()
				}
			}
			if boot && j.State == Probation {
				j.Boots++
				if err := u.saveProgress(j); err != nil {
					return err
				}
			}
			boot = false
			u.runJob(ctx, j)
			poke()
			continue
		}
		boot = false
		started, err := u.startNext(ctx)
		if err != nil {
			u.log.Error("starting a queued command", "err", err)
		}
		poke()
		if started {
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case <-u.wake:
		}
	}
}

// runJob steps j until it is terminal, ctx is done, or a step cannot go on
// (then it waits and tries again: a broken disk must not spin).
func (u *Updater) runJob(ctx context.Context, j *Job) {
	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	u.mu.Lock()
	u.cancel = cancel
	c := *j
	u.cur = &c
	if s := u.stopNext; s != nil {
		u.stopNext = nil
		if s.seq == j.Seq {
			cancel(s)
		}
	}
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.cancel = nil
		u.cur = nil
		u.mu.Unlock()
	}()
	bo := backoff.New(stepRetryMin, stepRetryMax, nil)
	for !j.State.Terminal() && ctx.Err() == nil {
		u.setCur(j)
		err := u.step(jctx, j)
		if err == nil {
			bo.Reset()
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if cause := context.Cause(jctx); jctx.Err() != nil && cause != nil {
			// The fleet aborted this job.
			if err := u.abort(ctx, j, cause); err != nil {
				u.log.Error("abort", "err", err)
			}
			return
		}
		u.log.Error("update step", "state", j.State, "model", j.Model, "err", err)
		if bo.Wait(ctx, nil) != nil {
			return
		}
	}
	u.setCur(j)
}

// stepRetryMin and stepRetryMax bound the jittered backoff between attempts
// at a step that failed (a broken disk, a link that is down), and
// outboxRetryMin and outboxRetryMax the one between deliveries of a report
// that telemetry refused.
const (
	stepRetryMin, stepRetryMax     = time.Second, time.Minute
	outboxRetryMin, outboxRetryMax = 200 * time.Millisecond, 30 * time.Second
)

func (u *Updater) setCur(j *Job) {
	c := *j
	u.mu.Lock()
	u.cur = &c
	u.mu.Unlock()
	u.metrics.setState(j.State)
}

// abort handles a job whose context the fleet cancelled (see submit): an
// update not yet activated fails; an activated one is rolled back if the
// cause says so, and otherwise carries on (Run steps it again).
func (u *Updater) abort(ctx context.Context, j *Job, cause error) error {
	// Reload: the step may have moved j on before it saw the cancel.
	cur, err := u.Job()
	if err != nil {
		return err
	}
	*j = *cur
	c, _ := cause.(*cancelled)
	if c == nil {
		c = &cancelled{msg: cause.Error()}
	}
	switch {
	case j.State.Terminal():
		return nil
	case activated(j.State) && !c.rollback:
		return nil
	case j.State == Shadow || j.State == Canary:
		u.endTrial(j)
		u.cleanup()
		return u.transition(j, Failed, c.msg)
	case j.State == Activating || j.State == Probation:
		if err := u.transition(j, RollingBack, c.msg); err != nil {
			return err
		}
		return u.rollback(ctx, j)
	case j.State == RollingBack:
		return u.rollback(ctx, j)
	}
	u.cleanup()
	return u.transition(j, Failed, c.msg)
}

// step does the work of j's state and moves it on. An error means j stays
// where it is (a transient failure, or ctx ended).
func (u *Updater) step(ctx context.Context, j *Job) error {
	switch j.State {
	case Downloading:
		return u.stepDownload(ctx, j)
	case Verifying:
		return u.stepVerify(j)
	case Staged:
		return u.transition(j, Validating, "")
	case Validating:
		return u.stepValidate(ctx, j)
	case Shadow, Canary:
		return u.stepTrial(ctx, j)
	case Activating:
		return u.stepActivate(ctx, j)
	case Probation:
		return u.stepProbation(ctx, j)
	case RollingBack:
		return u.rollback(ctx, j)
	}
	return fmt.Errorf("%w: job in state %q", ErrCorrupt, j.State)
}

// jobDir is the job's work directory.
func (u *Updater) jobDir(j *Job) string {
	return filepath.Join(u.work, "job-"+strconv.FormatUint(j.Seq, 10))
}

// cleanup empties the work directory: a finished job's files, and whatever
// an interrupted one left.
func (u *Updater) cleanup() {
	ents, err := os.ReadDir(u.work)
	if err != nil {
		return
	}
	for _, e := range ents {
		os.RemoveAll(filepath.Join(u.work, e.Name()))
	}
}

// anchor returns the device's trust anchor: the store's newest root, else
// the provisioned one. A stored root that does not load fails closed.
func (u *Updater) anchor() (*trust.Root, error) {
	b, err := u.opts.Store.Root()
	if errors.Is(err, store.ErrNotFound) {
		if u.opts.RootPath == "" {
			return nil, fmt.Errorf("updater: no trust root: the store holds none and no root file is configured")
		}
		b, err = os.ReadFile(u.opts.RootPath)
	}
	if err != nil {
		return nil, fmt.Errorf("updater: trust root: %w", err)
	}
	r, err := trust.LoadRoot(b)
	if err != nil {
		return nil, fmt.Errorf("updater: trust root: %w", err)
	}
	return r, nil
}

// StagedManifest returns the signed manifest of the update under way when
// its model's sha256 (hex) is sha: the candidate on trial, whose manifest
// (with its reference profile) the store does not hold until promotion. The
// release is verified again against the trust anchor. ok is false for any
// other digest, when no install is under way, or when it does not verify.
// Safe for concurrent use.
func (u *Updater) StagedManifest(sha string) (m *manifest.Manifest, ok bool) {
	j, err := u.Job()
	if err != nil || j == nil || j.State.Terminal() || j.Kind != string(protocol.CommandInstall) || j.SHA256 != sha {
		return nil, false
	}
	anchor, err := u.anchor()
	if err != nil {
		return nil, false
	}
	root, err := anchor.Chain(j.Roots)
	if err != nil {
		return nil, false
	}
	rel, err := root.VerifyRelease(j.Release, u.now())
	if err != nil || rel.Model.SHA256 != sha {
		return nil, false
	}
	return &rel.Model, true
}

// UpdateStatus is the current or last update for the device's status
// message (protocol.Status.Update), nil if there never was one.
func (u *Updater) UpdateStatus() *protocol.UpdateStatus {
	u.mu.Lock()
	var j *Job
	if u.cur != nil {
		c := *u.cur
		j = &c
	}
	u.mu.Unlock()
	if j == nil {
		var err error
		if j, err = u.Job(); err != nil || j == nil {
			return nil
		}
	}
	a := j.ack("")
	return &protocol.UpdateStatus{CommandID: a.CommandID, RolloutID: a.RolloutID, Model: a.Model, Version: a.Version,
		State: a.State, Progress: a.Progress, Total: a.Total, Error: a.Error, Requests: a.Requests, Verified: a.Verified, Time: a.Time}
}
