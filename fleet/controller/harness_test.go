package controller_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/controller"
	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/fleet/simdevice"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/models/trust"
	"github.com/outpost-edge/outpost/protocol"
)

const fleetName = "test"

func logger(t testing.TB) *slog.Logger {
	if os.Getenv("FLEET_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// fleet is a controller under test with its keys.
type fleet struct {
	t      testing.TB
	keys   *keyring.Keyring
	root   *trust.Root
	c      *controller.Controller
	cancel context.CancelFunc
	done   chan error
}

// startFleet runs a controller; opts.Fleet, DataDir, Keys and the listen
// addresses are filled in when empty.
func startFleet(t testing.TB, opts controller.Options) *fleet {
	t.Helper()
	if opts.Keys == "" {
		opts.Keys = filepath.Join(t.TempDir(), "keys")
		if _, err := keyring.Init(opts.Keys, keyring.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	k, err := keyring.Open(opts.Keys, keyring.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if opts.Fleet == "" {
		opts.Fleet = fleetName
	}
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	if opts.Broker == "" && opts.ListenMQTT == "" {
		opts.ListenMQTT = "127.0.0.1:0"
	}
	if opts.Admin == "" {
		opts.Admin = "127.0.0.1:0"
	}
	if opts.Tick == 0 {
		opts.Tick = 100 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = logger(t)
	}
	c, err := controller.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{t: t, keys: k, root: k.Root(), c: c, cancel: cancel, done: make(chan error, 1)}
	go func() { f.done <- c.Run(ctx) }()
	t.Cleanup(f.stop)
	select {
	case <-c.Ready():
	case err := <-f.done:
		f.done <- err
		t.Fatalf("controller stopped: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("controller not ready")
	}
	return f
}

func (f *fleet) stop() {
	f.cancel()
	select {
	case err := <-f.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			f.t.Errorf("controller: %v", err)
		}
		f.done <- err
	case <-time.After(30 * time.Second):
		f.t.Error("controller did not stop")
	}
}

// artifact makes n random bytes and a signed release for them.
func (f *fleet) artifact(name string, version int64, n int) ([]byte, []byte) {
	f.t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	sum := sha256.Sum256(b)
	m := manifest.Manifest{Name: name, Version: version, SHA256: hex.EncodeToString(sum[:]), Length: int64(n), Runtime: manifest.RuntimeTFLite,
		Inputs:  []manifest.Tensor{{Name: "in", DataType: "FP32", Shape: []int{1, 4}}},
		Outputs: []manifest.Tensor{{Name: "out", DataType: "FP32", Shape: []int{1, 2}}}}
	rel, err := f.keys.SignRelease(m, time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	return b, rel
}

// push stores a random model version directly in the registry.
func (f *fleet) push(name string, version int64, n, chunk int) *registry.ModelVersion {
	f.t.Helper()
	b, rel := f.artifact(name, version, n)
	mv, err := f.c.Registry().PutModel(f.root, rel, bytesReader(b), chunk, time.Now())
	if err != nil {
		f.t.Fatal(err)
	}
	return mv
}

// devices runs n simulated devices; tune edits each one's options.
type devices struct {
	mu      sync.Mutex
	agents  map[string]*simdevice.Agent
	cancels map[string]context.CancelFunc
	wg      sync.WaitGroup
	f       *fleet
	broker  string
	tune    func(i int, o *simdevice.Options)
}

func (f *fleet) devices(n int, broker string, tune func(i int, o *simdevice.Options)) *devices {
	ds := &devices{agents: map[string]*simdevice.Agent{}, cancels: map[string]context.CancelFunc{}, f: f, broker: broker, tune: tune}
	if ds.broker == "" {
		ds.broker = f.c.BrokerURL()
	}
	for i := range n {
		ds.start(i)
	}
	f.t.Cleanup(ds.stopAll)
	return ds
}

func devName(i int) string { return fmt.Sprintf("dev-%03d", i) }

// start runs device i (again, after stop: same id, same persistent session,
// but a fresh process state, as after a reboot that kept the store).
func (ds *devices) start(i int) *simdevice.Agent {
	ds.f.t.Helper()
	o := simdevice.Options{Broker: ds.broker, Fleet: fleetName, Device: devName(i), Root: ds.f.root,
		Labels: map[string]string{"site": []string{"north", "south"}[i%2]}, RetryAfter: time.Second}
	ds.mu.Lock()
	if old := ds.agents[o.Device]; old != nil {
		o.Models = old.Models()
	}
	ds.mu.Unlock()
	if ds.tune != nil {
		ds.tune(i, &o)
	}
	a, err := simdevice.New(o)
	if err != nil {
		ds.f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ds.mu.Lock()
	ds.agents[o.Device], ds.cancels[o.Device] = a, cancel
	ds.mu.Unlock()
	ds.wg.Add(1)
	go func() {
		defer ds.wg.Done()
		if err := a.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			ds.f.t.Errorf("%s: %v", o.Device, err)
		}
	}()
	return a
}

// stop takes device i offline (it says so, like a clean shutdown).
func (ds *devices) stop(i int) {
	ds.mu.Lock()
	cancel := ds.cancels[devName(i)]
	ds.mu.Unlock()
	cancel()
}

func (ds *devices) stopAll() {
	ds.mu.Lock()
	for _, c := range ds.cancels {
		c()
	}
	ds.mu.Unlock()
	ds.wg.Wait()
}

func (ds *devices) get(i int) *simdevice.Agent {
	ds.mu.Lock()
	defer ds.mu.Unlock()
	return ds.agents[devName(i)]
}

// eventually polls cond until it holds or the wait (generous, for slow CI
// under -race) runs out.
func eventually(t testing.TB, wait time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(wait)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s: %s", wait, what, last)
}

// waitDevices waits until the controller has seen every device online.
func (f *fleet) waitDevices(n int) {
	f.t.Helper()
	eventually(f.t, 60*time.Second, "devices online", func() (bool, string) {
		ds, err := f.c.Registry().Devices()
		if err != nil {
			return false, err.Error()
		}
		on := 0
		for _, d := range ds {
			if d.Online && !d.StatusTime.IsZero() {
				on++
			}
		}
		return on >= n, fmt.Sprintf("%d of %d online", on, n)
	})
}

// waitRollout waits for a rollout to reach state.
func (f *fleet) waitRollout(id string, state registry.RolloutState, wait time.Duration) {
	f.t.Helper()
	whileProgress(f.t, wait, "rollout "+string(state), func() (bool, string) {
		rep, err := f.c.Engine().Status(id)
		if err != nil {
			return false, err.Error()
		}
		return rep.State == state, fmt.Sprintf("state %s wave %d %+v, %d bytes moved", rep.State, rep.Wave, rep.Waves, rep.BytesMoved)
	})
}

// whileProgress waits for cond like eventually, as long as the rollout
// moves: it fails when cond's message (the progress it reports) stayed the
// same for stall, or after 4 stalls in all. A loaded machine (make
// test-stress) slows a rollout down without stopping it; a fixed budget
// fails those runs, a stall limit only the stuck ones.
func whileProgress(t testing.TB, stall time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	start, changed, last := time.Now(), time.Now(), ""
	for {
		ok, msg := cond()
		if ok {
			return
		}
		now := time.Now()
		if msg != last {
			last, changed = msg, now
		}
		if now.Sub(changed) > stall || now.Sub(start) > 4*stall {
			t.Fatalf("waiting for %s: no progress for %s (%s in all): %s", what, now.Sub(changed).Round(time.Millisecond), now.Sub(start).Round(time.Millisecond), last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitSteps waits until the rollout engine has completed n more passes.
func (f *fleet) waitSteps(n uint64) {
	f.t.Helper()
	from := f.c.Engine().Steps()
	eventually(f.t, 30*time.Second, fmt.Sprintf("%d rollout steps", n), func() (bool, string) {
		got := f.c.Engine().Steps() - from
		return got >= n, fmt.Sprintf("%d steps", got)
	})
}

// checkEvidence checks every gate decision of a rollout that passed or
// completed a wave: each had the successes it needed, at least one, so no
// wave passed on silence.
func checkEvidence(t testing.TB, f *fleet, id string) {
	t.Helper()
	r, err := f.c.Registry().Rollout(id)
	if err != nil {
		t.Fatal(err)
	}
	passed := 0
	for _, d := range r.Decisions {
		if d.Action != "passed" && d.Action != "completed" {
			continue
		}
		passed++
		if d.Needed < 1 && d.Devices > 0 || d.Successes < d.Needed {
			t.Errorf("wave %d %s on %d of %d needed successes (%d devices)", d.Wave+1, d.Action, d.Successes, d.Needed, d.Devices)
		}
	}
	if r.State == registry.RolloutCompleted && passed != len(r.Waves) {
		t.Errorf("completed rollout has %d pass decisions for %d waves: %+v", passed, len(r.Waves), r.Decisions)
	}
}

var _ = protocol.Version

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
