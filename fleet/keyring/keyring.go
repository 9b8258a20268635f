// Package keyring keeps the fleet's signing keys and root history in a
// directory, and signs roots and releases with them:
//
//	KEYS/root.json            newest root: what a new device is provisioned with
//	KEYS/roots/N.json         every root version, shipped in each bundle
//	KEYS/private/ROLE-ID.key  Ed25519 private keys (PKCS#8 PEM, mode 0600)
//	KEYS/state.json           the last release serial
//
// The root keys sign only root rotations; they belong offline. The targets
// keys sign releases and stay with the fleet.
package keyring

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/models/dsse"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
)

// Errors.
var (
	// ErrExists: Init found keys already in the directory.
	ErrExists = errors.New("keyring: keys already exist")
	// ErrMissingKey: a private key needed to sign is not in KEYS/private
	// (the offline root key, typically).
	ErrMissingKey = errors.New("keyring: private key not present")
)

// Options for Init; zero values give one key per role, threshold 1, and a
// root valid for a year.
type Options struct {
	RootKeys, RootThreshold       int
	TargetsKeys, TargetsThreshold int
	// RootExpires is how long each root version is valid.
	RootExpires time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (o *Options) fill() {
	if o.RootKeys < 1 {
		o.RootKeys = 1
	}
	if o.RootThreshold < 1 {
		o.RootThreshold = 1
	}
	if o.TargetsKeys < 1 {
		o.TargetsKeys = 1
	}
	if o.TargetsThreshold < 1 {
		o.TargetsThreshold = 1
	}
	if o.RootExpires <= 0 {
		o.RootExpires = 365 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Keyring is an opened keys directory. It is not safe for concurrent use, nor
// for two processes on the same directory at once.
type Keyring struct {
	dir  string
	opts Options
	root *trust.Root
	priv map[string]ed25519.PrivateKey // by key id, the ones present
}

// Init creates a keys directory with fresh keys and root version 1.
func Init(dir string, opts Options) (*Keyring, error) {
	opts.fill()
	if opts.RootThreshold > opts.RootKeys || opts.TargetsThreshold > opts.TargetsKeys {
		return nil, fmt.Errorf("keyring: threshold above the number of keys")
	}
	if _, err := os.Stat(filepath.Join(dir, "root.json")); err == nil {
		return nil, fmt.Errorf("%w in %s", ErrExists, dir)
	}
	for _, d := range []string{filepath.Join(dir, "roots"), filepath.Join(dir, "private")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
	}
	k := &Keyring{dir: dir, opts: opts, priv: map[string]ed25519.PrivateKey{}}
	doc := trust.RootDoc{
		Version: 1,
		Expires: opts.Now().Add(opts.RootExpires).UTC().Truncate(time.Second),
		Keys:    map[string]trust.Key{},
		Roles:   map[string]trust.Role{},
	}
	var rootKeys []ed25519.PrivateKey
	for _, r := range []struct {
		role      string
		n, thresh int
	}{{trust.RoleRoot, opts.RootKeys, opts.RootThreshold}, {trust.RoleTargets, opts.TargetsKeys, opts.TargetsThreshold}} {
		role := trust.Role{Threshold: r.thresh}
		for i := 0; i < r.n; i++ {
			priv, err := k.newKey(r.role)
			if err != nil {
				return nil, err
			}
			id, key := trust.NewKey(priv.Public().(ed25519.PublicKey))
			doc.Keys[id] = key
			role.KeyIDs = append(role.KeyIDs, id)
			if r.role == trust.RoleRoot {
				rootKeys = append(rootKeys, priv)
			}
		}
		doc.Roles[r.role] = role
	}
	if err := k.publish(doc, rootKeys); err != nil {
		return nil, err
	}
	if err := k.saveSerial(0); err != nil {
		return nil, err
	}
	return k, nil
}

// Open loads a keys directory made by Init.
func Open(dir string, opts Options) (*Keyring, error) {
	opts.fill()
	b, err := os.ReadFile(filepath.Join(dir, "root.json"))
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	root, err := trust.LoadRoot(b)
	if err != nil {
		return nil, fmt.Errorf("keyring: %s: %w", dir, err)
	}
	k := &Keyring{dir: dir, opts: opts, root: root, priv: map[string]ed25519.PrivateKey{}}
	ents, err := os.ReadDir(filepath.Join(dir, "private"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".key") {
			continue
		}
		priv, err := readKey(filepath.Join(dir, "private", e.Name()))
		if err != nil {
			return nil, err
		}
		k.priv[dsse.KeyID(priv.Public().(ed25519.PublicKey))] = priv
	}
	return k, nil
}

// Root is the newest root.
func (k *Keyring) Root() *trust.Root { return k.root }

// Dir is the keys directory.
func (k *Keyring) Dir() string { return k.dir }

// Roots returns every root version in order, the chain a bundle carries.
func (k *Keyring) Roots() ([][]byte, error) {
	var out [][]byte
	for v := int64(1); v <= k.root.Doc.Version; v++ {
		b, err := os.ReadFile(filepath.Join(k.dir, "roots", strconv.FormatInt(v, 10)+".json"))
		if err != nil {
			return nil, fmt.Errorf("keyring: %w", err)
		}
		out = append(out, b)
	}
	return out, nil
}

// signers returns the private keys of role in root doc, or ErrMissingKey
// when fewer than the threshold are present.
func (k *Keyring) signers(doc trust.RootDoc, role string) ([]ed25519.PrivateKey, error) {
	r := doc.Roles[role]
	var out []ed25519.PrivateKey
	for _, id := range r.KeyIDs {
		if p, ok := k.priv[id]; ok {
			out = append(out, p)
		}
	}
	if len(out) < r.Threshold {
		return nil, fmt.Errorf("%w: %d of %d %s keys in %s", ErrMissingKey, len(out), r.Threshold, role, filepath.Join(k.dir, "private"))
	}
	return out, nil
}

// Signers returns the private keys present for role in the newest root, at
// least its threshold of them, or ErrMissingKey. The controller signs
// commands with the keys of protocol.CommandRole(root).
func (k *Keyring) Signers(role string) ([]ed25519.PrivateKey, error) {
	if _, ok := k.root.Doc.Roles[role]; !ok {
		return nil, fmt.Errorf("%w: root v%d has no %s role", ErrMissingKey, k.root.Doc.Version, role)
	}
	return k.signers(k.root.Doc, role)
}

// SignRelease signs m with the targets keys under the next serial, valid for
// expires from now.
func (k *Keyring) SignRelease(m manifest.Manifest, expires time.Duration) ([]byte, error) {
	keys, err := k.signers(k.root.Doc, trust.RoleTargets)
	if err != nil {
		return nil, err
	}
	serial, err := k.serial()
	if err != nil {
		return nil, err
	}
	rel := trust.Release{
		Serial:  serial + 1,
		Expires: k.opts.Now().Add(expires).UTC().Truncate(time.Second),
		Model:   m,
	}
	b, err := trust.SignRelease(rel, keys...)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	// The serial is saved before the release leaves this function, so two
	// releases never share one.
	if err := k.saveSerial(rel.Serial); err != nil {
		return nil, err
	}
	return b, nil
}

// Rotate replaces every key of role with fresh ones (as many, same
// threshold) in a new root version, which revokes the old keys. The new root
// is signed by the current root keys and, when rotating root, the new ones.
func (k *Keyring) Rotate(role string) (*trust.Root, error) {
	old := k.root.Doc
	oldRootKeys, err := k.signers(old, trust.RoleRoot)
	if err != nil {
		return nil, err
	}
	r, ok := old.Roles[role]
	if !ok {
		return nil, fmt.Errorf("keyring: unknown role %q", role)
	}
	doc := trust.RootDoc{
		Version: old.Version + 1,
		Expires: k.opts.Now().Add(k.opts.RootExpires).UTC().Truncate(time.Second),
		Keys:    map[string]trust.Key{},
		Roles:   map[string]trust.Role{},
	}
	signWith := oldRootKeys
	for name, rr := range old.Roles {
		if name == role {
			continue
		}
		doc.Roles[name] = rr
		for _, id := range rr.KeyIDs {
			doc.Keys[id] = old.Keys[id]
		}
	}
	nr := trust.Role{Threshold: r.Threshold}
	for range r.KeyIDs {
		priv, err := k.newKey(role)
		if err != nil {
			return nil, err
		}
		id, key := trust.NewKey(priv.Public().(ed25519.PublicKey))
		doc.Keys[id] = key
		nr.KeyIDs = append(nr.KeyIDs, id)
		if role == trust.RoleRoot {
			signWith = append(signWith, priv)
		}
	}
	doc.Roles[role] = nr
	if err := k.publish(doc, signWith); err != nil {
		return nil, err
	}
	return k.root, nil
}

// publish signs doc, writes it as roots/N.json and root.json, and makes it
// the keyring's root.
func (k *Keyring) publish(doc trust.RootDoc, keys []ed25519.PrivateKey) error {
	b, err := trust.SignRoot(doc, keys...)
	if err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	root, err := trust.LoadRoot(b)
	if err != nil {
		return fmt.Errorf("keyring: new root does not verify: %w", err)
	}
	if k.root != nil {
		if _, err := k.root.Next(b); err != nil {
			return fmt.Errorf("keyring: new root does not follow v%d: %w", k.root.Doc.Version, err)
		}
	}
	if err := writeAtomic(filepath.Join(k.dir, "roots", strconv.FormatInt(doc.Version, 10)+".json"), b, 0o644); err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(k.dir, "root.json"), b, 0o644); err != nil {
		return err
	}
	k.root = root
	return nil
}

func (k *Keyring) newKey(role string) (ed25519.PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	id := dsse.KeyID(priv.Public().(ed25519.PublicKey))
	p := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := writeAtomic(filepath.Join(k.dir, "private", role+"-"+id[:16]+".key"), p, 0o600); err != nil {
		return nil, err
	}
	k.priv[id] = priv
	return priv, nil
}

// KeyFiles lists the private key files of role present in the directory.
func (k *Keyring) KeyFiles(role string) []string {
	m, _ := filepath.Glob(filepath.Join(k.dir, "private", role+"-*.key"))
	sort.Strings(m)
	return m
}

func readKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("keyring: %s: not a PEM private key", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("keyring: %s: %w", path, err)
	}
	priv, ok := key.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("keyring: %s: not an Ed25519 key", path)
	}
	return priv, nil
}

type state struct {
	Serial int64 `json:"serial"`
}

func (k *Keyring) serial() (int64, error) {
	b, err := os.ReadFile(filepath.Join(k.dir, "state.json"))
	if err != nil {
		return 0, fmt.Errorf("keyring: %w", err)
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return 0, fmt.Errorf("keyring: state.json: %w", err)
	}
	return s.Serial, nil
}

func (k *Keyring) saveSerial(n int64) error {
	b, _ := json.Marshal(state{Serial: n})
	return writeAtomic(filepath.Join(k.dir, "state.json"), b, 0o600)
}

// writeAtomic replaces path with b (internal/atomicfile).
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	if err := atomicfile.WriteFile(path, b, atomicfile.Options{Perm: mode}); err != nil {
		return fmt.Errorf("keyring: %w", err)
	}
	return nil
}
