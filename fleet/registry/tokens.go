package registry

import (
	"database/sql"
	"errors"
	"fmt"
	"time"
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

func (r *Registry) insertToken(tx *sql.Tx, t *Token) error {
	res, err := r.exec(tx, `INSERT INTO tokens (id, name, role, hash, created, revoked) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`,
		t.ID, t.Name, t.Role, t.Hash, ts(t.Created), tsPtr(t.Revoked))
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return errors.Join(ErrExists, err)
	}
	return nil
}

// PutToken stores a new token; ErrExists if its id is taken.
func (r *Registry) PutToken(t Token) error {
	t.Created = t.Created.UTC()
	if err := r.write(func(tx *sql.Tx) error { return r.insertToken(tx, &t) }); err != nil {
		return fmt.Errorf("registry: put token %s: %w", t.ID, err)
	}
	return nil
}

const tokenCols = `id, name, role, hash, created, revoked`

func scanToken(s scanner) (*Token, error) {
	var t Token
	var created, revoked int64
	if err := s.Scan(&t.ID, &t.Name, &t.Role, &t.Hash, &created, &revoked); err != nil {
		return nil, notFound(err)
	}
	t.Created, t.Revoked = fromTS(created), fromTSPtr(revoked)
	return &t, nil
}

// Token returns the token with this id, revoked or not; ErrNotFound when
// there is none.
func (r *Registry) Token(id string) (*Token, error) {
	t, err := scanToken(r.r.QueryRow(r.q(`SELECT `+tokenCols+` FROM tokens WHERE id = ?`), id))
	if err != nil {
		return nil, fmt.Errorf("registry: token %s: %w", id, err)
	}
	return t, nil
}

// Tokens lists every token, revoked ones included, oldest first.
func (r *Registry) Tokens() ([]Token, error) {
	out, err := queryAll(r.r, `SELECT `+tokenCols+` FROM tokens ORDER BY created, id`, nil, scanToken)
	if err != nil {
		return nil, fmt.Errorf("registry: tokens: %w", err)
	}
	return out, nil
}

// RevokeToken marks the token revoked; ErrNotFound when there is none.
// Revoking twice keeps the first time.
func (r *Registry) RevokeToken(id string, now time.Time) error {
	err := r.write(func(tx *sql.Tx) error {
		res, err := r.exec(tx, `UPDATE tokens SET revoked = CASE WHEN revoked = 0 THEN ? ELSE revoked END WHERE id = ?`, ts(now.UTC()), id)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(ErrNotFound, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("registry: revoke token %s: %w", id, err)
	}
	return nil
}

// AnyToken reports whether a token was ever created (revoked ones count).
func (r *Registry) AnyToken() (bool, error) {
	var n int
	if err := r.r.QueryRow(`SELECT count(*) FROM (SELECT 1 FROM tokens LIMIT 1) t`).Scan(&n); err != nil {
		return false, fmt.Errorf("registry: tokens: %w", err)
	}
	return n > 0, nil
}
