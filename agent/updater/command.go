package updater

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/agent/audit"
	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// queued is a verified command waiting for Run, with the root chain it
// carried (an install's bundle needs it).
type queued struct {
	Cmd   protocol.Command `json:"cmd"`
	Roots [][]byte         `json:"roots,omitempty"`
}

// cancelled is the cause given to a running job's context.
type cancelled struct {
	seq uint64 // the job it stops
	// rollback: undo an activated version too; otherwise only an update
	// not yet activated stops.
	rollback bool
	msg      string
}

func (c *cancelled) Error() string { return c.msg }

// HandleCommand verifies a cmd-topic payload (protocol.VerifyCommand: root
// chain, signature, target, times, release) and queues the command. A
// command that fails a check, or whose id was seen before, is refused: the
// error wraps ErrRefused, one line is logged and the metrics count it; the
// sender gets no answer. Safe for concurrent use; it never blocks on a
// running update.
func (u *Updater) HandleCommand(payload []byte) error {
	anchor, err := u.anchor()
	if err != nil {
		return err
	}
	vc, err := protocol.VerifyCommand(payload, anchor, protocol.VerifyOptions{Fleet: u.opts.Fleet, Device: u.opts.Device, Now: u.now()})
	if err != nil {
		result := ResultMalformed
		switch {
		case errors.Is(err, protocol.ErrCommandExpired), errors.Is(err, protocol.ErrCommandNotYetValid), errors.Is(err, trust.ErrExpired):
			result = ResultExpired
		case errors.Is(err, dsse.ErrThreshold), errors.Is(err, dsse.ErrPayloadType), errors.Is(err, trust.ErrRootVersion):
			result = ResultBadSig
		case errors.Is(err, protocol.ErrWrongTarget):
			result = ResultOther
		}
		u.metrics.commands.WithLabelValues(result).Inc()
		u.log.Warn("command refused", "result", result, "err", err)
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	msg, _, err := protocol.ParseCommandMessage(payload)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	q := queued{Cmd: vc.Command}
	for _, r := range msg.Roots {
		q.Roots = append(q.Roots, []byte(r))
	}
	// Keep the newest root at once: keys it revoked stay revoked.
	if err := u.opts.Store.SaveRoot(vc.Root); err != nil && !errors.Is(err, store.ErrRootVersion) {
		u.log.Warn("saving the command's root", "err", err)
	}
	return u.submit(q)
}

// activated reports whether a job in s has swapped its version in.
func activated(s State) bool { return s == Activating || s == Probation || s == RollingBack }

// submit remembers a verified command's id until it expires and queues it,
// in one transaction; a replayed id is refused. It stops the running job
// when the command makes it moot: an install for another update supersedes
// one not yet activated, an abort cancels its rollout's unactivated update,
// a rollback of the running version undoes it. An install for the update
// already under way only takes over its acks (a retransmission).
func (u *Updater) submit(q queued) error {
	c := q.Cmd
	now := u.now()
	b, err := json.Marshal(q)
	if err != nil {
		return err
	}
	var stop *cancelled
	retrans := false
	u.mu.Lock()
	err = u.db.Update(func(tx *bolt.Tx) error {
		seen := tx.Bucket(bucketSeen)
		if seen.Get([]byte(c.ID)) != nil {
			return ErrReplay
		}
		if err := forgetExpired(seen, now); err != nil {
			return err
		}
		if err := seen.Put([]byte(c.ID), []byte(c.Expires.UTC().Format(time.RFC3339Nano))); err != nil {
			return err
		}
		rec := audit.Record{Time: now, Actor: "fleet", Action: "command." + string(c.Kind), Outcome: "accepted",
			RolloutID: c.RolloutID, CommandID: c.ID}
		j, err := readJob(tx)
		if err != nil {
			return err
		}
		running := j != nil && !j.State.Terminal()
		if running {
			stop = stopFor(j, c)
		}
		switch {
		case c.Install != nil:
			rec.Model, rec.Version, rec.SHA256 = c.Install.Model, c.Install.Version, c.Install.Artifact.SHA256
			sameUpdate := running && j.RolloutID == c.RolloutID && j.Model == c.Install.Model && j.Version == c.Install.Version
			if sameUpdate && (j.State == Shadow || j.State == Canary) {
				// Changes the trial or promotes the candidate: queued
				// for the job, which takes it (stepTrial).
				rec.Detail = "for the candidate on trial (command " + j.CommandID + ")"
				break
			}
			if sameUpdate {
				// A retransmission: carry on, answering to the new id
				// (and, before the candidate is held, with its trial).
				retrans = true
				rec.Detail = "retransmission of command " + j.CommandID
				j.CommandID = c.ID
				if !activated(j.State) {
					j.Trial, j.Expires = c.Install.Trial, c.Expires
				}
				u.retarget = &retarget{id: c.ID, trial: j.Trial, expires: j.Expires}
				if err := putJob(tx, j); err != nil {
					return err
				}
				// Appended first, so the report carries the record's
				// place in the trail (the fleet checks the chain).
				e, err := audit.AppendTx(tx, rec)
				if err != nil {
					return err
				}
				return putOutbox(tx, outboxEntry{Ack: j.ack(rec.Detail), Audit: e.Record, Hash: e.Hash})
			}
		case c.Rollback != nil:
			rec.Model, rec.Version, rec.Detail = c.Rollback.Model, c.Rollback.Version, c.Rollback.Reason
		case c.Abort != nil:
			rec.Detail = c.Abort.Reason
			if err := dropPending(tx, c.RolloutID); err != nil {
				return err
			}
		}
		if _, err := audit.AppendTx(tx, rec); err != nil {
			return err
		}
		p := tx.Bucket(bucketPending)
		n, _ := p.NextSequence()
		return p.Put(seqKey(n), b)
	})
	if err == nil && stop != nil {
		if u.cancel != nil && u.cur != nil && u.cur.Seq == stop.seq {
			u.cancel(stop)
		} else {
			u.stopNext = stop // Run has not picked the job up yet
		}
	}
	u.mu.Unlock()
	if errors.Is(err, ErrReplay) {
		u.metrics.commands.WithLabelValues(ResultReplayed).Inc()
		u.log.Warn("command refused: replayed", "command", c.ID, "rollout", c.RolloutID)
		return fmt.Errorf("%w: %w: %s", ErrRefused, ErrReplay, c.ID)
	}
	if err != nil {
		return fmt.Errorf("updater: queue command: %w", err)
	}
	u.metrics.commands.WithLabelValues(ResultAccepted).Inc()
	u.log.Info("command accepted", "command", c.ID, "kind", c.Kind, "rollout", c.RolloutID, "retransmission", retrans)
	u.poke(u.wake)
	u.poke(u.outboxWake)
	return nil
}

// stopFor returns how command c stops the running job j, or nil: an install
// of another update supersedes one not yet activated, an abort cancels its
// rollout's unactivated update, a rollback of j's version undoes it. (An
// install of j's own update is a retransmission; submit handles it.)
func stopFor(j *Job, c protocol.Command) *cancelled {
	switch {
	case c.Install != nil:
		same := j.RolloutID == c.RolloutID && j.Model == c.Install.Model && j.Version == c.Install.Version
		if !same && !activated(j.State) {
			return &cancelled{seq: j.Seq, msg: "superseded by command " + c.ID + " of rollout " + c.RolloutID}
		}
	case c.Rollback != nil:
		if j.Model == c.Rollback.Model && j.Version == c.Rollback.Version {
			return &cancelled{seq: j.Seq, rollback: true, msg: "rollback ordered by the fleet (command " + c.ID + "): " + c.Rollback.Reason}
		}
	case c.Abort != nil:
		if j.RolloutID == c.RolloutID && !activated(j.State) {
			return &cancelled{seq: j.Seq, msg: "aborted"}
		}
	}
	return nil
}

// pendingStop finds a queued command that stops j: one that arrived just
// before a crash, whose stop was not carried out yet.
func (u *Updater) pendingStop(j *Job) (*cancelled, error) {
	var stop *cancelled
	err := u.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPending).ForEach(func(_, v []byte) error {
			var q queued
			if json.Unmarshal(v, &q) == nil && stop == nil {
				stop = stopFor(j, q.Cmd)
			}
			return nil
		})
	})
	return stop, err
}

