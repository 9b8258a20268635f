// Package trust decides which model releases a device may install. It holds
// the two signed documents of Outpost's update security, both DSSE envelopes
// with Ed25519 signatures:
//
//   - a Root lists the keys of each role ("root", "targets") with a
//     threshold. Root version N+1 is accepted only when signed by a threshold
//     of version N's root keys and of its own, so keys rotate and are revoked
//     through a chain of roots starting at the one the device was provisioned
//     with.
//   - a Release carries one model manifest, a fleet-wide serial number and an
//     expiry, signed by a threshold of the targets keys.
//
// Expiry is checked only here, on install: a device never stops serving a
// model it already verified because metadata expired while it was offline.
package trust

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
)

// Payload types of the two envelopes.
const (
	RootType    = "application/vnd.outpost.root+json"
	ReleaseType = "application/vnd.outpost.release+json"
)

// Role names.
const (
	RoleRoot    = "root"
	RoleTargets = "targets"
)

// Errors; callers test with errors.Is. Signature failures wrap the dsse
// sentinels (dsse.ErrThreshold, dsse.ErrPayloadType, dsse.ErrMalformed).
var (
	// ErrInvalid: a document is well signed but its content is not usable.
	ErrInvalid = errors.New("trust: invalid document")
	// ErrExpired: the final root or the release is past its expiry (freeze).
	ErrExpired = errors.New("trust: expired")
	// ErrRootVersion: a root chain skips or repeats a version.
	ErrRootVersion = errors.New("trust: root version out of sequence")
)

// Key is a public key as written in a root.
type Key struct {
	Type   string `json:"keytype"` // "ed25519"
	Public []byte `json:"public"`  // 32 raw bytes, base64 in JSON
}

// Role is the set of keys trusted for one role and how many must sign.
type Role struct {
	KeyIDs    []string `json:"keyids"`
	Threshold int      `json:"threshold"`
}

// RootDoc is the payload of a root envelope.
type RootDoc struct {
	Version int64           `json:"version"`
	Expires time.Time       `json:"expires"`
	Keys    map[string]Key  `json:"keys"`
	Roles   map[string]Role `json:"roles"`
}

// Root is a verified root: its document and the exact envelope bytes, which a
// device stores to stay at the newest root it has seen.
type Root struct {
	Doc RootDoc
	Raw []byte
}

// Release is the payload of a release envelope.
type Release struct {
	// Serial grows with every release the fleet signs. A device remembers the
	// serial of what it installed, so an old signed rollback instruction
	// cannot be replayed after newer releases.
	Serial  int64             `json:"serial"`
	Expires time.Time         `json:"expires"`
	Model   manifest.Manifest `json:"model"`
}

func decodeStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}

// validate checks the root's internal consistency.
func (d *RootDoc) validate() error {
	if d.Version < 1 {
		return fmt.Errorf("%w: root version %d", ErrInvalid, d.Version)
	}
	if d.Expires.IsZero() {
		return fmt.Errorf("%w: root has no expiry", ErrInvalid)
	}
	for id, k := range d.Keys {
		if k.Type != "ed25519" || len(k.Public) != ed25519.PublicKeySize || dsse.KeyID(k.Public) != id {
			return fmt.Errorf("%w: key %.12s", ErrInvalid, id)
		}
	}
	for _, name := range []string{RoleRoot, RoleTargets} {
		r, ok := d.Roles[name]
		if !ok {
			return fmt.Errorf("%w: no %s role", ErrInvalid, name)
		}
		if r.Threshold < 1 || r.Threshold > len(r.KeyIDs) {
			return fmt.Errorf("%w: %s threshold %d with %d keys", ErrInvalid, name, r.Threshold, len(r.KeyIDs))
		}
		for _, id := range r.KeyIDs {
			if _, ok := d.Keys[id]; !ok {
				return fmt.Errorf("%w: %s key %.12s not listed", ErrInvalid, name, id)
			}
		}
	}
	return nil
}

// keys returns the public keys of a role.
func (d *RootDoc) keys(role string) (map[string]ed25519.PublicKey, int) {
	r := d.Roles[role]
	m := make(map[string]ed25519.PublicKey, len(r.KeyIDs))
	for _, id := range r.KeyIDs {
		m[id] = ed25519.PublicKey(d.Keys[id].Public)
	}
	return m, r.Threshold
}

// verify checks env against role of d.
func (d *RootDoc) verify(env *dsse.Envelope, typ, role string) error {
	keys, threshold := d.keys(role)
	return dsse.Verify(env, typ, keys, threshold)
}

