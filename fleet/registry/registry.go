// Package registry is the fleet controller's durable state in one bbolt file:
// model versions (signed release and a blob file per artifact), devices
// (labels, models, update state, telemetry counters), rollouts and each
// rollout's per-device assignments, the devices' broker credentials
// (hashes only, see credentials.go), admin API tokens (hashes only,
// tokens.go) and the hash-chained audit log of admin changes (audit.go).
//
//	DATA/registry.db            the bbolt file
//	DATA/blobs/<sha256>         model artifacts, written once, verified
//
// Values are JSON. Every write is one bbolt transaction, synced; a crash
// loses nothing that a method returned for.
package registry

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/outpost-edge/outpost/internal/atomicfile"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
	bolt "go.etcd.io/bbolt"
)

// Errors; callers test with errors.Is.
var (
	// ErrNotFound: no such model version, device or rollout.
	ErrNotFound = errors.New("registry: not found")
	// ErrExists: a model version is already stored with other bytes.
	ErrExists = errors.New("registry: already exists")
)

var (
	bModels      = []byte("models")
	bDevices     = []byte("devices")
	bRollouts    = []byte("rollouts")
	bAssignments = []byte("assignments")
	bTelemetry   = []byte("telemetry")
	bCredentials = []byte("credentials")
	bTokens      = []byte("tokens")
	bAudit       = []byte("audit")
	bAuditMeta   = []byte("audit-meta")
)

// Options for Open; the zero value works.
type Options struct {
	Logger *slog.Logger
}

// Registry is an open data directory. It is safe for concurrent use.
type Registry struct {
	dir string
	db  *bolt.DB
	log *slog.Logger
}

// Open opens (creating) the registry in dir.
func Open(dir string, opts Options) (*Registry, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o750); err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dir, "registry.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("registry: open: %w", err)
	}
	// Concurrent MQTT handlers write through Batch; a short delay keeps the
	// serial callers (the rollout engine) from waiting the default 10 ms.
	db.MaxBatchDelay = 2 * time.Millisecond
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bModels, bDevices, bRollouts, bAssignments, bTelemetry, bCredentials, bTokens, bAudit, bAuditMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("registry: init: %w", err)
	}
	return &Registry{dir: dir, db: db, log: opts.Logger}, nil
}

// Close closes the bbolt file.
func (r *Registry) Close() error { return r.db.Close() }

// --- models

// ModelVersion is one stored, signed model version.
type ModelVersion struct {
	Name    string `json:"name"`
	Version int64  `json:"version"`
	SHA256  string `json:"sha256"`
	Length  int64  `json:"length"`
	// ChunkSize is how the artifact is served.
	ChunkSize int `json:"chunk_size"`
	// Release is the signed release envelope, sent inside install commands.
	Release []byte    `json:"release"`
	Serial  int64     `json:"serial"`
	Expires time.Time `json:"expires"`
	Created time.Time `json:"created"`
}

// Artifact is how devices fetch the version.
func (m *ModelVersion) Artifact() protocol.Artifact {
	return protocol.Artifact{SHA256: m.SHA256, Length: m.Length, ChunkSize: m.ChunkSize,
		Chunks: protocol.ChunkCount(m.Length, m.ChunkSize)}
}

func modelKey(name string, version int64) []byte {
	return fmt.Appendf(nil, "%s/%020d", name, version)
}

// DefaultChunkSize is the chunk size of pushed artifacts unless told.
const DefaultChunkSize = 64 << 10

