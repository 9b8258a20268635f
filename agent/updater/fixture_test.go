//go:build cgo

package updater

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/agent/catalog"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/testmodel"
	"github.com/outpost-edge/outpost/models/tflite"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/require"
)

// testFleet signs roots, releases and commands as a fleet would, with the
// models/trust primitives the fleet uses.
type testFleet struct {
	rootKey, targetsKey ed25519.PrivateKey
	root                *trust.Root
	rootPath            string
	serial              atomic.Int64
}

func newTestFleet(t testing.TB) *testFleet {
	t.Helper()
	f := &testFleet{}
	_, f.rootKey, _ = ed25519.GenerateKey(nil)
	_, f.targetsKey, _ = ed25519.GenerateKey(nil)
	rid, rk := trust.NewKey(f.rootKey.Public().(ed25519.PublicKey))
	tid, tk := trust.NewKey(f.targetsKey.Public().(ed25519.PublicKey))
	doc := trust.RootDoc{Version: 1, Expires: time.Now().Add(365 * 24 * time.Hour),
		Keys:  map[string]trust.Key{rid: rk, tid: tk},
		Roles: map[string]trust.Role{trust.RoleRoot: {KeyIDs: []string{rid}, Threshold: 1}, trust.RoleTargets: {KeyIDs: []string{tid}, Threshold: 1}}}
	b, err := trust.SignRoot(doc, f.rootKey)
	require.NoError(t, err)
	f.root, err = trust.LoadRoot(b)
	require.NoError(t, err)
	f.rootPath = filepath.Join(t.TempDir(), "root.json")
	require.NoError(t, os.WriteFile(f.rootPath, b, 0o644))
	return f
}

// describe is the manifest the fleet signs for a test model, with golden
// vectors computed by the real runtime (cached per model file).
func describe(t testing.TB, name string, version int64, file string, golden bool) (manifest.Manifest, []byte) {
	t.Helper()
	b := testmodel.Read(t, file)
	sig, err := tflite.Read(b)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	m := manifest.Manifest{Name: name, Version: version, SHA256: hex.EncodeToString(sum[:]), Length: int64(len(b)),
		Runtime: manifest.RuntimeTFLite, Inputs: sig.Inputs, Outputs: sig.Outputs}
	if golden {
		m.Golden = goldenFor(t, file, b)
	}
	return m, b
}

var (
	goldenMu    sync.Mutex
	goldenCache = map[string][]manifest.Golden{}
)

// goldenFor runs the model on a fixed pseudo-random input and signs what it
// answered: what a trainer's export pipeline does.
func goldenFor(t testing.TB, file string, b []byte) []manifest.Golden {
	goldenMu.Lock()
	defer goldenMu.Unlock()
	if g, ok := goldenCache[file]; ok {
		return g
	}
	m, err := runtime.Load(b, runtime.Options{Workers: 1})
	require.NoError(t, err)
	defer m.Close()
	var g manifest.Golden
	g.Tolerance = 1e-4
	in := make([][]byte, len(m.Inputs()))
	seed := uint32(7)
	for i, info := range m.Inputs() {
		require.Equal(t, "FP32", string(info.DataType))
		in[i] = make([]byte, m.InputSizes()[i])
		for k := 0; k < len(in[i]); k += 4 {
			seed = seed*1664525 + 1013904223
			binary.LittleEndian.PutUint32(in[i][k:], math.Float32bits(float32(seed>>8)/float32(1<<24)*2-1))
		}
		g.Inputs = append(g.Inputs, manifest.Data{Name: info.Name, DataType: string(info.DataType), Shape: info.Shape, Data: in[i]})
	}
	out := make([][]byte, len(m.Outputs()))
	for i, n := range m.OutputSizes() {
		out[i] = make([]byte, n)
	}
	require.NoError(t, m.Invoke(context.Background(), in, out))
	for i, info := range m.Outputs() {
		g.Outputs = append(g.Outputs, manifest.Data{Name: info.Name, DataType: string(info.DataType), Shape: info.Shape, Data: out[i]})
	}
	goldenCache[file] = []manifest.Golden{g}
	return goldenCache[file]
}

// release signs m with a fresh serial.
func (f *testFleet) release(t testing.TB, m manifest.Manifest, expires time.Duration) []byte {
	t.Helper()
	b, err := trust.SignRelease(trust.Release{Serial: f.serial.Add(1), Expires: time.Now().Add(expires), Model: m}, f.targetsKey)
	require.NoError(t, err)
	return b
}

