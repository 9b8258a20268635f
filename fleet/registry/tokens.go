package registry

import (
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Token is an admin API token as kept at rest: its public id, the hash of
// its secret (the secret is shown once, when the token is created), a name
// and a role. A revoked token stays, with Revoked set, so the fleet keeps
// knowing that tokens exist (the admin API stays out of bootstrap mode) and
// the audit log's actors stay resolvable.
type Token struct {
	ID      string     `json:"id"`
	Name    string     `json:"name,omitempty"`
	Role    string     `json:"role"`
	Hash    []byte     `json:"hash"`
	Created time.Time  `json:"created"`
	Revoked *time.Time `json:"revoked,omitempty"`
}

// PutToken stores a new token; ErrExists if its id is taken.
func (r *Registry) PutToken(t Token) error {
	t.Created = t.Created.UTC()
	err := r.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bTokens)
		if b.Get([]byte(t.ID)) != nil {
			return ErrExists
		}
		return putJSON(b, []byte(t.ID), &t)
	})
	if err != nil {
		return fmt.Errorf("registry: put token %s: %w", t.ID, err)
	}
	return nil
}

// Token returns the token with this id, revoked or not; ErrNotFound when
// there is none.
func (r *Registry) Token(id string) (*Token, error) {
	var t Token
	if err := r.db.View(func(tx *bolt.Tx) error { return getJSON(tx.Bucket(bTokens), []byte(id), &t) }); err != nil {
		return nil, fmt.Errorf("registry: token %s: %w", id, err)
	}
	return &t, nil
}

// Tokens lists every token, revoked ones included, oldest first.
func (r *Registry) Tokens() ([]Token, error) {
	var out []Token
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bTokens).ForEach(func(_, v []byte) error {
			var t Token
			if err := json.Unmarshal(v, &t); err != nil {
				return err
			}
			out = append(out, t)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("registry: tokens: %w", err)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// RevokeToken marks the token revoked; ErrNotFound when there is none.
// Revoking twice keeps the first time.
func (r *Registry) RevokeToken(id string, now time.Time) error {
	err := r.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bTokens)
		var t Token
		if err := getJSON(b, []byte(id), &t); err != nil {
			return err
		}
		if t.Revoked != nil {
			return nil
		}
		n := now.UTC()
		t.Revoked = &n
		return putJSON(b, []byte(id), &t)
	})
	if err != nil {
		return fmt.Errorf("registry: revoke token %s: %w", id, err)
	}
	return nil
}

// AnyToken reports whether a token was ever created (revoked ones count).
func (r *Registry) AnyToken() (bool, error) {
	var found bool
	err := r.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bTokens).Cursor().First()
		found = k != nil
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("registry: tokens: %w", err)
	}
	return found, nil
}
