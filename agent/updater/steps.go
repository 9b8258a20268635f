package updater

import (
	"context"
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
	return u.transition(j, Activating, detail)
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
	start := time.Now()
	if err := u.opts.Activator.Activate(ctx, j.Model, j.Version, data); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return u.transition(j, RollingBack, "activate: "+err.Error())
	}
	j.ProbationStart = u.now()
	j.Boots = 0
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

// stepProbation watches the new version's traffic until the probation time
// is over, then commits it, or rolls it back as soon as it misbehaves.
func (u *Updater) stepProbation(ctx context.Context, j *Job) error {
	if j.Boots >= u.opts.MaxProbationBoots {
		return u.transition(j, RollingBack, fmt.Sprintf("%v: the agent started %d times during probation", ErrProbation, j.Boots))
	}
	dur := u.opts.Probation
	deadline := j.ProbationStart.Add(dur)
	var base TrafficStats
	if u.opts.Traffic != nil {
		base = u.opts.Traffic.Traffic(j.Model, j.Version)
	}
	tick := min(time.Second, max(dur/10, 10*time.Millisecond))
	for {
		left := deadline.Sub(u.now())
		var s TrafficStats
		if u.opts.Traffic != nil {
			s = u.opts.Traffic.Traffic(j.Model, j.Version).Sub(base)
		}
		if err := u.judge(s); err != nil {
			return u.transition(j, RollingBack, err.Error())
		}
		if left <= 0 {
			u.cleanup()
			return u.transition(j, Committed, "probation passed: "+s.String())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(tick, left)):
		}
	}
}

// judge fails probation traffic that is too often wrong or too slow.
func (u *Updater) judge(s TrafficStats) error {
	if s.Requests < u.opts.MinRequests {
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
