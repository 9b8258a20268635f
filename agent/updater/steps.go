package updater

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/models/bundle"
	"github.com/outpost-edge/outpost/models/trust"
	bolt "go.etcd.io/bbolt"
)

func (u *Updater) modelPath(j *Job) string { return filepath.Join(u.jobDir(j), bundle.ModelFile) }

// writeBundle lays out the job's directory as a bundle: the roots and the
// release the command carried, beside the downloaded model.
func (u *Updater) writeBundle(j *Job) error {
	dir := u.jobDir(j)
	rd := filepath.Join(dir, bundle.RootsDir)
	if err := os.MkdirAll(rd, 0o755); err != nil {
		return fmt.Errorf("updater: stage: %w", err)
	}
	for i, b := range j.Roots {
		// The file name orders the chain; Chain checks the versions.
		name := strconv.Itoa(i+1) + ".json"
		if r, err := trust.LoadRoot(b); err == nil {
			name = strconv.FormatInt(r.Doc.Version, 10) + ".json"
		}
		if err := atomicfile.WriteFile(filepath.Join(rd, name), b, atomicfile.Options{}); err != nil {
			return fmt.Errorf("updater: stage: %w", err)
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, bundle.ReleaseFile), j.Release, atomicfile.Options{}); err != nil {
		return fmt.Errorf("updater: stage: %w", err)
	}
	return nil
}

// verified checks j's staged bundle against the trust anchor, and that the
// release is the one the job was started for. Every step after download
// calls it again: the files on disk are not trusted between steps.
func (u *Updater) verified(j *Job) (*bundle.Verified, error) {
	anchor, err := u.anchor()
	if err != nil {
		return nil, err
	}
	if err := u.writeBundle(j); err != nil {
		return nil, err
	}
	v, err := bundle.Verify(u.jobDir(j), anchor, bundle.Options{Now: u.now(), AgentVersion: u.opts.AgentVersion})
	if err != nil {
		return nil, err
	}
	m := v.Manifest()
	if m.Name != j.Model || m.Version != j.Version || m.SHA256 != j.SHA256 || m.Length != j.Length {
		return nil, fmt.Errorf("updater: staged release is %s v%d, the job is %s v%d", m.Name, m.Version, j.Model, j.Version)
	}
	return v, nil
}

// stepVerify: fail closed on anything bundle.Verify refuses.
func (u *Updater) stepVerify(j *Job) error {
	if _, err := u.verified(j); err != nil {
		u.cleanup()
		return u.transition(j, Failed, "verify: "+err.Error())
	}
	return u.transition(j, Staged, "signature, expiry, digest and length verified")
}

// stepValidate loads the staged model and runs its golden vectors.
func (u *Updater) stepValidate(ctx context.Context, j *Job) error {
	v, err := u.verified(j)
	if err != nil {
		u.cleanup()
		return u.transition(j, Failed, "verify: "+err.Error())
	}
	data, err := os.ReadFile(u.modelPath(j))
	if err != nil {
		return fmt.Errorf("updater: validate: %w", err)
	}
	detail, err := u.validate(ctx, v.Manifest(), data)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		u.metrics.validationFailures.Inc()
		u.cleanup()
		return u.transition(j, Failed, err.Error())
	}
	// Remember what serves now: a rollback returns to it.
	j.From = nil
	if cur, err := u.opts.Store.Current(j.Model); err == nil {
		j.From = &Version{Version: cur.Manifest.Version, SHA256: cur.Manifest.SHA256}
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	if j.Trial != nil {
		// Held beside the serving version before the ack says so.
		if err := u.holdTrial(ctx, j, data); err != nil {
			if errors.Is(err, errTrialFailed) {
				return nil
			}
			return err
		}
		return u.transition(j, j.Trial.State(), trialDetail(*j.Trial)+"; "+detail)
	}
	return u.transition(j, Activating, detail)
}

