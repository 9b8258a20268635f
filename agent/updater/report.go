package updater

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/outpost-edge/outpost/internal/backoff"
	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// drainOutbox hands each transition's reports on, oldest first: the update
// and audit records to telemetry (an entry leaves the outbox only once
// telemetry kept both, so none is lost to a crash) and the ack to the
// Reporter (once, best effort).
func (u *Updater) drainOutbox(ctx context.Context, wake <-chan struct{}) {
	bo := backoff.New(outboxRetryMin, outboxRetryMax, nil)
	for {
		k, e, err := u.firstOutbox()
		if err != nil {
			u.log.Error("outbox", "err", err)
		}
		if k == nil {
			select {
			case <-ctx.Done():
				return
			case <-wake:
				continue
			}
		}
		if err := u.deliver(ctx, e); err != nil {
			if ctx.Err() != nil {
				return
			}
			u.log.Warn("telemetry refused an update record, retrying", "err", err)
			if bo.Wait(ctx, nil) != nil {
				return
			}
			continue
		}
		bo.Reset()
		if err := u.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketOutbox).Delete(k) }); err != nil {
			u.log.Error("outbox", "err", err)
		}
	}
}

func (u *Updater) firstOutbox() ([]byte, outboxEntry, error) {
	var (
		k []byte
		e outboxEntry
	)
	err := u.db.View(func(tx *bolt.Tx) error {
		ck, v := tx.Bucket(bucketOutbox).Cursor().First()
		if ck == nil {
			return nil
		}
		k = append([]byte(nil), ck...)
		return json.Unmarshal(v, &e)
	})
	if err != nil {
		// An entry we cannot read is dropped rather than blocking the rest.
		return k, e, fmt.Errorf("%w: outbox entry: %v", ErrCorrupt, err)
	}
	return k, e, nil
}

// deliver emits e's records and sends its ack. The records are emitted
// again if a crash comes before the entry is deleted: at least once, and the
// audit record's sequence number lets the fleet drop the repeat.
func (u *Updater) deliver(ctx context.Context, e outboxEntry) error {
	p := e.Ack
	if t := u.opts.Telemetry; t != nil {
		ref := protocol.ModelRef{Name: p.Model}
		if p.Version > 0 {
			ref.Version = strconv.FormatInt(p.Version, 10)
		}
		if e.Audit.SHA256 != "" {
			ref.Digest = "sha256:" + e.Audit.SHA256
		}
		up := protocol.Record{Kind: protocol.KindUpdate, Time: p.Time, Model: ref, Update: &protocol.Update{
			RolloutID: p.RolloutID, State: string(p.State), BytesDone: uint64(max(p.Progress, 0)),
			BytesTotal: uint64(max(p.Total, 0)), Error: clip(p.Error), Detail: clip(p.Detail)}}
		a := e.Audit
		au := protocol.Record{Kind: protocol.KindAudit, Time: a.Time, Model: ref, Audit: &protocol.Audit{
			Actor: a.Actor, Action: a.Action, Outcome: a.Outcome,
			Detail: clip(fmt.Sprintf("audit seq=%d hash=%s rollout=%s command=%s: %s", a.Seq, e.Hash, a.RolloutID, a.CommandID, a.Detail)),
			Seq:    a.Seq, Prev: a.Prev, Hash: e.Hash}}
		for _, r := range []protocol.Record{up, au} {
			if _, err := t.Emit(ctx, r); err != nil {
				return err
			}
		}
	}
	u.report(ctx, p)
	return nil
}

// report sends p through the Reporter, if there is one, for at most 10 s.
func (u *Updater) report(ctx context.Context, p protocol.Ack) {
	if u.opts.Reporter == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := u.opts.Reporter.Report(ctx, p); err != nil {
		u.log.Debug("ack not sent", "state", p.State, "err", err)
	}
}

// clip keeps a string within the telemetry encoding's limit.
func clip(s string) string {
	if len(s) > protocol.MaxStringLen {
		return s[:protocol.MaxStringLen-3] + "..."
	}
	return s
}