const (
	testFleetName = "test"
	testDevice    = "dev1"
	testChunk     = 16 << 10
)

// command signs c for the test device as the controller would.
func (f *testFleet) command(t testing.TB, c protocol.Command) []byte {
	t.Helper()
	c.Fleet, c.Device = testFleetName, testDevice
	if c.Issued.IsZero() {
		c.Issued = time.Now().Add(-time.Second)
	}
	if c.Expires.IsZero() {
		c.Expires = time.Now().Add(time.Hour)
	}
	b, err := protocol.SignCommand(&c, [][]byte{f.root.Raw}, f.targetsKey)
	require.NoError(t, err)
	return b
}

func (f *testFleet) installCmd(t testing.TB, id, rollout string, m manifest.Manifest, release []byte) protocol.Command {
	if release == nil {
		release = f.release(t, m, time.Hour)
	}
	return protocol.Command{ID: id, Kind: protocol.CommandInstall, RolloutID: rollout, Install: &protocol.Install{
		Model: m.Name, Version: m.Version, Release: release,
		Artifact: protocol.Artifact{SHA256: m.SHA256, Length: m.Length, ChunkSize: testChunk, Chunks: protocol.ChunkCount(m.Length, testChunk)}}}
}

// install is a signed install command for m.
func (f *testFleet) install(t testing.TB, id, rollout string, m manifest.Manifest) []byte {
	return f.command(t, f.installCmd(t, id, rollout, m, nil))
}

func (f *testFleet) rollback(t testing.TB, id, rollout, model string, version int64) []byte {
	return f.command(t, protocol.Command{ID: id, Kind: protocol.CommandRollback, RolloutID: rollout,
		Rollback: &protocol.Rollback{Model: model, Version: version, Reason: "gate failed"}})
}

func (f *testFleet) abort(t testing.TB, id, rollout string) []byte {
	return f.command(t, protocol.Command{ID: id, Kind: protocol.CommandAbort, RolloutID: rollout, Abort: &protocol.Abort{Reason: "operator"}})
}

// memSource serves artifacts from memory on the ChunkSource contract: a
// request is answered from a goroutine, chunks dropped when the channel is
// full. drop, if set, decides to lose a chunk (a flaky link).
type memSource struct {
	mu        sync.Mutex // guards arts, requested
	arts      map[string][]byte
	requested int64 // chunk bytes asked for
	firsts    []int // First of every request
	ch        chan Chunk
	blocked   atomic.Bool // the link is down: chunks are lost
	flaky     atomic.Bool // every fifth chunk sent is lost, every seventh corrupted
	sent      atomic.Int64
	// limit, when positive, is the first chunk index never sent: the
	// transfer stalls there.
	limit atomic.Int64
	wg    sync.WaitGroup
}

func newMemSource(arts ...[]byte) *memSource {
	s := &memSource{arts: map[string][]byte{}, ch: make(chan Chunk, 16)}
	for _, a := range arts {
		s.add(a)
	}
	return s
}

func (s *memSource) add(a []byte) {
	sum := sha256.Sum256(a)
	s.mu.Lock()
	s.arts[hex.EncodeToString(sum[:])] = a
	s.mu.Unlock()
}

func (s *memSource) Chunks() <-chan Chunk { return s.ch }

