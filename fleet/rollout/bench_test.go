package rollout

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/outpost-edge/outpost/fleet/keyring"
	"github.com/outpost-edge/outpost/fleet/registry"
	"github.com/outpost-edge/outpost/models/manifest"
	"github.com/outpost-edge/outpost/protocol"
)

// ackingSender stands in for the devices: it keeps every install sent, and
// the benchmark answers them with committed acks through HandleAck, the
// path the controller's ack handler takes.
type ackingSender struct {
	mu   sync.Mutex
	sent []*protocol.Command
}

func (s *ackingSender) Send(_ context.Context, cmd *protocol.Command) error {
	s.mu.Lock()
	s.sent = append(s.sent, cmd)
	s.mu.Unlock()
	return nil
}

func (s *ackingSender) take() []*protocol.Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.sent
	s.sent = nil
	return out
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkEngine: the controller CPU (user and system, this process:
// the engine, its store and the ack path) per device update, one update
// being a device taken from nothing to committed in a rollout of three
// waves (10, 50, 100%) on the embedded store, devices acking every
// install. Flat from 1,000 to 10,000 devices means a pass costs what
// changed, not the fleet. Figures: cpu-ns/device, passes, and the
// reconciliation's cost alone (recon-ns/device, the rare full pass).
func BenchmarkEngine(b *testing.B) {
	for _, n := range []int{1000, 3000, 10000} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) { benchEngine(b, n) })
	}
}

// ackChunk is how many acks arrive between two passes in BenchmarkEngine.
const ackChunk = 50

func benchEngine(b *testing.B, n int) {
	reg, err := registry.Open(b.TempDir(), registry.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	k, err := keyring.Init(b.TempDir(), keyring.Options{})
	if err != nil {
		b.Fatal(err)
	}
	for v := range b.N {
		model := []byte(fmt.Sprintf("model bytes %d", v))
		sum := sha256.Sum256(model)
		m := manifest.Manifest{Name: "face", Version: int64(v + 1), SHA256: hex.EncodeToString(sum[:]), Length: int64(len(model)), Runtime: "tflite",
			Inputs:  []manifest.Tensor{{Name: "i", DataType: "FP32", Shape: []int{1}}},
			Outputs: []manifest.Tensor{{Name: "o", DataType: "FP32", Shape: []int{1}}}}
		rel, err := k.SignRelease(m, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := reg.PutModel(k.Root(), rel, bytes.NewReader(model), 4, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	for i := range n {
		if _, err := reg.UpdateDevice(fmt.Sprintf("gw-%05d", i), func(d *registry.Device) {
			d.Online, d.OnlineSince = true, time.Now()
		}); err != nil {
			b.Fatal(err)
		}
	}
	snd := &ackingSender{}
	eng, err := New(Options{Registry: reg, Sender: snd, Fleet: "acme"})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var cpu, recon time.Duration
	passes := 0
	b.ResetTimer()
	for v := range b.N {
		ro, err := eng.Create(Spec{Model: "face", Version: int64(v + 1), Waves: []int{10, 50, 100}})
		if err != nil {
			b.Fatal(err)
		}
		c0 := cpuTime()
		if err := eng.pass(ctx, true); err != nil { // as Run starts
			b.Fatal(err)
		}
		recon += cpuTime() - c0
		deadline := time.Now().Add(5 * time.Minute)
		var inflight []*protocol.Command
		for {
			// The devices answer in a stream: the engine passes after
			// every ackChunk acks, as it would on its kicks.
			inflight = append(inflight, snd.take()...)
			for _, cmd := range inflight[:min(ackChunk, len(inflight))] {
				eng.HandleAck(cmd.Device, &protocol.Ack{CommandID: cmd.ID, RolloutID: cmd.RolloutID, State: protocol.UpdateCommitted,
					Time: time.Now()})
			}
			inflight = inflight[min(ackChunk, len(inflight)):]
			if err := eng.pass(ctx, false); err != nil {
				b.Fatal(err)
			}
			passes++
			cur, err := reg.Rollout(ro.ID)
			if err != nil {
				b.Fatal(err)
			}
			if cur.State == registry.RolloutCompleted {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("rollout %s not completed after 5 minutes: %s wave %d", ro.ID, cur.State, cur.Wave)
			}
		}
		cpu += cpuTime() - c0
	}
	b.StopTimer()
	updates := float64(n * b.N)
	b.ReportMetric(float64(cpu.Nanoseconds())/updates, "cpu-ns/device")
	b.ReportMetric(float64(recon.Nanoseconds())/updates, "recon-ns/device")
	b.ReportMetric(float64(passes)/float64(b.N), "passes")
}
