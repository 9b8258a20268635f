package protocol

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
	"github.com/outpost-edge/outpost/models/trust"
)

// CommandType is the DSSE payload type of a signed command.
const CommandType = "application/vnd.outpost.command+json"

// RoleCommands is the optional root role whose keys sign commands. A root
// without it (every root keyring.Init makes today) delegates commands to the
// targets role, the keys that sign releases; see CommandRole.
const RoleCommands = "commands"

// Limits of a command message.
const (
	// MaxCommandSize bounds an encoded command message (roots, envelope and
	// the release inside it, golden vectors included).
	MaxCommandSize = 8 << 20
	// MaxCommandRoots bounds the root chain a command carries.
	MaxCommandRoots = 100
	// MaxCommandLifetime bounds Expires - Issued, so a device need remember
	// the ids it has seen for at most this long.
	MaxCommandLifetime = 30 * 24 * time.Hour
	// MaxClockSkew is how far in the future a command's Issued time may be
	// on the device's clock.
	MaxClockSkew = 5 * time.Minute
	// MaxChunkSize bounds Artifact.ChunkSize and a chunk's data.
	MaxChunkSize = 1 << 20
)

// Command errors; callers test with errors.Is. VerifyCommand also returns the
// dsse and trust sentinels (dsse.ErrThreshold for unsigned or badly signed
// commands, trust.ErrExpired for an expired root or release).
var (
	// ErrInvalidCommand: the command is well formed JSON but a field is
	// missing, out of range or inconsistent (also on the signing side).
	ErrInvalidCommand = errors.New("protocol: invalid command")
	// ErrCommandExpired: now is at or after the command's Expires.
	ErrCommandExpired = errors.New("protocol: command expired")
	// ErrCommandNotYetValid: Issued is more than MaxClockSkew ahead of now.
	ErrCommandNotYetValid = errors.New("protocol: command not yet valid")
	// ErrWrongTarget: the command names another fleet or device.
	ErrWrongTarget = errors.New("protocol: command for another device")
)

// CommandKind says what a command asks for.
type CommandKind string

// Command kinds.
const (
	// CommandInstall: fetch, verify, validate and activate a model version.
	CommandInstall CommandKind = "install"
	// CommandRollback: leave a version installed by a rollout and go back to
	// the model's previous version.
	CommandRollback CommandKind = "rollback"
	// CommandAbort: cancel a rollout's update that has not been activated.
	CommandAbort CommandKind = "abort"
)

// Command is the signed payload of a command envelope. Exactly one of
// Install, Rollback and Abort is set, matching Kind.
type Command struct {
	// ID is unique per command (the controller uses 32 random hex digits);
	// a device refuses an ID it has seen before.
	ID   string      `json:"id"`
	Kind CommandKind `json:"kind"`
	// Fleet and Device name the one device that may act on the command.
	Fleet  string `json:"fleet"`
	Device string `json:"device"`
	// RolloutID names the rollout the command belongs to.
	RolloutID string    `json:"rollout_id"`
	Issued    time.Time `json:"issued"`
	Expires   time.Time `json:"expires"`

	Install  *Install  `json:"install,omitempty"`
	Rollback *Rollback `json:"rollback,omitempty"`
	Abort    *Abort    `json:"abort,omitempty"`
}

// Install asks the device to install one model version.
type Install struct {
	Model   string `json:"model"`
	Version int64  `json:"version"`
	// Artifact says how the model bytes are fetched in chunks; its SHA256
	// and Length equal the release manifest's.
	Artifact Artifact `json:"artifact"`
	// Release is the signed release envelope (trust.SignRelease) exactly as
	// the keyring made it: the manifest with digest, length, signature,
	// golden vectors and expiry. It is verified on its own against the root
	// (targets role), inside the signed command.
	Release []byte `json:"release"`
	// Probation, when set, overrides the device's own probation settings
	// for this install (a rollout's --probation-min-requests and
	// --probation-max). Zero fields keep the device's setting. Added in
	// protocol 1 without a version change: the controller sends it only
	// when a rollout sets it, because commands decode strictly and an agent
	// older than the field refuses such an install as malformed.
	Probation *Probation `json:"probation,omitempty"`
	// Trial, when set, holds the validated candidate beside the serving
	// version instead of activating it (states shadow and canary) until
	// another install of the same rollout, model and version changes the
	// trial or, without a Trial, promotes the candidate; an abort discards
	// it. Added in protocol 1 like Probation: sent only when a rollout has
	// shadow or canary phases.
	Trial *Trial `json:"trial,omitempty"`
}