// PutModel verifies release against root (signatures, expiry, manifest),
// copies model into a blob file checking it against the manifest as it
// goes, and records the version. Pushing the same version with the same
// bytes again is a no-op; other bytes are ErrExists. chunkSize 0 means
// DefaultChunkSize.
func (r *Registry) PutModel(root *trust.Root, release []byte, model io.Reader, chunkSize int, now time.Time) (*ModelVersion, error) {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	if chunkSize > protocol.MaxChunkSize {
		return nil, fmt.Errorf("registry: chunk size %d is over %d", chunkSize, protocol.MaxChunkSize)
	}
	rel, err := root.VerifyRelease(release, now)
	if err != nil {
		return nil, fmt.Errorf("registry: push: %w", err)
	}
	m := &rel.Model
	if old, err := r.Model(m.Name, m.Version); err == nil {
		if old.SHA256 != m.SHA256 {
			return nil, fmt.Errorf("%w: %s v%d with sha256 %s", ErrExists, m.Name, m.Version, old.SHA256)
		}
	}
	if err := r.writeBlob(m, model); err != nil {
		return nil, err
	}
	mv := &ModelVersion{Name: m.Name, Version: m.Version, SHA256: m.SHA256, Length: m.Length, ChunkSize: chunkSize,
		Release: release, Serial: rel.Serial, Expires: rel.Expires, Created: now.UTC()}
	err = r.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bModels)
		k := modelKey(m.Name, m.Version)
		if v := b.Get(k); v != nil {
			var old ModelVersion
			if json.Unmarshal(v, &old) == nil && old.SHA256 != m.SHA256 {
				return fmt.Errorf("%w: %s v%d", ErrExists, m.Name, m.Version)
			}
		}
		return putJSON(b, k, mv)
	})
	if err != nil {
		return nil, fmt.Errorf("registry: push: %w", err)
	}
	r.log.Info("model stored", "model", m.Name, "version", m.Version, "sha256", m.SHA256, "bytes", m.Length)
	return mv, nil
}

// writeBlob streams model into blobs/<sha256> through manifest.Bytes, so the
// file holds exactly the signed bytes or nothing.
func (r *Registry) writeBlob(m *manifest.Manifest, model io.Reader) error {
	path := r.BlobPath(m.SHA256)
	if st, err := os.Stat(path); err == nil && st.Size() == m.Length {
		// The blob is known; the upload must still be the signed bytes.
		if _, err := io.Copy(io.Discard, m.Bytes(model)); err != nil {
			return fmt.Errorf("registry: upload of %s: %w", m.SHA256[:12], err)
		}
		return nil
	}
	err := atomicfile.Write(path, atomicfile.Options{}, func(w io.Writer) error {
		_, err := io.Copy(w, m.Bytes(model))
		return err
	})
	if err != nil {
		return fmt.Errorf("registry: blob %s: %w", m.SHA256[:12], err)
	}
	return nil
}

// BlobPath is the file of an artifact (which may not exist).
func (r *Registry) BlobPath(sha string) string {
	if len(sha) != 64 {
		sha = "invalid"
	}
	if _, err := hex.DecodeString(sha); err != nil {
		sha = "invalid"
	}
	return filepath.Join(r.dir, "blobs", sha)
}

// Model returns one version.
func (r *Registry) Model(name string, version int64) (*ModelVersion, error) {
	var m ModelVersion
	err := r.db.View(func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bModels), modelKey(name, version), &m)
	})
	if err != nil {
		return nil, fmt.Errorf("registry: model %s v%d: %w", name, version, err)
	}
	return &m, nil
}

// ModelBySHA returns a version whose artifact has digest sha.
func (r *Registry) ModelBySHA(sha string) (*ModelVersion, error) {
	ms, err := r.Models()
	if err != nil {
		return nil, err
	}
	for _, m := range ms {
		if m.SHA256 == sha {
			return &m, nil
		}
	}
	return nil, fmt.Errorf("registry: artifact %.12s: %w", sha, ErrNotFound)
}

// Models lists every version, by name then version.
func (r *Registry) Models() ([]ModelVersion, error) {
	var out []ModelVersion
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bModels).ForEach(func(_, v []byte) error {
			var m ModelVersion
			if err := json.Unmarshal(v, &m); err != nil {
				return err
			}
			out = append(out, m)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("registry: models: %w", err)
	}
	return out, nil
}

// --- devices

// Device is what the controller knows about one device.
type Device struct {
	ID           string            `json:"id"`
	Labels       map[string]string `json:"labels,omitempty"`
	AgentVersion string            `json:"agent_version,omitempty"`
	Online       bool              `json:"online"`
	// OnlineSince is when the device last said "online", i.e. its last
	// connection.
	OnlineSince time.Time              `json:"online_since,omitzero"`
	LastSeen    time.Time              `json:"last_seen,omitzero"`
	Models      []protocol.ModelStatus `json:"models,omitempty"`
	Update      *protocol.UpdateStatus `json:"update,omitempty"`
	Health      protocol.HealthSummary `json:"health"`
	RootVersion int64                  `json:"root_version,omitempty"`
	StatusTime  time.Time              `json:"status_time,omitzero"`
	Telemetry   TelemetryCounters      `json:"telemetry"`
}

// Running returns the version of model the device reports serving, or 0.
func (d *Device) Running(model string) int64 {
	for _, m := range d.Models {
		if m.Name == model {
			return m.Version
		}
	}
	return 0
}