// holdTrial loads j's candidate beside the serving version in j's trial;
// a candidate that cannot be held fails the job.
func (u *Updater) holdTrial(ctx context.Context, j *Job, data []byte) error {
	var err error
	switch {
	case u.opts.Trials == nil:
		err = errors.New("this agent holds no candidates")
	case !u.opts.Trials.Serving(j.Model):
		err = errors.New(trialNeedsServing)
	default:
		err = u.opts.Trials.StartTrial(ctx, j.Model, j.Version, data, *j.Trial)
	}
	if err == nil {
		u.trialSeq = j.Seq
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	u.endTrial(j)
	u.cleanup()
	msg := err.Error()
	if msg != trialNeedsServing {
		msg = "trial: " + msg
	}
	if terr := u.transition(j, Failed, msg); terr != nil {
		return terr
	}
	return errTrialFailed
}

// errTrialFailed: holdTrial failed the job (it is terminal now).
var errTrialFailed = errors.New("updater: trial failed")

// endTrial unloads j's candidate if it may be held in this process.
func (u *Updater) endTrial(j *Job) {
	if u.opts.Trials != nil && (u.trialSeq == j.Seq || j.State == Shadow || j.State == Canary) {
		u.opts.Trials.EndTrial(j.Model)
	}
	u.trialSeq = 0
}

// stepTrial holds j's candidate until a command changes the trial or
// promotes it (an install of the same rollout, model and version, queued
// by submit), the command's expiry passes, or the fleet stops the job (an
// abort, a rollback of the version, another install: runJob's abort). A
// restarted agent loads the candidate again from the staged file.
func (u *Updater) stepTrial(ctx context.Context, j *Job) error {
	if j.Trial == nil {
		return fmt.Errorf("%w: job in state %q without a trial", ErrCorrupt, j.State)
	}
	if u.trialSeq != j.Seq {
		// After a restart the daemon may still be loading the serving
		// version when the job resumes: give it a while before
		// concluding there is none.
		for wait := 0; u.opts.Trials != nil && !u.opts.Trials.Serving(j.Model) && wait < int(servingWait/servingPoll); wait++ {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(servingPoll):
			}
		}
		if _, err := u.verified(j); err != nil {
			u.endTrial(j)
			u.cleanup()
			return u.transition(j, Failed, "verify: "+err.Error())
		}
		data, err := os.ReadFile(u.modelPath(j))
		if err != nil {
			return fmt.Errorf("updater: trial: %w", err)
		}
		if err := u.holdTrial(ctx, j, data); err != nil {
			if errors.Is(err, errTrialFailed) {
				return nil
			}
			return err
		}
	}
	for {
		key, q, err := u.trialCommand(j)
		if err != nil {
			return err
		}
		if key != nil {
			return u.applyTrialCommand(ctx, j, key, q)
		}
		left := j.Expires.Sub(u.now())
		if !j.Expires.IsZero() && left <= 0 {
			u.endTrial(j)
			u.cleanup()
			return u.transition(j, Failed, trialExpired)
		}
		expiry := time.NewTimer(max(left, time.Millisecond))
		if j.Expires.IsZero() {
			expiry.Stop()
		}
		select {
		case <-ctx.Done():
			expiry.Stop()
			return ctx.Err()
		case <-u.wake: // a command was queued
		case <-expiry.C:
		}
		expiry.Stop()
	}
}

// servingWait bounds how long a resumed trial waits for the serving version
// to be loaded, polling every servingPoll.
const (
	servingWait = 30 * time.Second
	servingPoll = 50 * time.Millisecond
)

// trialCommand finds the oldest queued install of j's rollout, model and
// version (nil key: none).
func (u *Updater) trialCommand(j *Job) (key []byte, q queued, err error) {
	err = u.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketPending).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var p queued
			if json.Unmarshal(v, &p) != nil {
				continue
			}
			if in := p.Cmd.Install; in != nil && p.Cmd.RolloutID == j.RolloutID && in.Model == j.Model && in.Version == j.Version {
				key, q = append([]byte(nil), k...), p
				return nil
			}
		}
		return nil
	})
	return key, q, err
}

// applyTrialCommand carries out a queued install for j's candidate: with a
// trial, the mode and share change at once; without one, the candidate is
// promoted (activating swaps the loaded candidate in). The command leaves the
// queue in the transition's transaction, so a crash before it applies the
// command again.
func (u *Updater) applyTrialCommand(ctx context.Context, j *Job, key []byte, q queued) error {
	pop := func(tx *bolt.Tx) error { return tx.Bucket(bucketPending).Delete(key) }
	in := q.Cmd.Install
	prev := *j
	j.CommandID, j.Expires = q.Cmd.ID, q.Cmd.Expires
	if in.Trial != nil {
		data, err := os.ReadFile(u.modelPath(j))
		if err != nil {
			*j = prev
			return fmt.Errorf("updater: trial: %w", err)
		}
		if err := u.opts.Trials.StartTrial(ctx, j.Model, j.Version, data, *in.Trial); err != nil {
			if ctx.Err() != nil {
				*j = prev
				return ctx.Err()
			}
			u.endTrial(j)
			u.cleanup()
			return u.transition(j, Failed, "trial: "+err.Error(), pop)
		}
		j.Trial = in.Trial
		if err := u.transition(j, in.Trial.State(), trialDetail(*in.Trial), pop); err != nil {
			*j = prev
			return err
		}
		return nil
	}
	from := j.State
	j.Trial = nil
	if in.Probation != nil {
		j.Policy = *in.Probation
	}
	if err := u.transition(j, Activating, "promoted from "+string(from), pop); err != nil {
		*j = prev
		return err
	}
	return nil
}

