package updater

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/agent/audit"
	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// State is where an update is: the protocol's update states, which acks,
// the status message and telemetry carry.
type State = protocol.UpdateState

// The states of an update, in the order a good one passes them.
const (
	Idle        = protocol.UpdateIdle        // no update has run yet
	Downloading = protocol.UpdateDownloading // fetching the model in chunks
	Verifying   = protocol.UpdateVerifying   // checking the signed release against the bytes
	Staged      = protocol.UpdateStaged      // verified, waiting to be validated
	Validating  = protocol.UpdateValidating  // loaded beside the live model, golden vectors running
	Shadow      = protocol.UpdateShadow      // held beside the serving version, copies of live requests
	Canary      = protocol.UpdateCanary      // held beside the serving version, answering a share
	Activating  = protocol.UpdateActivating  // installing into the store and swapping it in
	Probation   = protocol.UpdateProbation   // live, traffic watched
	Committed   = protocol.UpdateCommitted   // kept (terminal)
	RollingBack = protocol.UpdateRollingBack
	RolledBack  = protocol.UpdateRolledBack // the previous version serves again (terminal)
	Failed      = protocol.UpdateFailed     // stopped before activation; nothing changed (terminal)
)

// States lists every state, for metrics.
var States = []State{Idle, Downloading, Verifying, Staged, Validating, Shadow, Canary, Activating, Probation, Committed, RollingBack, RolledBack, Failed}

// over reports whether a job in s is over (or there never was one).
func over(s State) bool { return s == Idle || s.Terminal() }

// next lists the states each state may move to. A terminal state moves only
// by starting a new job.
var next = map[State][]State{
	Downloading: {Verifying, Failed},
	Verifying:   {Staged, Failed},
	Staged:      {Validating, Failed},
	Validating:  {Activating, Shadow, Canary, Failed},
	// A trial changes mode (or takes a new command id) in place, is
	// promoted, or ends before anything was activated.
	Shadow:      {Shadow, Canary, Activating, Failed},
	Canary:      {Shadow, Canary, Activating, Failed},
	Activating:  {Probation, RollingBack, Failed},
	Probation:   {Committed, RollingBack},
	RollingBack: {RolledBack, Failed},
}

// starts are the states a new job may begin in.
var starts = []State{Downloading, RollingBack, Committed, Failed}

func allowed(from, to State) bool {
	list := next[from]
	if over(from) {
		list = starts
	}
	for _, s := range list {
		if s == to {
			return true
		}
	}
	return false
}

// Version names one installed model version.
type Version struct {
	Version int64  `json:"version"`
	SHA256  string `json:"sha256"`
}

