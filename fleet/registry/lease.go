package registry

import (
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Leases elect the one controller replica that runs a singleton, the
// rollout engine, among several on one database. A lease row names its
// holder, when it expires and a fencing token that rises on every
// acquisition (never on a renewal). The holder renews it well before it
// expires; another replica acquires it only once it has expired. The
// holder's writes go through Fenced, which checks in the same transaction
// that the token is still the current one and unexpired: PostgreSQL holds
// the lease row (FOR SHARE) until the write commits, so an acquisition
// waits for writes under the old token, and no write under the old token
// commits after it. A paused leader that wakes up after losing its lease
// therefore writes nothing.
//
// Expiry is compared with the clock of the replica that calls (now): the
// replicas' clocks must agree to well within the lease's time to live
// (NTP does).

// Errors of leases; callers test with errors.Is.
var (
	// ErrLeaseHeld: another holder has the lease and it has not expired.
	ErrLeaseHeld = errors.New("registry: lease held by another replica")
	// ErrLeaseLost: the lease was acquired again since this token, or
	// expired; the write under it was refused.
	ErrLeaseLost = errors.New("registry: lease lost")
)

// leaseIdleTimeout: see lockLease. A standby takes over at most this much
// later than the lease's expiry.
const leaseIdleTimeout = 2 * time.Second

// Lease is one holding of a named lease.
type Lease struct {
	Name    string    `json:"name"`
	Holder  string    `json:"holder"`
	Token   int64     `json:"token"`
	Expires time.Time `json:"expires"`
}

// lockLease returns the lease row name, created empty if missing, locked
// for the transaction (FOR UPDATE when exclusive, else FOR SHARE).
func (r *Registry) lockLease(tx *sql.Tx, name string, exclusive bool) (Lease, error) {
	l := Lease{Name: name}
	if r.eng.name == "postgres" {
		// A holder paused (SIGSTOP, a frozen VM) inside this transaction
		// would hold the lease row, and with it every other replica's
		// acquisition, for as long as it is paused: the server ends the
		// session instead once it has been idle in the transaction for
		// leaseIdleTimeout, and the paused holder's commit fails.
		if _, err := tx.Exec(fmt.Sprintf(`SET LOCAL idle_in_transaction_session_timeout = %d`, leaseIdleTimeout.Milliseconds())); err != nil {
			return l, err
		}
	}
	if exclusive {
		if _, err := r.exec(tx, `INSERT INTO leases (name) VALUES (?) ON CONFLICT (name) DO NOTHING`, name); err != nil {
			return l, err
		}
	}
	lock := ""
	if r.eng.name == "postgres" {
		lock = " FOR SHARE"
		if exclusive {
			lock = " FOR UPDATE"
		}
	}
	var exp int64
	err := tx.QueryRow(r.q(`SELECT holder, expires, token FROM leases WHERE name = ?`+lock), name).Scan(&l.Holder, &exp, &l.Token)
	l.Expires = fromTS(exp)
	return l, err
}

// AcquireLease takes the lease name for holder until now+ttl if it is free
// or expired, with a token above every earlier one. It returns
// ErrLeaseHeld, with the current holding, while another holder's lease
// runs; a holder acquiring its own unexpired lease again (after a restart)
// gets a new token too.
func (r *Registry) AcquireLease(name, holder string, ttl time.Duration, now time.Time) (Lease, error) {
	var l Lease
	err := r.write(func(tx *sql.Tx) error {
		var err error
		if l, err = r.lockLease(tx, name, true); err != nil {
			return err
		}
		if l.Holder != holder && l.Holder != "" && now.Before(l.Expires) {
			return ErrLeaseHeld
		}
		l.Holder, l.Token, l.Expires = holder, l.Token+1, now.Add(ttl)
		_, err = r.exec(tx, `UPDATE leases SET holder = ?, expires = ?, token = ? WHERE name = ?`, l.Holder, ts(l.Expires), l.Token, name)
		return err
	})
	if err != nil {
		return l, fmt.Errorf("registry: lease %s: %w", name, err)
	}
	return l, nil
}

// RenewLease extends a holding to now+ttl; ErrLeaseLost if the token is no
// longer the current one or the lease has expired (a holder that was
// paused past its expiry must acquire again, and gets a new token).
func (r *Registry) RenewLease(l Lease, ttl time.Duration, now time.Time) (Lease, error) {
	err := r.write(func(tx *sql.Tx) error {
		cur, err := r.lockLease(tx, l.Name, true)
		if err != nil {
			return err
		}
		if cur.Token != l.Token || cur.Holder != l.Holder || !now.Before(cur.Expires) {
			return ErrLeaseLost
		}
		l.Expires = now.Add(ttl)
		_, err = r.exec(tx, `UPDATE leases SET expires = ? WHERE name = ?`, ts(l.Expires), l.Name)
		return err
	})
	if err != nil {
		return l, fmt.Errorf("registry: lease %s: %w", l.Name, err)
	}
	return l, nil
}

// ReleaseLease ends a holding at once, so a standby need not wait for it
// to expire; a holding already lost is left alone.
func (r *Registry) ReleaseLease(l Lease) error {
	err := r.write(func(tx *sql.Tx) error {
		_, err := r.exec(tx, `UPDATE leases SET expires = 0 WHERE name = ? AND token = ? AND holder = ?`, l.Name, l.Token, l.Holder)
		return err
	})
	if err != nil {
		return fmt.Errorf("registry: lease %s: %w", l.Name, err)
	}
	return nil
}

// LeaseOf returns the lease name as stored (zero holder and token if it
// was never taken).
func (r *Registry) LeaseOf(name string) (Lease, error) {
	l := Lease{Name: name}
	var exp int64
	err := r.r.QueryRow(r.q(`SELECT holder, expires, token FROM leases WHERE name = ?`), name).Scan(&l.Holder, &exp, &l.Token)
	if errors.Is(err, sql.ErrNoRows) {
		return l, nil
	}
	if err != nil {
		return l, fmt.Errorf("registry: lease %s: %w", name, err)
	}
	l.Expires = fromTS(exp)
	return l, nil
}

// Fenced returns a view of the registry whose every write first checks,
// in its own transaction, that l is still the current holding of its
// lease and unexpired, and fails with ErrLeaseLost otherwise. Reads are
// unchanged. The view shares r's connections: closing it does nothing,
// and it must not be used after r is closed.
func (r *Registry) Fenced(l Lease) *Registry {
	v := &Registry{dir: r.dir, file: r.file, eng: r.eng, w: r.w, r: r.r, qc: r.qc, log: r.log,
		telStmt: r.telStmt, ingest: r.ingest, mon: r.mon, view: true, fence: &l}
	return v
}

// checkFence refuses a write under l unless l is the lease's current,
// unexpired holding; on PostgreSQL the row stays shared-locked until the
// write commits.
func (r *Registry) checkFence(tx *sql.Tx, l Lease) error {
	cur, err := r.lockLease(tx, l.Name, false)
	if errors.Is(err, sql.ErrNoRows) {
		return ErrLeaseLost
	}
	if err != nil {
		return err
	}
	if cur.Token != l.Token || cur.Holder != l.Holder || !time.Now().Before(cur.Expires) {
		return fmt.Errorf("%w: token %d, current %d", ErrLeaseLost, l.Token, cur.Token)
	}
	return nil
}