// stepActivate installs the verified model into the store and swaps it in.
// Resumed after a crash, it finds the install done (ErrInstalled) and swaps
// again, which does nothing when the daemon already serves the version.
func (u *Updater) stepActivate(ctx context.Context, j *Job) error {
	if cur, err := u.opts.Store.Current(j.Model); err != nil || cur.Manifest.SHA256 != j.SHA256 || cur.Manifest.Version != j.Version {
		v, err := u.verified(j)
		if err != nil {
			return u.transition(j, Failed, "verify: "+err.Error())
		}
		if err := u.opts.Store.SaveRoot(v.Root); err != nil && !errors.Is(err, store.ErrRootVersion) {
			return err
		}
		r, err := v.Open()
		if err != nil {
			return err
		}
		_, err = u.opts.Store.Install(store.InstallRequest{Manifest: *v.Manifest(), Serial: v.Release.Serial, Release: v.Raw, Model: r})
		r.Close()
		switch {
		case errors.Is(err, store.ErrInstalled):
		case errors.Is(err, store.ErrRollback), errors.Is(err, store.ErrConflict):
			u.cleanup()
			return u.transition(j, Failed, "install: "+err.Error())
		case err != nil:
			return err
		}
	}
	u.crashAt("updater-installed")
	data, e, err := u.opts.Store.Load(j.Model)
	if err != nil {
		return err
	}
	if e.Manifest.SHA256 != j.SHA256 {
		return u.transition(j, RollingBack, fmt.Sprintf("store serves sha256 %s, not the installed %s", e.Manifest.SHA256, j.SHA256))
	}
	// Probation counts every request the version serves from the swap on.
	u.probationBase = probationBase{seq: j.Seq, raw: u.traffic(j)}
	start := time.Now()
	if err := u.opts.Activator.Activate(ctx, j.Model, j.Version, data); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return u.transition(j, RollingBack, "activate: "+err.Error())
	}
	j.ProbationStart = u.now()
	j.Boots = 0
	j.Seen, j.Verified = TrafficStats{}, false
	return u.transition(j, Probation, fmt.Sprintf("serving, swapped in %s", time.Since(start).Round(time.Millisecond)))
}

// rollback makes j.From current and served again. It is safe to repeat: it
// looks at what the store holds before changing it.
func (u *Updater) rollback(ctx context.Context, j *Job) error {
	if j.From == nil {
		return u.transition(j, Failed, j.Error+"; nothing to roll back to: no version was installed before")
	}
	cur, err := u.opts.Store.Current(j.Model)
	if err != nil {
		return err
	}
	if cur.Manifest.Version != j.From.Version || cur.Manifest.SHA256 != j.From.SHA256 {
		prev, err := u.opts.Store.Previous(j.Model)
		if err != nil || prev.Manifest.Version != j.From.Version || prev.Manifest.SHA256 != j.From.SHA256 {
			return u.transition(j, Failed, fmt.Sprintf("%s; cannot roll back: v%d is no longer the previous version", j.Error, j.From.Version))
		}
		if _, err := u.opts.Store.Rollback(j.Model); err != nil {
			return err
		}
	}
	u.crashAt("updater-store-rolled-back")
	data, e, err := u.opts.Store.Load(j.Model)
	if err != nil {
		return err
	}
	if err := u.opts.Activator.Activate(ctx, j.Model, e.Manifest.Version, data); err != nil {
		return err
	}
	u.cleanup()
	u.metrics.rollbacks.Inc()
	return u.transition(j, RolledBack, fmt.Sprintf("v%d serves again: %s", e.Manifest.Version, j.Error))
}

// probationPolicy is what j's probation needs: the least time, the
// requests that verify the version, and the longest time.
func (u *Updater) probationPolicy(j *Job) (least time.Duration, minRequests uint64, most time.Duration) {
	least, minRequests, most = u.opts.Probation, u.opts.ProbationMinRequests, u.opts.ProbationMax
	if j.Policy.MinRequests > 0 {
		minRequests = uint64(j.Policy.MinRequests)
	}
	if j.Policy.MaxSeconds > 0 {
		most = time.Duration(j.Policy.MaxSeconds) * time.Second
	}
	return least, minRequests, max(most, least)
}

