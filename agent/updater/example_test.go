//go:build cgo

package updater_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/agent/runtime"
	"github.com/outpost-edge/outpost/agent/serving"
	"github.com/outpost-edge/outpost/agent/store"
	"github.com/outpost-edge/outpost/agent/telemetry"
	"github.com/outpost-edge/outpost/agent/updater"
	"github.com/outpost-edge/outpost/agent/version"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/prometheus/client_golang/prometheus"
)

// Example shows how the daemon wires the updater: the store it installs
// into, the serving registry it swaps models in, the runtime it validates
// with, the API's traffic for probation, the telemetry queue, and the MQTT
// connection the telemetry uplink owns (its OnConnect subscribes the link).
func Example() {
	ctx := context.Background()
	log := slog.Default()
	dataDir := "/var/lib/outpost"
	fleet, device := "acme", "gw-1"

	st, err := store.Open(filepath.Join(dataDir, "store"), store.Options{Logger: log})
	if err != nil {
		return
	}
	reg := serving.New(serving.Options{Logger: log})
	q, err := telemetry.New(telemetry.Options{Path: filepath.Join(dataDir, "telemetry.db"), Logger: log})
	if err != nil {
		return
	}
	// The API observer calls traffic.Observe(e.Name, e.Version, code >= 500, latency)
	// for every answered inference request.
	traffic := updater.NewTrafficCounter()

	conn, err := fleetlink.New(fleetlink.Options{Broker: "tcp://127.0.0.1:1883", Fleet: fleet, Device: device, Logger: log})
	if err != nil {
		return
	}
	var u *updater.Updater
	link, err := updater.NewLink(updater.LinkOptions{Conn: conn, Fleet: fleet, Device: device, Logger: log,
		Status: func() protocol.Status {
			s := protocol.Status{Protocol: protocol.Version, Device: device, AgentVersion: version.Version,
				Health: protocol.HealthSummary{Status: protocol.HealthOK}, Update: u.UpdateStatus(), Time: time.Now()}
			for _, e := range reg.List() {
				ms := protocol.ModelStatus{Name: e.Name, Version: e.Version, Digest: e.Digest}
				if p, err := st.Previous(e.Name); err == nil {
					ms.Previous = p.Manifest.Version
				}
				s.Models = append(s.Models, ms)
			}
			return s
		}})
	if err != nil {
		return
	}
	rtOpts := runtime.Options{Workers: 1}
	u, err = updater.New(updater.Options{
		DataDir: dataDir, Store: st, RootPath: filepath.Join(dataDir, "root.json"),
		Fleet: fleet, Device: device, AgentVersion: version.Version,
		Source: link, Reporter: link, Telemetry: q, Traffic: traffic,
		Activator: updater.ActivatorFunc(func(ctx context.Context, name string, v int64, data []byte) error {
			_, err := reg.Load(ctx, name, v, data, "updater")
			return err
		}),
		Runtime: updater.RuntimeFunc(func(data []byte) (updater.Model, error) {
			m, err := runtime.Load(data, rtOpts)
			if err != nil {
				return nil, err
			}
			return m, nil
		}),
		Probation: time.Minute, Logger: log,
	})
	if err != nil {
		return
	}
	defer u.Close()
	link.SetCommandHandler(u.HandleCommand)
	prometheus.NewRegistry().MustRegister(u.Collector())

	go q.Run(ctx)
	go conn.Run(ctx)
	go u.Run(ctx)
}