func (u *Updater) poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// forgetExpired drops remembered ids whose commands expired: they are
// refused for that already.
func forgetExpired(seen *bolt.Bucket, now time.Time) error {
	var old [][]byte
	cur := seen.Cursor()
	for k, v := cur.First(); k != nil; k, v = cur.Next() {
		if t, err := time.Parse(time.RFC3339Nano, string(v)); err != nil || t.Before(now) {
			old = append(old, append([]byte(nil), k...))
		}
	}
	for _, k := range old {
		if err := seen.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// dropPending removes queued installs of a rollout (it was aborted).
func dropPending(tx *bolt.Tx, rollout string) error {
	p := tx.Bucket(bucketPending)
	var drop [][]byte
	c := p.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		var q queued
		if json.Unmarshal(v, &q) == nil && q.Cmd.RolloutID == rollout && q.Cmd.Install != nil {
			drop = append(drop, append([]byte(nil), k...))
		}
	}
	for _, k := range drop {
		if err := p.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

func putOutbox(tx *bolt.Tx, e outboxEntry) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	bk := tx.Bucket(bucketOutbox)
	n, _ := bk.NextSequence()
	return bk.Put(seqKey(n), b)
}

// startNext takes the oldest queued command and carries it out as far as
// starting its job. It reports whether there was one.
func (u *Updater) startNext(ctx context.Context) (bool, error) {
	var (
		key []byte
		q   queued
	)
	err := u.db.View(func(tx *bolt.Tx) error {
		k, v := tx.Bucket(bucketPending).Cursor().First()
		if k == nil {
			return nil
		}
		key = append([]byte(nil), k...)
		return json.Unmarshal(v, &q)
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
	c := q.Cmd
	j := &Job{CommandID: c.ID, RolloutID: c.RolloutID, Kind: string(c.Kind), Created: u.now(), State: Idle, Seq: 1}
	if last != nil {
		j.Seq = last.Seq + 1
	}
	switch {
	case c.Install != nil:
		j.Model, j.Version = c.Install.Model, c.Install.Version
		to, detail := u.planInstall(j, q)
		u.cleanup()
		return true, u.transition(j, to, detail, pop, putSigned(j))
	case c.Rollback != nil:
		j.Model, j.Version = c.Rollback.Model, c.Rollback.Version
		cur, err := u.opts.Store.Current(j.Model)
		if err != nil || cur.Manifest.Version != j.Version {
			detail := "nothing to roll back: " + j.Model + " does not run that version"
			if last != nil && last.State == RolledBack && strings.Contains(last.Error, "(command "+c.ID+")") {
				detail = "rolled back: " + last.Error
			}
			return true, u.note(c, j.Model, j.Version, RolledBack, "", detail, pop)
		}
		prev, err := u.opts.Store.Previous(j.Model)
		if err != nil {
			return true, u.note(c, j.Model, j.Version, Failed, "no previous version to roll back to", "", pop)
		}
		j.SHA256 = cur.Manifest.SHA256
		j.From = &Version{Version: prev.Manifest.Version, SHA256: prev.Manifest.SHA256}
		msg := fmt.Sprintf("rollback to v%d ordered by the fleet", prev.Manifest.Version)
		if c.Rollback.Reason != "" {
			msg += ": " + c.Rollback.Reason
		}
		return true, u.transition(j, RollingBack, msg, pop)
	default: // abort
		if last != nil && last.RolloutID == c.RolloutID && last.State != Failed {
			return true, u.note(c, last.Model, last.Version, last.State, "", "the rollout's update was activated; it stays (send rollback)", pop)
		}
		return true, u.note(c, "", 0, Failed, "aborted", "", pop)
	}
}

// note answers a command that starts no job: an audit record and an ack,
// with extra in the same transaction.
func (u *Updater) note(c protocol.Command, model string, version int64, state State, errMsg, detail string, extra func(*bolt.Tx) error) error {
	now := u.now()
	ack := protocol.Ack{CommandID: c.ID, RolloutID: c.RolloutID, Model: model, Version: version, State: state, Error: errMsg, Detail: detail, Time: now}
	rec := audit.Record{Time: now, Actor: "updater", Action: "command." + string(c.Kind) + ".done", Outcome: string(state),
		RolloutID: c.RolloutID, CommandID: c.ID, Model: model, Version: version, Detail: errMsg + detail}
	u.log.Info("command answered", "command", c.ID, "state", state, "error", errMsg, "detail", detail)
	return u.db.Update(func(tx *bolt.Tx) error {
		if err := extra(tx); err != nil {
			return err
		}
		e, err := audit.AppendTx(tx, rec)
		if err != nil {
			return err
		}
		return putOutbox(tx, outboxEntry{Ack: ack, Audit: e.Record, Hash: e.Hash})
	})
}

// planInstall fills j from an install command and returns the state the job
// starts in, with why. The release was verified with the command; it is
// checked here again against the store (rollback, already installed).
func (u *Updater) planInstall(j *Job, q queued) (State, string) {
	in := q.Cmd.Install
	j.SHA256, j.Length, j.ChunkSize = in.Artifact.SHA256, in.Artifact.Length, in.Artifact.ChunkSize
	j.Release, j.Roots = in.Release, q.Roots
	if in.Probation != nil {
		j.Policy = *in.Probation
	}
	j.Trial, j.Expires = in.Trial, q.Cmd.Expires
	anchor, err := u.anchor()
	if err != nil {
		return Failed, err.Error()
	}
	root, err := anchor.Chain(q.Roots)
	if err != nil {
		return Failed, "verify: root chain: " + err.Error()
	}
	rel, err := root.VerifyRelease(in.Release, u.now())
	if err != nil {
		return Failed, "verify: " + err.Error()
	}
	m := rel.Model
	if m.Name != j.Model || m.Version != j.Version || m.SHA256 != j.SHA256 || m.Length != j.Length {
		return Failed, "verify: the release does not match the install command"
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
	if in.Trial != nil && (u.opts.Trials == nil || !u.opts.Trials.Serving(m.Name)) {
		// Nothing to compare the candidate with (docs/PROTOCOL.md,
		// Trials): the controller installs it plainly at promotion.
		return Failed, trialNeedsServing
	}
	return Downloading, fmt.Sprintf("%d bytes in %d chunks, release serial %d", m.Length, in.Artifact.Chunks, rel.Serial)
}