// UpdateDevice applies fn to the device (a zero Device with ID set if new)
// and stores the result, in one transaction. fn may run more than once (bbolt
// batches concurrent writers and retries), each time on a fresh copy.
func (r *Registry) UpdateDevice(id string, fn func(d *Device)) (*Device, error) {
	var d Device
	err := r.db.Batch(func(tx *bolt.Tx) error {
		d = Device{}
		b := tx.Bucket(bDevices)
		if err := getJSON(b, []byte(id), &d); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		d.ID = id
		fn(&d)
		return putJSON(b, []byte(id), &d)
	})
	if err != nil {
		return nil, fmt.Errorf("registry: device %s: %w", id, err)
	}
	return &d, nil
}

// Device returns one device.
func (r *Registry) Device(id string) (*Device, error) {
	var d Device
	err := r.db.View(func(tx *bolt.Tx) error { return getJSON(tx.Bucket(bDevices), []byte(id), &d) })
	if err != nil {
		return nil, fmt.Errorf("registry: device %s: %w", id, err)
	}
	return &d, nil
}

// Devices lists every device by id.
func (r *Registry) Devices() ([]Device, error) {
	var out []Device
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bDevices).ForEach(func(_, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return err
			}
			out = append(out, d)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("registry: devices: %w", err)
	}
	return out, nil
}

// --- telemetry

// TelemetryCounters count the telemetry a device sent, de-duplicated by
// (device, epoch, sequence).
type TelemetryCounters struct {
	Batches    uint64 `json:"batches"`
	Records    uint64 `json:"records"`
	Duplicates uint64 `json:"duplicates"`
	// ByKind counts new records by kind name.
	ByKind map[string]uint64 `json:"by_kind,omitempty"`
	// Epoch and MaxSeq: the device's current queue and the highest sequence
	// number seen in it.
	Epoch  uint64 `json:"epoch"`
	MaxSeq uint64 `json:"max_seq"`
	// Drops are the epoch's cumulative drop counters (maximum seen).
	Drops map[string]uint64 `json:"drops,omitempty"`
	// Last is when the last batch arrived.
	Last time.Time `json:"last,omitzero"`
}

// RecordBatch counts a decoded telemetry batch from device and returns how
// many of its records were new. The protocol guarantees that a sequence
// number not seen before is higher than all seen in the epoch, so the
// highest one is all the state de-duplication needs.
func (r *Registry) RecordBatch(device string, b *protocol.Batch, now time.Time) (int, error) {
	fresh := 0
	_, err := r.UpdateDevice(device, func(d *Device) {
		fresh = 0 // bbolt may run a batched function again
		t := &d.Telemetry
		if t.Epoch != b.Epoch {
			t.Epoch, t.MaxSeq, t.Drops = b.Epoch, 0, nil
		}
		t.Batches++
		t.Last = now.UTC()
		for _, e := range b.Entries {
			if e.Seq <= t.MaxSeq {
				t.Duplicates++
				continue
			}
			t.MaxSeq = e.Seq
			t.Records++
			fresh++
			if k, _, err := protocol.PeekRecord(e.Body); err == nil {
				if t.ByKind == nil {
					t.ByKind = map[string]uint64{}
				}
				t.ByKind[k.String()]++
			}
		}
		for reason, c := range b.Drops {
			if c == 0 {
				continue
			}
			if t.Drops == nil {
				t.Drops = map[string]uint64{}
			}
			name := protocol.DropReason(reason).String()
			t.Drops[name] = max(t.Drops[name], c)
		}
	})
	return fresh, err
}

// --- rollouts

// RolloutState is the life cycle of a rollout.
type RolloutState string

// Rollout states.
const (
	RolloutRunning   RolloutState = "running"
	RolloutPaused    RolloutState = "paused"
	RolloutCompleted RolloutState = "completed"
	// RolloutHalted: a gate failed; the affected devices were rolled back.
	RolloutHalted     RolloutState = "halted"
	RolloutAborted    RolloutState = "aborted"
	RolloutSuperseded RolloutState = "superseded"
)

// Active reports whether the rollout still sends installs.
func (s RolloutState) Active() bool {
	return s == RolloutRunning || s == RolloutPaused || s == RolloutCompleted
}