// TrialMode says how a candidate on trial meets live traffic.
type TrialMode string

// Trial modes.
const (
	// TrialShadow copies Percent of the live requests to the candidate,
	// asynchronously; its answers are compared with the serving version's
	// and never reach a client.
	TrialShadow TrialMode = "shadow"
	// TrialCanary has the candidate answer Percent of the requests, sticky
	// by the request's Outpost-Routing-Key header when it has one.
	TrialCanary TrialMode = "canary"
)

// Trial is a candidate's phase before promotion (docs/PROTOCOL.md, Trials).
type Trial struct {
	Mode TrialMode `json:"mode"`
	// Percent is the share of requests, above 0 and at most 100.
	Percent float64 `json:"percent"`
}

// State is the update state a device holds the candidate in.
func (t Trial) State() UpdateState {
	if t.Mode == TrialCanary {
		return UpdateCanary
	}
	return UpdateShadow
}

// Validate checks the mode and the share.
func (t Trial) Validate() error {
	if t.Mode != TrialShadow && t.Mode != TrialCanary {
		return fmt.Errorf("%w: trial mode %q", ErrInvalidCommand, t.Mode)
	}
	if !(t.Percent > 0 && t.Percent <= 100) {
		return fmt.Errorf("%w: trial percent %v, want above 0 and at most 100", ErrInvalidCommand, t.Percent)
	}
	return nil
}

// Probation says how long an activated version is watched before the device
// commits it. Probation ends as soon as the version has served MinRequests
// requests and the device's minimum watch time has passed (a verified
// commit), or when MaxSeconds have passed (a commit without enough traffic:
// Ack.Verified false). A version that fails the device's error or latency
// limits during probation is rolled back either way.
type Probation struct {
	// MinRequests is how many requests the new version must serve for its
	// commit to be verified; 0 keeps the device's setting.
	MinRequests int64 `json:"min_requests,omitempty"`
	// MaxSeconds bounds probation when the traffic does not come; 0 keeps
	// the device's setting.
	MaxSeconds int64 `json:"max_seconds,omitempty"`
}

// Probation limits.
const (
	// MaxProbationRequests bounds Probation.MinRequests.
	MaxProbationRequests = 1 << 40
	// MaxProbationSeconds bounds Probation.MaxSeconds (30 days).
	MaxProbationSeconds = 30 * 24 * 3600
)

// Artifact describes the model bytes as the controller serves them.
type Artifact struct {
	SHA256 string `json:"sha256"` // 64 lowercase hex digits
	Length int64  `json:"length"`
	// ChunkSize is the size of every chunk but the last; Chunks is
	// ceil(Length / ChunkSize).
	ChunkSize int   `json:"chunk_size"`
	Chunks    int64 `json:"chunks"`
}

// Rollback asks the device to leave Model at Version and go back to the
// version it ran before, even though it is older.
type Rollback struct {
	Model   string `json:"model"`
	Version int64  `json:"version"`
	// Reason is for the device's audit trail ("gate failed: ...").
	Reason string `json:"reason,omitempty"`
}

// Abort asks the device to cancel an update of the command's rollout that it
// has not activated yet. Activated versions stay (see Rollback).
type Abort struct {
	Reason string `json:"reason,omitempty"`
}

// ChunkCount returns how many chunks of size chunk make length bytes.
func ChunkCount(length int64, chunk int) int64 {
	if length <= 0 || chunk <= 0 {
		return 0
	}
	return (length + int64(chunk) - 1) / int64(chunk)
}

