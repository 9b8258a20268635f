package registry

import (
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Credential is a device's broker credential as kept at rest: the hash of
// its secret (the secret itself is shown once, at enrolment, and never
// stored). A revoked credential stays, with Revoked set, so the fleet keeps
// knowing that it had enrolled devices (the broker stays locked) and when
// the device lost its access.
type Credential struct {
	Device  string     `json:"device"`
	Hash    []byte     `json:"hash"`
	Created time.Time  `json:"created"`
	Revoked *time.Time `json:"revoked,omitempty"`
}

func (r *Registry) putCredential(tx *sql.Tx, c *Credential) error {
	_, err := r.exec(tx, `INSERT INTO credentials (device, hash, created, revoked) VALUES (?, ?, ?, ?)
		ON CONFLICT (device) DO UPDATE SET hash = excluded.hash, created = excluded.created, revoked = excluded.revoked`,
		c.Device, c.Hash, ts(c.Created), tsPtr(c.Revoked))
	return err
}

// PutCredential stores device's credential hash, replacing (and so
// invalidating) any earlier one, revoked or not.
func (r *Registry) PutCredential(device string, hash []byte, now time.Time) error {
	c := Credential{Device: device, Hash: hash, Created: now.UTC()}
	if err := r.write(func(tx *sql.Tx) error { return r.putCredential(tx, &c) }); err != nil {
		return fmt.Errorf("registry: put credential %s: %w", device, err)
	}
	return nil
}

// RevokeCredential marks device's credential revoked; ErrNotFound when the
// device has none. Revoking twice keeps the first time.
func (r *Registry) RevokeCredential(device string, now time.Time) error {
	err := r.write(func(tx *sql.Tx) error {
		res, err := r.exec(tx, `UPDATE credentials SET revoked = CASE WHEN revoked = 0 THEN ? ELSE revoked END WHERE device = ?`, ts(now.UTC()), device)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(ErrNotFound, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("registry: revoke credential %s: %w", device, err)
	}
	return nil
}

// Credential returns device's credential record, revoked or not;
// ErrNotFound when it has none.
func (r *Registry) Credential(device string) (*Credential, error) {
	var c Credential
	var created, revoked int64
	err := r.r.QueryRow(r.q(`SELECT device, hash, created, revoked FROM credentials WHERE device = ?`), device).Scan(&c.Device, &c.Hash, &created, &revoked)
	if err != nil {
		return nil, fmt.Errorf("registry: credential %s: %w", device, notFound(err))
	}
	c.Created, c.Revoked = fromTS(created), fromTSPtr(revoked)
	return &c, nil
}

// CredentialHash returns the hash of device's live credential; ok is false
// when it has none or it was revoked (broker.Credentials).
func (r *Registry) CredentialHash(device string) (hash []byte, ok bool, err error) {
	c, err := r.Credential(device)
	if errors.Is(err, ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if c.Revoked != nil {
		return nil, false, nil
	}
	return c.Hash, true, nil
}

// AnyCredential reports whether any device was ever enrolled (revoked
// credentials count) (broker.Credentials).
func (r *Registry) AnyCredential() (bool, error) {
	var n int
	if err := r.r.QueryRow(`SELECT count(*) FROM (SELECT 1 FROM credentials LIMIT 1) c`).Scan(&n); err != nil {
		return false, fmt.Errorf("registry: credentials: %w", err)
	}
	return n > 0, nil
}