// Rollout is one rollout's definition and progress.
type Rollout struct {
	ID       string            `json:"id"`
	Model    string            `json:"model"`
	Version  int64             `json:"version"`
	Selector map[string]string `json:"selector,omitempty"`
	// Waves are cumulative percentages of the selected devices, rising, the
	// last 100.
	Waves []int `json:"waves"`
	// MaxFailureRatio: more failures than this share of a wave's devices
	// halts the rollout.
	MaxFailureRatio float64 `json:"max_failure_ratio"`
	// MinSuccesses a wave needs before the next starts: commits by the
	// wave's own devices (verified ones with RequireVerified). A wave with
	// fewer devices needs all of them.
	MinSuccesses int `json:"min_successes"`
	// RequireVerified counts only verified commits (probation saw its
	// minimum requests) as successes.
	RequireVerified bool `json:"require_verified,omitempty"`
	// Probation, when set, is sent in every install command and overrides
	// the devices' own probation settings.
	Probation *protocol.Probation `json:"probation,omitempty"`
	// WaveTimeout, when positive, is how long a wave may wait for its
	// evidence; OnWaveTimeout (WaveTimeoutHalt or WaveTimeoutContinue) says
	// what happens then. Zero waits forever.
	WaveTimeout   time.Duration `json:"wave_timeout,omitempty"`
	OnWaveTimeout string        `json:"on_wave_timeout,omitempty"`
	// Bake is how long a finished wave is watched before the next starts.
	Bake    time.Duration `json:"bake"`
	State   RolloutState  `json:"state"`
	Wave    int           `json:"wave"` // index into Waves of the current wave
	Reason  string        `json:"reason,omitempty"`
	Created time.Time     `json:"created"`
	Updated time.Time     `json:"updated"`
	// WaveDone is when the current wave's devices all finished; zero while
	// they have not.
	WaveDone time.Time `json:"wave_done,omitzero"`
	// WaveStarted is when the current wave started (zero in rollouts stored
	// before it existed: Created stands in).
	WaveStarted time.Time `json:"wave_started,omitzero"`
	Finished    time.Time `json:"finished,omitzero"`
	// Decisions are the gate's decisions so far, oldest first, with the
	// evidence each one was taken on.
	Decisions []Decision `json:"decisions,omitempty"`
}

// What happens when a wave times out.
const (
	WaveTimeoutHalt     = "halt"
	WaveTimeoutContinue = "continue"
)

// Decision is one gate decision: a wave passed, timed out or failed.
type Decision struct {
	Time time.Time `json:"time"`
	// Wave is the index of the wave decided on.
	Wave int `json:"wave"`
	// Action: "passed", "completed", "timeout-continue", "timeout-halt",
	// "failed".
	Action string `json:"action"`
	// Successes and Needed are the evidence at the time: the wave's
	// successes and the successes it needed; Devices its devices.
	Successes int    `json:"successes"`
	Needed    int    `json:"needed"`
	Devices   int    `json:"devices"`
	Detail    string `json:"detail,omitempty"`
}

// PutRollout stores r (new or changed).
func (r *Registry) PutRollout(ro *Rollout) error {
	err := r.db.Update(func(tx *bolt.Tx) error { return putJSON(tx.Bucket(bRollouts), []byte(ro.ID), ro) })
	if err != nil {
		return fmt.Errorf("registry: rollout %s: %w", ro.ID, err)
	}
	return nil
}

// UpdateRollout applies fn to a stored rollout in one transaction; fn may
// return an error to leave it unchanged.
func (r *Registry) UpdateRollout(id string, fn func(ro *Rollout) error) (*Rollout, error) {
	var ro Rollout
	err := r.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bRollouts)
		if err := getJSON(b, []byte(id), &ro); err != nil {
			return err
		}
		if err := fn(&ro); err != nil {
			return err
		}
		return putJSON(b, []byte(id), &ro)
	})
	if err != nil {
		return nil, fmt.Errorf("registry: rollout %s: %w", id, err)
	}
	return &ro, nil
}

// Rollout returns one rollout.
func (r *Registry) Rollout(id string) (*Rollout, error) {
	var ro Rollout
	err := r.db.View(func(tx *bolt.Tx) error { return getJSON(tx.Bucket(bRollouts), []byte(id), &ro) })
	if err != nil {
		return nil, fmt.Errorf("registry: rollout %s: %w", id, err)
	}
	return &ro, nil
}