func parseRoot(b []byte) (*dsse.Envelope, *RootDoc, error) {
	env, err := dsse.Parse(b)
	if err != nil {
		return nil, nil, fmt.Errorf("trust: root: %w", err)
	}
	if env.PayloadType != RootType {
		return nil, nil, fmt.Errorf("trust: root: %w: %q", dsse.ErrPayloadType, env.PayloadType)
	}
	var d RootDoc
	if err := decodeStrict(env.Payload, &d); err != nil {
		return nil, nil, fmt.Errorf("%w: root: %v", ErrInvalid, err)
	}
	if err := d.validate(); err != nil {
		return nil, nil, err
	}
	return env, &d, nil
}

// LoadRoot reads a trust anchor: the root a device was provisioned with, or
// the newest one it stored. It must be signed by its own root threshold.
// Expiry is not checked here (see VerifyRelease).
func LoadRoot(b []byte) (*Root, error) {
	env, d, err := parseRoot(b)
	if err != nil {
		return nil, err
	}
	if err := d.verify(env, RootType, RoleRoot); err != nil {
		return nil, fmt.Errorf("trust: root v%d: %w", d.Version, err)
	}
	return &Root{Doc: *d, Raw: append([]byte(nil), b...)}, nil
}

// Next verifies root version r+1: signed by a threshold of r's root keys (the
// old owners agree) and of its own (the new owners hold their keys).
func (r *Root) Next(b []byte) (*Root, error) {
	env, d, err := parseRoot(b)
	if err != nil {
		return nil, err
	}
	if d.Version != r.Doc.Version+1 {
		return nil, fmt.Errorf("%w: got v%d after v%d", ErrRootVersion, d.Version, r.Doc.Version)
	}
	if err := r.Doc.verify(env, RootType, RoleRoot); err != nil {
		return nil, fmt.Errorf("trust: root v%d by keys of v%d: %w", d.Version, r.Doc.Version, err)
	}
	if err := d.verify(env, RootType, RoleRoot); err != nil {
		return nil, fmt.Errorf("trust: root v%d by its own keys: %w", d.Version, err)
	}
	return &Root{Doc: *d, Raw: append([]byte(nil), b...)}, nil
}

// Chain walks from r through roots, which may hold any versions in ascending
// order: versions up to r's are skipped, the rest must follow without gaps.
// It returns the newest root reached.
func (r *Root) Chain(roots [][]byte) (*Root, error) {
	cur := r
	for _, b := range roots {
		_, d, err := parseRoot(b)
		if err != nil {
			return nil, err
		}
		if d.Version <= cur.Doc.Version {
			continue
		}
		if cur, err = cur.Next(b); err != nil {
			return nil, err
		}
	}
	return cur, nil
}

// VerifyRelease checks a release envelope against r at time now: r must not
// have expired, a threshold of r's targets keys must have signed it, it must
// not have expired, and its manifest must be valid.
func (r *Root) VerifyRelease(b []byte, now time.Time) (*Release, error) {
	if !now.Before(r.Doc.Expires) {
		return nil, fmt.Errorf("%w: root v%d expired at %s", ErrExpired, r.Doc.Version, r.Doc.Expires.Format(time.RFC3339))
	}
	env, err := dsse.Parse(b)
	if err != nil {
		return nil, fmt.Errorf("trust: release: %w", err)
	}
	if err := r.Doc.verify(env, ReleaseType, RoleTargets); err != nil {
		return nil, fmt.Errorf("trust: release: %w", err)
	}
	var rel Release
	if err := decodeStrict(env.Payload, &rel); err != nil {
		return nil, fmt.Errorf("%w: release: %v", ErrInvalid, err)
	}
	if rel.Serial < 1 {
		return nil, fmt.Errorf("%w: release serial %d", ErrInvalid, rel.Serial)
	}
	if !now.Before(rel.Expires) {
		return nil, fmt.Errorf("%w: release of %s v%d expired at %s", ErrExpired, rel.Model.Name, rel.Model.Version, rel.Expires.Format(time.RFC3339))
	}
	if err := rel.Model.Validate(); err != nil {
		return nil, fmt.Errorf("trust: release: %w", err)
	}
	return &rel, nil
}

// SignRoot encodes and signs a root document. Signing a rotation needs the
// root keys of both the previous and the new version.
func SignRoot(d RootDoc, keys ...ed25519.PrivateKey) ([]byte, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	p, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("trust: sign root: %w", err)
	}
	return dsse.Sign(RootType, p, keys...).Marshal(), nil
}

// SignRelease encodes and signs a release with targets keys.
func SignRelease(rel Release, keys ...ed25519.PrivateKey) ([]byte, error) {
	if err := rel.Model.Validate(); err != nil {
		return nil, err
	}
	p, err := json.Marshal(rel)
	if err != nil {
		return nil, fmt.Errorf("trust: sign release: %w", err)
	}
	return dsse.Sign(ReleaseType, p, keys...).Marshal(), nil
}

// NewKey returns a root entry for pub and its key id.
func NewKey(pub ed25519.PublicKey) (string, Key) {
	return dsse.KeyID(pub), Key{Type: "ed25519", Public: append([]byte(nil), pub...)}
}