// Validate checks the fields that do not need a clock, a key or the release.
func (c *Command) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidCommand, fmt.Sprintf(format, a...))
	}
	if !validID(c.ID) {
		return bad("id %q", c.ID)
	}
	if !validID(c.RolloutID) {
		return bad("rollout_id %q", c.RolloutID)
	}
	if checkSegment(c.Fleet) != nil || checkSegment(c.Device) != nil || c.Device == "artifacts" {
		return bad("fleet %q device %q", c.Fleet, c.Device)
	}
	if c.Issued.IsZero() || !c.Expires.After(c.Issued) || c.Expires.Sub(c.Issued) > MaxCommandLifetime {
		return bad("issued %s expires %s", c.Issued, c.Expires)
	}
	n := 0
	for _, set := range []bool{c.Install != nil, c.Rollback != nil, c.Abort != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return bad("%d bodies, want 1", n)
	}
	switch {
	case c.Kind == CommandInstall && c.Install != nil:
		in := c.Install
		if !manifest.ValidName(in.Model) || in.Version < 1 {
			return bad("install %q v%d", in.Model, in.Version)
		}
		a := in.Artifact
		if !validHex(a.SHA256) || a.Length < 1 || a.ChunkSize < 1 || a.ChunkSize > MaxChunkSize || a.Chunks != ChunkCount(a.Length, a.ChunkSize) {
			return bad("artifact %+v", a)
		}
		if len(in.Release) == 0 {
			return bad("install without a release")
		}
		if p := in.Probation; p != nil && (p.MinRequests < 0 || p.MinRequests > MaxProbationRequests || p.MaxSeconds < 0 || p.MaxSeconds > MaxProbationSeconds) {
			return bad("probation %+v", *p)
		}
		if t := in.Trial; t != nil {
			if err := t.Validate(); err != nil {
				return err
			}
		}
	case c.Kind == CommandRollback && c.Rollback != nil:
		if !manifest.ValidName(c.Rollback.Model) || c.Rollback.Version < 1 || len(c.Rollback.Reason) > MaxStringLen {
			return bad("rollback %q v%d", c.Rollback.Model, c.Rollback.Version)
		}
	case c.Kind == CommandAbort && c.Abort != nil:
		if len(c.Abort.Reason) > MaxStringLen {
			return bad("abort reason too long")
		}
	default:
		return bad("kind %q does not match its body", c.Kind)
	}
	return nil
}

// CommandMessage is the JSON payload of the cmd topic: the root chain the
// device may need to trust the signer (self-authenticating, so outside the
// signature) and the signed command envelope.
type CommandMessage struct {
	Roots    []json.RawMessage `json:"roots,omitempty"`
	Envelope json.RawMessage   `json:"envelope"`
}

// CommandRole returns the root role whose keys sign commands: RoleCommands
// when the root defines it, else trust.RoleTargets.
func CommandRole(d *trust.RootDoc) string {
	if _, ok := d.Roles[RoleCommands]; ok {
		return RoleCommands
	}
	return trust.RoleTargets
}

// SignCommand validates c, signs it with keys (a threshold of the root's
// CommandRole) and returns the cmd-topic payload carrying roots, the root
// chain in ascending version order (keyring.Roots).
func SignCommand(c *Command, roots [][]byte, keys ...ed25519.PrivateKey) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if len(roots) > MaxCommandRoots {
		return nil, fmt.Errorf("%w: %d roots", ErrInvalidCommand, len(roots))
	}
	p, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("protocol: sign command: %w", err)
	}
	msg := CommandMessage{Envelope: dsse.Sign(CommandType, p, keys...).Marshal()}
	for _, r := range roots {
		if !json.Valid(r) {
			return nil, fmt.Errorf("%w: a root is not JSON", ErrInvalidCommand)
		}
		msg.Roots = append(msg.Roots, json.RawMessage(r))
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("protocol: sign command: %w", err)
	}
	if len(b) > MaxCommandSize {
		return nil, fmt.Errorf("%w: %d bytes is over %d", ErrInvalidCommand, len(b), MaxCommandSize)
	}
	return b, nil
}

// ParseCommandMessage decodes a cmd-topic payload without verifying it.
func ParseCommandMessage(b []byte) (*CommandMessage, *dsse.Envelope, error) {
	if len(b) > MaxCommandSize {
		return nil, nil, fmt.Errorf("protocol: command: %d bytes: %w", len(b), ErrMalformed)
	}
	var m CommandMessage
	if err := decodeStrict(b, &m); err != nil {
		return nil, nil, fmt.Errorf("protocol: command: %v: %w", err, ErrMalformed)
	}
	if len(m.Roots) > MaxCommandRoots {
		return nil, nil, fmt.Errorf("protocol: command: %d roots: %w", len(m.Roots), ErrMalformed)
	}
	env, err := dsse.Parse(m.Envelope)
	if err != nil {
		return nil, nil, fmt.Errorf("protocol: command: %w", err)
	}
	return &m, env, nil
}

