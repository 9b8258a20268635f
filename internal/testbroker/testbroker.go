// Package testbroker runs MQTT brokers for tests on loopback ports: the
// embedded broker (mochi-mqtt, the one the fleet controller embeds), where
// any client may connect and use any topic and the server's inline client
// lets a test subscribe in process; a real Mosquitto (StartMosquitto); and a
// real NATS cluster with MQTT, one process per node (StartNATSCluster). It
// is imported by tests only.
package testbroker

import (
	"log/slog"
	"sync"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/outpost-edge/outpost/internal/freeport"
)

// allowAll lets every client connect and use every topic.
type allowAll struct{ mochi.HookBase }

func (*allowAll) ID() string { return "allow-all" }

func (*allowAll) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (*allowAll) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (*allowAll) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// FreeAddr returns a loopback address for a server to listen on later
// (internal/freeport: free now, outside the kernel's ephemeral range, never
// the same twice in a process).
func FreeAddr(t testing.TB) string {
	t.Helper()
	a, err := freeport.Addr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Start serves a broker on addr (host:port; see FreeAddr) until the test
// ends or stop is called (stop may be called more than once). Stop it to
// simulate a broker going away; Start again on the same address brings it
// back, with no sessions: they lived in memory.
func Start(t testing.TB, addr string) (srv *mochi.Server, stop func()) {
	t.Helper()
	srv, stop, err := Serve(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return srv, stop
}

// Serve is Start for callers without a testing.TB (a TestMain, for the
// package examples): the caller stops the broker.
func Serve(addr string) (srv *mochi.Server, stop func(), err error) {
	srv = mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	if err := srv.AddHook(new(allowAll), nil); err != nil {
		return nil, nil, err
	}
	if err := srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})); err != nil {
		return nil, nil, err
	}
	if err := srv.Serve(); err != nil {
		return nil, nil, err
	}
	var once sync.Once
	stop = func() { once.Do(func() { srv.Close() }) }
	return srv, stop, nil
}
