package registry

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
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

// PutCredential stores device's credential hash, replacing (and so
// invalidating) any earlier one, revoked or not.
func (r *Registry) PutCredential(device string, hash []byte, now time.Time) error {
	c := Credential{Device: device, Hash: hash, Created: now.UTC()}
	err := r.db.Update(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bCredentials), []byte(device), &c) })
	if err != nil {
		return fmt.Errorf("registry: put credential %s: %w", device, err)
	}
	return nil
}

// RevokeCredential marks device's credential revoked; ErrNotFound when the
// device has none. Revoking twice keeps the first time.
func (r *Registry) RevokeCredential(device string, now time.Time) error {
	err := r.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bCredentials)
		var c Credential
		if err := getJSON(b, []byte(device), &c); err != nil {
			return err
		}
		if c.Revoked != nil {
			return nil
		}
		t := now.UTC()
		c.Revoked = &t
		return putJSON(b, []byte(device), &c)
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
	if err := r.db.View(func(tx *bolt.Tx) error { return getJSON(tx.Bucket(bCredentials), []byte(device), &c) }); err != nil {
		return nil, fmt.Errorf("registry: credential %s: %w", device, err)
	}
	return &c, nil
}

// CredentialHash returns the hash of device's live credential; ok is false
// when it has none or it was revoked (broker.Credentials).
func (r *Registry) CredentialHash(device string) (hash []byte, ok bool, err error) {
	err = r.db.View(func(tx *bolt.Tx) error {
		p := tx.Bucket(bCredentials).Get([]byte(device))
		if p == nil {
			return nil
		}
		var c Credential
		if err := json.Unmarshal(p, &c); err != nil {
			return err
		}
		if c.Revoked == nil {
			hash, ok = c.Hash, true
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("registry: credential %s: %w", device, err)
	}
	return hash, ok, nil
}

// AnyCredential reports whether any device was ever enrolled (revoked
// credentials count) (broker.Credentials).
func (r *Registry) AnyCredential() (bool, error) {
	var found bool
	err := r.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bCredentials).Cursor().First()
		found = k != nil
		return nil
	})
	return found, err
}
