package updater

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/outpost-edge/outpost/agent/audit"
	"github.com/outpost-edge/outpost/agent/store"
	bolt "go.etcd.io/bbolt"
)

// Command actions.
const (
	ActionInstall  = "install"  // download, verify, validate, activate a release
	ActionRollback = "rollback" // go back to the store's previous version
	ActionAbort    = "abort"    // stop a rollout: undo its job here
)

// Command is a fleet command whose signature was checked.
type Command struct {
	ID        string    `json:"id"`
	RolloutID string    `json:"rollout_id"`
	Expires   time.Time `json:"expires"`
	Action    string    `json:"action"`
	// Model and Version name the target (rollback: the version to return
	// to; install: taken from the release).
	Model   string `json:"model,omitempty"`
	Version int64  `json:"version,omitempty"`
	// Release is the signed release envelope, Roots the root chain to
	// reach the key that signed it (install).
	Release []byte   `json:"release,omitempty"`
	Roots   [][]byte `json:"roots,omitempty"`
	// ChunkSize of the artifact transfer (install); 0 uses the default.
	ChunkSize int `json:"chunk_size,omitempty"`
	// Probation overrides the configured probation time when positive.
	Probation time.Duration `json:"probation,omitempty"`
}

// submit queues a verified command: refused when expired or already seen
// (replay), otherwise remembered until it expires and queued for Run in one
// transaction. An abort of the running job's rollout cancels that job now.
func (u *Updater) submit(c Command) error {
	now := u.now()
	if c.ID == "" {
		u.metrics.commands.WithLabelValues(ResultMalformed).Inc()
		return fmt.Errorf("%w: command has no id", ErrRefused)
	}
	if !now.Before(c.Expires) {
		u.metrics.commands.WithLabelValues(ResultExpired).Inc()
		u.log.Warn("command refused: expired", "command", c.ID, "rollout", c.RolloutID, "expired", c.Expires)
		return fmt.Errorf("%w: command %s expired at %s", ErrRefused, c.ID, c.Expires.Format(time.RFC3339))
	}
	switch c.Action {
	case ActionInstall, ActionRollback, ActionAbort:
	default:
		u.metrics.commands.WithLabelValues(ResultMalformed).Inc()
		return fmt.Errorf("%w: unknown action %q", ErrRefused, c.Action)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	err = u.db.Update(func(tx *bolt.Tx) error {
		seen := tx.Bucket(bucketSeen)
		if seen.Get([]byte(c.ID)) != nil {
			return ErrReplay
		}
		// Forget commands that expired: they are refused for that already.
		var old [][]byte
		cur := seen.Cursor()
		for k, v := cur.First(); k != nil; k, v = cur.Next() {
			if t, err := time.Parse(time.RFC3339Nano, string(v)); err == nil && t.Before(now) {
				old = append(old, append([]byte(nil), k...))
			}
		}
		for _, k := range old {
			if err := seen.Delete(k); err != nil {
				return err
			}
		}
		if err := seen.Put([]byte(c.ID), []byte(c.Expires.UTC().Format(time.RFC3339Nano))); err != nil {
			return err
		}
		p := tx.Bucket(bucketPending)
		n, _ := p.NextSequence()
		if err := p.Put(seqKey(n), b); err != nil {
			return err
		}
		_, err := audit.AppendTx(tx, audit.Record{Time: now, Actor: "fleet", Action: "command." + c.Action, Outcome: "accepted",
			RolloutID: c.RolloutID, CommandID: c.ID, Model: c.Model, Version: c.Version})
		return err
	})
	if errors.Is(err, ErrReplay) {
		u.metrics.commands.WithLabelValues(ResultReplayed).Inc()
		u.log.Warn("command refused: replayed", "command", c.ID, "rollout", c.RolloutID)
		return fmt.Errorf("%w: %w: %s", ErrRefused, ErrReplay, c.ID)
	}
	if err != nil {
		return fmt.Errorf("updater: queue command: %w", err)
	}
	u.metrics.commands.WithLabelValues(ResultAccepted).Inc()
	u.log.Info("command accepted", "command", c.ID, "action", c.Action, "rollout", c.RolloutID)
	if c.Action == ActionAbort {
		u.mu.Lock()
		if u.cancel != nil && u.cur != nil && u.cur.RolloutID == c.RolloutID {
			u.cancel(fmt.Errorf("aborted by the fleet (command %s)", c.ID))
		}
		u.mu.Unlock()
	}
	select {
	case u.wake <- struct{}{}:
	default:
	}
	return nil
}

// startNext takes the oldest queued command and starts its job. It reports
// whether there was one.
func (u *Updater) startNext(ctx context.Context) (bool, error) {
	var (
		key []byte
		c   Command
	)
	err := u.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bucketPending).Cursor().First()
		if k == nil {
			return nil
		}
		key = append([]byte(nil), k...)
		return json.Unmarshal(v, &c)
	})
	if key == nil && err == nil {
		return false, nil
	}
	pop := func(tx *bolt.Tx) error { return tx.Bucket(bucketPending).Delete(key) }
	if err != nil {
		// Unreadable: drop it rather than block the queue.
		return true, u.db.Update(pop)
	}
	last, err := u.Job()
	if err != nil {
		return false, err
	}
	j := &Job{CommandID: c.ID, RolloutID: c.RolloutID, Kind: c.Action, Model: c.Model, Version: c.Version,
		Probation: c.Probation, Created: u.now(), State: Idle}
	if last != nil {
		j.Seq = last.Seq + 1
	} else {
		j.Seq = 1
	}
	to, detail := u.plan(j, c, last)
	if to == "" {
		// Nothing to do (an abort of a rollout that left nothing here).
		u.log.Info("command needs nothing", "command", c.ID, "detail", detail)
		return true, u.db.Update(pop)
	}
	u.cleanup(nil)
	return true, u.transition(j, to, detail, pop, putSigned(j))
}