// Job is one update, as persisted in updater.db. Only the Run goroutine
// changes it.
type Job struct {
	// Seq numbers jobs on this device; it names the job's work directory.
	Seq       uint64 `json:"seq"`
	CommandID string `json:"command_id"`
	RolloutID string `json:"rollout_id"`
	// Kind is "install" (download, verify, validate, activate) or
	// "rollback" (go back to the store's previous version).
	Kind  string `json:"kind"`
	State State  `json:"state"`

	Model   string `json:"model"`
	Version int64  `json:"version"`
	SHA256  string `json:"sha256,omitempty"`
	Length  int64  `json:"length,omitempty"`
	// Release and Roots are the signed release envelope and the root chain
	// the command carried (install only). They can be large (golden
	// vectors), so they are kept apart from the job, written once.
	Release []byte   `json:"-"`
	Roots   [][]byte `json:"-"`
	// ChunkSize is the transfer's chunk size; Done the number of chunks
	// durably written to the partial file, a prefix of the artifact.
	ChunkSize int `json:"chunk_size,omitempty"`
	Done      int `json:"done,omitempty"`

	// From is what was current before activation (nil: nothing was).
	From *Version `json:"from,omitempty"`
	// ProbationStart is when probation began; Boots counts the agent
	// starts that found the job in probation.
	ProbationStart time.Time `json:"probation_start,omitzero"`
	Boots          int       `json:"boots,omitempty"`
	// Policy is the install command's probation override (zero fields:
	// the device's setting).
	Policy protocol.Probation `json:"probation_policy,omitzero"`
	// Trial is the install command's trial: after validation the version
	// is held beside the serving one (states shadow and canary) instead of
	// activated. Nil once promoted. Expires is the command's expiry: a
	// candidate still on trial then is discarded ("trial expired").
	Trial   *protocol.Trial `json:"trial,omitempty"`
	Expires time.Time       `json:"expires,omitzero"`
	// Seen is the new version's traffic during probation, as last saved:
	// the traffic counters live in the process, so what earlier processes
	// counted is carried here (saved about every second while it changes,
	// and when Run stops).
	Seen TrafficStats `json:"probation_seen,omitzero"`
	// Verified: the commit came after Seen.Requests reached the minimum.
	Verified bool `json:"verified,omitempty"`

	// Error says why the job failed or was rolled back.
	Error   string    `json:"error,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

var (
	bucketJob     = []byte("job")     // "current" -> Job
	bucketPending = []byte("pending") // seq -> Command (JSON), waiting for the current job
	bucketSeen    = []byte("seen")    // command id -> expiry (RFC 3339), for replay refusal
	bucketOutbox  = []byte("outbox")  // seq -> outboxEntry, reports not yet handed to telemetry
	bucketSigned  = []byte("signed")  // "current" -> signedDocs of the current job
	keyCurrent    = []byte("current")
)

func initDB(tx *bolt.Tx) error {
	for _, b := range [][]byte{bucketJob, bucketPending, bucketSeen, bucketOutbox, bucketSigned} {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return err
		}
	}
	return audit.Init(tx)
}

func seqKey(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

type signedDocs struct {
	Seq     uint64   `json:"seq"`
	Release []byte   `json:"release"`
	Roots   [][]byte `json:"roots"`
}

// readJob returns the current job, or nil when there never was one.
func readJob(tx *bolt.Tx) (*Job, error) {
	b := tx.Bucket(bucketJob).Get(keyCurrent)
	if b == nil {
		return nil, nil
	}
	var j Job
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("%w: job: %v", ErrCorrupt, err)
	}
	if b := tx.Bucket(bucketSigned).Get(keyCurrent); b != nil {
		var s signedDocs
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("%w: signed documents: %v", ErrCorrupt, err)
		}
		if s.Seq == j.Seq {
			j.Release, j.Roots = s.Release, s.Roots
		}
	}
	return &j, nil
}

// putSigned stores the job's release and roots; once per job.
func putSigned(j *Job) func(*bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		b, err := json.Marshal(signedDocs{Seq: j.Seq, Release: j.Release, Roots: j.Roots})
		if err != nil {
			return err
		}
		return tx.Bucket(bucketSigned).Put(keyCurrent, b)
	}
}

func putJob(tx *bolt.Tx, j *Job) error {
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketJob).Put(keyCurrent, b)
}

// outboxEntry is one transition's reports, kept until telemetry has them.
type outboxEntry struct {
	Ack   protocol.Ack `json:"ack"`
	Audit audit.Record `json:"audit"`
	Hash  string       `json:"hash"`
}

var errTransition = errors.New("updater: transition not allowed")

// transition moves j to state to and, in the same bbolt transaction,
// appends the audit record and queues the reports. Nothing the new state
// does happens before this returns: a crash after it resumes in the new
// state, a crash before it in the old one.
//
// extra, if not nil, runs in the same transaction.
func (u *Updater) transition(j *Job, to State, detail string, extra ...func(*bolt.Tx) error) error {
	if !allowed(j.State, to) {
		return fmt.Errorf("%w: %s -> %s", errTransition, j.State, to)
	}
	prev := *j
	j.State = to
	j.Updated = u.now()
	if to == Failed || to == RollingBack {
		j.Error = detail
	}
	if err := u.commit(j, detail, extra); err != nil {
		*j = prev
		return err
	}
	// The reports go out now, not when the job ends: a probation can last
	// minutes, and the fleet waits for its ack.
	u.poke(u.outboxWake)
	u.metrics.transition(to)
	u.log.Info("update", "state", to, "model", j.Model, "version", j.Version, "rollout", j.RolloutID, "detail", detail)
	u.crashAt("updater-" + string(to))
	return nil
}

// commit writes j, its audit record and its reports in one transaction.
func (u *Updater) commit(j *Job, detail string, extra []func(*bolt.Tx) error) error {
	outcome := "ok"
	switch {
	case j.State == Committed && !j.ProbationStart.IsZero() && !j.Verified:
		outcome = "unverified"
	case j.State == Failed:
		outcome = "failed"
	case j.State == RollingBack || j.State == RolledBack:
		outcome = "rolled_back"
	}
	rec := audit.Record{Time: j.Updated, Actor: "updater", Action: "update." + string(j.State), Outcome: outcome,
		RolloutID: j.RolloutID, CommandID: j.CommandID, Model: j.Model, Version: j.Version, SHA256: j.SHA256, Detail: detail}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.applyRetarget(j)
	err := u.db.Update(func(tx *bolt.Tx) error {
		for _, f := range extra {
			if err := f(tx); err != nil {
				return err
			}
		}
		if err := putJob(tx, j); err != nil {
			return err
		}
		e, err := audit.AppendTx(tx, rec)
		if err != nil {
			return err
		}
		return putOutbox(tx, outboxEntry{Ack: j.ack(detail), Audit: e.Record, Hash: e.Hash})
	})
	if err == nil && u.cur != nil && u.cur.Seq == j.Seq {
		// The status (UpdateStatus) says the new state before its ack
		// goes out, not only once the step that moved it returns.
		c := *j
		u.cur = &c
	}
	return err
}

// saveProgress persists j without a transition (download progress,
// probation boots): no audit record, no report.
func (u *Updater) saveProgress(j *Job) error {
	j.Updated = u.now()
	u.mu.Lock()
	defer u.mu.Unlock()
	u.applyRetarget(j)
	return u.db.Update(func(tx *bolt.Tx) error { return putJob(tx, j) })
}

// retarget is what a retransmitted install changes in the running job: the
// command id it answers to, and (before it is held on trial) its trial and
// expiry.
type retarget struct {
	id      string
	trial   *protocol.Trial
	expires time.Time
}

// applyRetarget gives j the command id (and trial) of a retransmitted
// install; u.mu is held.
func (u *Updater) applyRetarget(j *Job) {
	if r := u.retarget; r != nil {
		if u.cur != nil && u.cur.Seq == j.Seq {
			j.CommandID = r.id
			if !activated(j.State) {
				j.Trial, j.Expires = r.trial, r.expires
			}
		}
		u.retarget = nil
	}
}