// traffic returns j's version's traffic counters in this process.
func (u *Updater) traffic(j *Job) TrafficStats {
	if u.opts.Traffic == nil {
		return TrafficStats{}
	}
	return u.opts.Traffic.Traffic(j.Model, j.Version)
}

// probationBase is a job's traffic counters in this process as of the
// last time Job.Seen took them in.
type probationBase struct {
	seq uint64
	raw TrafficStats
}

// seenSaveEvery is how often probation saves the traffic it counted while
// it changes: what a crash can make it forget.
const seenSaveEvery = time.Second

// stepProbation watches the new version's traffic and rolls it back as
// soon as it misbehaves. It commits it once the least probation time has
// passed and the version served its minimum of requests (verified), or
// once the longest time has passed without them (unverified). Times run
// from activation on the device's clock, so time the agent was down counts;
// requests are counted in this process and added to what earlier processes
// saved in j.Seen.
func (u *Updater) stepProbation(ctx context.Context, j *Job) error {
	if j.Boots >= u.opts.MaxProbationBoots {
		return u.transition(j, RollingBack, fmt.Sprintf("%v: the agent started %d times during probation", ErrProbation, j.Boots))
	}
	least, minReq, most := u.probationPolicy(j)
	traffic := func() TrafficStats { return u.traffic(j) }
	// j.Seen holds everything counted up to base. In a process that did
	// not activate the version, its counters started at zero after
	// everything j.Seen holds.
	var base TrafficStats
	if u.probationBase.seq == j.Seq {
		base = u.probationBase.raw
	}
	lastSave := time.Now()
	tick := min(time.Second, max(least/10, 10*time.Millisecond))
	for {
		raw := traffic()
		s := j.Seen.Add(raw.Sub(base))
		elapsed := u.now().Sub(j.ProbationStart)
		if err := u.judge(s, min(u.opts.MinRequests, minReq)); err != nil {
			j.Seen = s
			return u.transition(j, RollingBack, err.Error())
		}
		switch {
		case elapsed >= least && s.Requests >= minReq:
			j.Seen, j.Verified = s, true
			u.cleanup()
			return u.transition(j, Committed, fmt.Sprintf("probation passed, verified: %s in %s (minimum %d requests)", s, elapsed.Round(time.Second), minReq))
		case elapsed >= most:
			j.Seen, j.Verified = s, false
			u.cleanup()
			u.log.Warn("committed without enough traffic to verify the new version", "model", j.Model, "version", j.Version,
				"requests", s.Requests, "min_requests", minReq, "probation_max", most)
			return u.transition(j, Committed, fmt.Sprintf("committed unverified: probation ended at its maximum of %s with %d of the %d requests that verify a version (%s)",
				most, s.Requests, minReq, s))
		}
		if s != j.Seen && time.Since(lastSave) >= seenSaveEvery {
			j.Seen, base = s, raw
			u.probationBase = probationBase{seq: j.Seq, raw: raw}
			if err := u.saveProgress(j); err != nil {
				return err
			}
			u.setCur(j) // the status shows the requests seen
			lastSave = time.Now()
		}
		wait := tick
		if elapsed < least {
			wait = min(wait, least-elapsed)
		}
		wait = min(wait, most-elapsed)
		select {
		case <-ctx.Done():
			// A clean stop keeps every request counted.
			raw := traffic()
			if s := j.Seen.Add(raw.Sub(base)); s != j.Seen {
				j.Seen = s
				u.probationBase = probationBase{seq: j.Seq, raw: raw}
				if err := u.saveProgress(j); err != nil {
					u.log.Warn("saving probation traffic", "err", err)
				}
			}
			return ctx.Err()
		case <-time.After(max(wait, time.Millisecond)):
		}
	}
}

// judge fails probation traffic that is too often wrong or too slow, once
// it holds at least minRequests requests.
func (u *Updater) judge(s TrafficStats, minRequests uint64) error {
	if s.Requests < max(minRequests, 1) {
		return nil
	}
	if ratio := float64(s.Errors) / float64(s.Requests); ratio > u.opts.MaxErrorRatio {
		return fmt.Errorf("%w: error ratio %.3f over %.3f (%s)", ErrProbation, ratio, u.opts.MaxErrorRatio, s)
	}
	if u.opts.MaxLatency > 0 && s.Mean() > u.opts.MaxLatency {
		return fmt.Errorf("%w: mean latency %s over %s (%s)", ErrProbation, s.Mean(), u.opts.MaxLatency, s)
	}
	return nil
}