// Rollouts lists every rollout, oldest first.
func (r *Registry) Rollouts() ([]Rollout, error) {
	var out []Rollout
	err := r.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bRollouts).ForEach(func(_, v []byte) error {
			var ro Rollout
			if err := json.Unmarshal(v, &ro); err != nil {
				return err
			}
			out = append(out, ro)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("registry: rollouts: %w", err)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.Before(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Assignment is one device's part in a rollout.
type Assignment struct {
	Rollout string `json:"rollout"`
	Device  string `json:"device"`
	Wave    int    `json:"wave"`
	// CommandID is the last install sent; Sent when.
	CommandID string    `json:"command_id,omitempty"`
	Sent      time.Time `json:"sent,omitzero"`
	Sends     int       `json:"sends"`
	// State is the last state the device acked; empty while none.
	State    protocol.UpdateState `json:"state,omitempty"`
	Progress int64                `json:"progress_bytes,omitempty"`
	Total    int64                `json:"total_bytes,omitempty"`
	Error    string               `json:"error,omitempty"`
	// Requests is how many requests probation saw (as the device last
	// reported); Verified is set when the device committed after probation
	// saw its minimum requests.
	Requests int64 `json:"probation_requests,omitempty"`
	Verified bool  `json:"verified,omitempty"`
	// Activated is set once the device reported an activated state, so a
	// rollback is owed if the rollout is undone.
	Activated bool      `json:"activated,omitempty"`
	Updated   time.Time `json:"updated,omitzero"`
	// AckTime is the device's time of the last ack applied; older acks
	// (reordered or repeated) are ignored.
	AckTime time.Time `json:"ack_time,omitzero"`
	// Undo records the rollback or abort command sent, if any; UndoDone is
	// set when the device answered it with a terminal state.
	Undo     protocol.CommandKind `json:"undo,omitempty"`
	UndoID   string               `json:"undo_id,omitempty"`
	UndoSent time.Time            `json:"undo_sent,omitzero"`
	UndoDone bool                 `json:"undo_done,omitempty"`
	// Previous holds earlier command ids of this assignment (at most 8), so
	// a late ack to a command that was sent again still counts.
	Previous []string `json:"previous_commands,omitempty"`
}

// Remember keeps id among the assignment's earlier command ids.
func (a *Assignment) Remember(id string) {
	if id == "" {
		return
	}
	a.Previous = append(a.Previous, id)
	if len(a.Previous) > 8 {
		a.Previous = a.Previous[len(a.Previous)-8:]
	}
}

// Known reports whether id is one of the assignment's commands.
func (a *Assignment) Known(id string) bool {
	if id == a.CommandID || id == a.UndoID {
		return true
	}
	for _, p := range a.Previous {
		if p == id {
			return true
		}
	}
	return false
}

func assignKey(rollout, device string) []byte { return []byte(rollout + "/" + device) }

// UpdateAssignment applies fn to the (rollout, device) assignment, creating
// it when missing if create is set; fn returns false to store nothing.
func (r *Registry) UpdateAssignment(rollout, device string, create bool, fn func(a *Assignment) bool) (*Assignment, error) {
	var a Assignment
	err := r.db.Batch(func(tx *bolt.Tx) error {
		a = Assignment{}
		b := tx.Bucket(bAssignments)
		k := assignKey(rollout, device)
		err := getJSON(b, k, &a)
		if errors.Is(err, ErrNotFound) && !create {
			return err
		}
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		a.Rollout, a.Device = rollout, device
		if !fn(&a) {
			return nil
		}
		return putJSON(b, k, &a)
	})
	if err != nil {
		return nil, fmt.Errorf("registry: assignment %s/%s: %w", rollout, device, err)
	}
	return &a, nil
}

// Assignments lists a rollout's assignments by device.
func (r *Registry) Assignments(rollout string) ([]Assignment, error) {
	var out []Assignment
	prefix := []byte(rollout + "/")
	err := r.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bAssignments).Cursor()
		for k, v := c.Seek(prefix); k != nil && len(k) >= len(prefix) && string(k[:len(prefix)]) == string(prefix); k, v = c.Next() {
			var a Assignment
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			out = append(out, a)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("registry: assignments of %s: %w", rollout, err)
	}
	return out, nil
}

// NewID returns prefix and 32 random hex digits: command and rollout ids.
func NewID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails on Linux (Go 1.24+ crashes instead)
	return prefix + hex.EncodeToString(b[:])
}

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	p, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, p)
}

func getJSON(b *bolt.Bucket, k []byte, v any) error {
	p := b.Get(k)
	if p == nil {
		return ErrNotFound
	}
	return json.Unmarshal(p, v)
}