func (s *memSource) Request(ctx context.Context, r ChunkRequest) error {
	s.mu.Lock()
	a := s.arts[r.Artifact]
	s.mu.Unlock()
	if a == nil {
		return fmt.Errorf("no artifact %s", r.Artifact)
	}
	s.mu.Lock()
	s.firsts = append(s.firsts, r.First)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for i := r.First; i < r.First+r.Count; i++ {
			lo := i * r.ChunkSize
			if lo >= len(a) || s.limit.Load() > 0 && int64(i) >= s.limit.Load() {
				return
			}
			d := a[lo:min(lo+r.ChunkSize, len(a))]
			s.mu.Lock()
			s.requested += int64(len(d))
			s.mu.Unlock()
			n := s.sent.Add(1)
			if s.blocked.Load() || s.flaky.Load() && n%5 == 1 {
				continue
			}
			c := Chunk{Artifact: r.Artifact, Index: i, Hash: sha256.Sum256(d), Data: d}
			if s.flaky.Load() && n%7 == 2 {
				c.Data = append([]byte{d[0] ^ 1}, d[1:]...)
			}
			select {
			case s.ch <- c:
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return nil
}

// device is one agent's updater with its real store, registry and runtime.
type device struct {
	dir     string
	store   *store.Store
	reg     *serving.Registry
	traffic *TrafficCounter
	u       *Updater
	cancel  context.CancelFunc
	done    chan error
}

func runtimeForTests() Runtime {
	return RuntimeFunc(func(b []byte) (Model, error) {
		m, err := runtime.Load(b, runtime.Options{Workers: 1})
		if err != nil {
			return nil, err
		}
		return m, nil
	})
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("OUTPOST_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newDevice opens (or reopens) a device in dir; mod adjusts the options.
func newDevice(t testing.TB, dir string, f *testFleet, src ChunkSource, mod func(*Options)) *device {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, "store"), store.Options{})
	require.NoError(t, err)
	d := &device{dir: dir, store: st, reg: serving.New(serving.Options{Runtime: runtime.Options{Workers: 2}}), traffic: NewTrafficCounter()}
	// The daemon serves what the store holds when it starts.
	if names, err := st.Names(); err == nil {
		for _, n := range names {
			data, e, err := st.Load(n)
			require.NoError(t, err)
			_, err = d.reg.Load(context.Background(), n, e.Manifest.Version, data, "store")
			require.NoError(t, err)
		}
	}
	opts := Options{DataDir: dir, Fleet: testFleetName, Device: testDevice, Store: st, RootPath: f.rootPath, Source: src,
		Activator: ActivatorFunc(func(ctx context.Context, name string, v int64, data []byte) error {
			_, err := d.reg.Load(ctx, name, v, data, "updater")
			return err
		}),
		Runtime: runtimeForTests(), Trials: serving.Trials{Registry: d.reg}, Traffic: d.traffic, AgentVersion: "1.0.0",
		// Without traffic probation ends at its maximum, unverified.
		Probation: 300 * time.Millisecond, ProbationMax: 300 * time.Millisecond, MinRequests: 5,
		ChunkTimeout: time.Second, Logger: testLogger(t)}
	if mod != nil {
		mod(&opts)
	}
	d.u, err = New(opts)
	require.NoError(t, err)
	return d
}

func (d *device) start(t testing.TB) {
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.done = make(chan error, 1)
	go func() { d.done <- d.u.Run(ctx) }()
	t.Cleanup(func() { d.stop(t) })
}

func (d *device) stop(t testing.TB) {
	if d.cancel == nil {
		return
	}
	d.cancel()
	select {
	case err := <-d.done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("updater did not stop")
	}
	d.cancel = nil
	d.u.Close()
	d.reg.Close()
}

// waitJob waits until the job of command id is in a terminal state.
func (d *device) waitJob(t testing.TB, id string) *Job {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		j, err := d.u.Job()
		require.NoError(t, err)
		if j != nil && j.CommandID == id && j.State.Terminal() {
			return j
		}
		time.Sleep(20 * time.Millisecond)
	}
	j, _ := d.u.Job()
	if j != nil {
		t.Fatalf("job %s did not finish: job %s is %s (%s)", id, j.CommandID, j.State, j.Error)
	}
	t.Fatalf("job %s did not finish: no job", id)
	return nil
}

// serving returns the version the registry serves for name.
func (d *device) serving(t testing.TB, name string) int64 {
	e, err := d.reg.Lookup(name, 0)
	require.NoError(t, err)
	return e.Version
}

// load runs requests against name until stop is closed, sizing inputs for
// whichever version serves (fixed: only for the version serving at start),
// and feeds the traffic counter as the daemon's API observer would.
func (d *device) load(name string, fixed bool, stop <-chan struct{}) (wait func() (ok, failed int64)) {
	var okN, failN atomic.Int64
	var wg sync.WaitGroup
	var sizes []int
	if fixed {
		e, _ := d.reg.Lookup(name, 0)
		for _, in := range e.Inputs {
			n, _ := in.ByteSize()
			sizes = append(sizes, n)
		}
	}
	for range 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				e, _, err := d.reg.Infer(context.Background(), name, 0, func(e catalog.Entry) ([][]byte, error) {
					in := make([][]byte, len(e.Inputs))
					for i, info := range e.Inputs {
						n, _ := info.ByteSize()
						if fixed && i < len(sizes) {
							n = sizes[i]
						}
						in[i] = make([]byte, n)
					}
					return in, nil
				}, func(int, []byte) error { return nil })
				d.traffic.Observe(name, e.Version, err != nil, time.Since(start))
				if err != nil {
					failN.Add(1)
				} else {
					okN.Add(1)
				}
			}
		}()
	}
	return func() (int64, int64) { wg.Wait(); return okN.Load(), failN.Load() }
}