// plan fills j from c and returns the state the job starts in, with why.
func (u *Updater) plan(j *Job, c Command, last *Job) (State, string) {
	switch c.Action {
	case ActionAbort:
		// The rollout's job already ended here; if it left its version
		// serving, go back.
		if last == nil || last.RolloutID != c.RolloutID || last.State != Committed || last.From == nil {
			return "", "nothing of rollout " + c.RolloutID + " to undo"
		}
		j.Kind = ActionRollback
		j.Model, j.Version, j.SHA256, j.From = last.Model, last.Version, last.SHA256, last.From
		j.Error = "rollout " + c.RolloutID + " aborted by the fleet"
		return RollingBack, j.Error
	case ActionRollback:
		cur, err := u.opts.Store.Current(c.Model)
		if err != nil {
			return Failed, "rollback: " + err.Error()
		}
		if cur.Manifest.Version == c.Version {
			j.SHA256 = cur.Manifest.SHA256
			return Committed, fmt.Sprintf("v%d already serves", c.Version)
		}
		prev, err := u.opts.Store.Previous(c.Model)
		if err != nil || prev.Manifest.Version != c.Version {
			return Failed, fmt.Sprintf("rollback: v%d is not the previous version of %s", c.Version, c.Model)
		}
		j.Version, j.SHA256 = cur.Manifest.Version, cur.Manifest.SHA256
		j.From = &Version{Version: prev.Manifest.Version, SHA256: prev.Manifest.SHA256}
		j.Error = fmt.Sprintf("rollback to v%d ordered by the fleet", c.Version)
		return RollingBack, j.Error
	}
	// Install: check the signed release before fetching a byte.
	anchor, err := u.anchor()
	if err != nil {
		return Failed, err.Error()
	}
	root, err := anchor.Chain(c.Roots)
	if err != nil {
		return Failed, "verify: root chain: " + err.Error()
	}
	rel, err := root.VerifyRelease(c.Release, u.now())
	if err != nil {
		return Failed, "verify: " + err.Error()
	}
	m := rel.Model
	j.Model, j.Version, j.SHA256, j.Length = m.Name, m.Version, m.SHA256, m.Length
	j.Release, j.Roots = c.Release, c.Roots
	j.ChunkSize = c.ChunkSize
	if j.ChunkSize <= 0 {
		j.ChunkSize = u.opts.ChunkSize
	}
	if !m.AgentSupported(u.opts.AgentVersion) {
		return Failed, fmt.Sprintf("verify: %s v%d needs agent %s, this is %s", m.Name, m.Version, m.MinAgentVersion, u.opts.AgentVersion)
	}
	cur, err := u.opts.Store.Current(m.Name)
	switch {
	case err == nil && cur.Manifest.Version == m.Version && cur.Manifest.SHA256 == m.SHA256:
		return Committed, fmt.Sprintf("v%d already installed", m.Version)
	case err == nil && m.Version < cur.Manifest.Version && !m.Rollback:
		return Failed, fmt.Sprintf("%v: v%d is installed, the release offers v%d without a signed rollback instruction", store.ErrRollback, cur.Manifest.Version, m.Version)
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return Failed, err.Error()
	}
	return Downloading, fmt.Sprintf("%d bytes, release serial %d", m.Length, rel.Serial)
}