// ParseCommand decodes a command payload (the envelope's, already verified,
// or for inspection) and validates it.
func ParseCommand(payload []byte) (*Command, error) {
	var c Command
	if err := decodeStrict(payload, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCommand, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// VerifyOptions says who is verifying and when.
type VerifyOptions struct {
	// Fleet and Device must equal the command's; both are required.
	Fleet, Device string
	// Now is the reference time; zero means time.Now().
	Now time.Time
}

// VerifiedCommand is a command whose signature, target, times and (for an
// install) release were checked.
type VerifiedCommand struct {
	Command
	// Root is the newest root reached through the message's chain from the
	// device's anchor; the device stores it so revoked keys stay revoked.
	Root *trust.Root
	// Release is the verified release of an install, nil otherwise.
	Release *trust.Release
}

// VerifyCommand checks a cmd-topic payload against the device's trust anchor:
// it walks the carried root chain from anchor, checks the envelope against a
// threshold of the newest root's CommandRole keys, then the target, issue and
// expiry times and, for an install, the release (targets role, expiry,
// manifest) and that the release's model, version, digest and length are the
// install's. Replays (an ID already seen) are for the caller to refuse.
func VerifyCommand(b []byte, anchor *trust.Root, opts VerifyOptions) (*VerifiedCommand, error) {
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	m, env, err := ParseCommandMessage(b)
	if err != nil {
		return nil, err
	}
	roots := make([][]byte, len(m.Roots))
	for i, r := range m.Roots {
		roots[i] = r
	}
	root, err := anchor.Chain(roots)
	if err != nil {
		return nil, fmt.Errorf("protocol: command: root chain: %w", err)
	}
	if !opts.Now.Before(root.Doc.Expires) {
		return nil, fmt.Errorf("protocol: command: %w: root v%d expired at %s", trust.ErrExpired, root.Doc.Version, root.Doc.Expires.Format(time.RFC3339))
	}
	if err := verifyRole(&root.Doc, env, CommandRole(&root.Doc)); err != nil {
		return nil, fmt.Errorf("protocol: command: %w", err)
	}
	c, err := ParseCommand(env.Payload)
	if err != nil {
		return nil, err
	}
	if c.Fleet != opts.Fleet || c.Device != opts.Device {
		return nil, fmt.Errorf("%w: %s/%s, this is %s/%s", ErrWrongTarget, c.Fleet, c.Device, opts.Fleet, opts.Device)
	}
	if !opts.Now.Before(c.Expires) {
		return nil, fmt.Errorf("%w: %s at %s", ErrCommandExpired, c.ID, c.Expires.Format(time.RFC3339))
	}
	if c.Issued.Sub(opts.Now) > MaxClockSkew {
		return nil, fmt.Errorf("%w: %s issued at %s", ErrCommandNotYetValid, c.ID, c.Issued.Format(time.RFC3339))
	}
	v := &VerifiedCommand{Command: *c, Root: root}
	if in := c.Install; in != nil {
		rel, err := root.VerifyRelease(in.Release, opts.Now)
		if err != nil {
			return nil, fmt.Errorf("protocol: command %s: %w", c.ID, err)
		}
		mf := rel.Model
		if mf.Name != in.Model || mf.Version != in.Version || mf.SHA256 != in.Artifact.SHA256 || mf.Length != in.Artifact.Length {
			return nil, fmt.Errorf("%w: install %s v%d %s/%d but the release is %s v%d %s/%d", ErrInvalidCommand,
				in.Model, in.Version, in.Artifact.SHA256, in.Artifact.Length, mf.Name, mf.Version, mf.SHA256, mf.Length)
		}
		v.Release = rel
	}
	return v, nil
}

// verifyRole checks env against a threshold of role's keys in d. A role the
// root lists without a usable threshold verifies nothing.
func verifyRole(d *trust.RootDoc, env *dsse.Envelope, role string) error {
	r := d.Roles[role]
	if r.Threshold < 1 || r.Threshold > len(r.KeyIDs) {
		return fmt.Errorf("%w: role %s has threshold %d with %d keys", trust.ErrInvalid, role, r.Threshold, len(r.KeyIDs))
	}
	keys := make(map[string]ed25519.PublicKey, len(r.KeyIDs))
	for _, id := range r.KeyIDs {
		if k, ok := d.Keys[id]; ok && k.Type == "ed25519" {
			keys[id] = ed25519.PublicKey(k.Public)
		}
	}
	return dsse.Verify(env, CommandType, keys, r.Threshold)
}

// decodeStrict decodes one JSON value, refusing unknown fields: for what the
// controller signs, so a field the signer meant a device to honour is never
// silently ignored.
func decodeStrict(b []byte, v any) error { return decodeJSON(b, v, true) }

// decodeLenient decodes one JSON value, ignoring unknown fields: for what
// devices send, so an older controller reads a newer agent's messages.
func decodeLenient(b []byte, v any) error { return decodeJSON(b, v, false) }

func decodeJSON(b []byte, v any, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data")
	}
	return nil
}

// validID accepts 1 to 64 bytes of [A-Za-z0-9_.-] (ids become log fields and
// bbolt keys, never paths or topics).
func validID(s string) bool {
	return len(s) <= 64 && checkSegment(s) == nil
}

func validHex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
