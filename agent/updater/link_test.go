package updater

import (
	"context"
	"sync"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLinkAfterEveryConnection: on the embedded broker, after the first
// connection and again after the broker restarted (losing every session),
// the link publishes the retained status and signals Connected, and a
// command sent after the restart reaches the handler: the fleet link
// subscribed again for it.
func TestLinkAfterEveryConnection(t *testing.T) {
	addr := testbroker.FreeAddr(t)
	var mu sync.Mutex // guards statuses
	statuses := 0
	start := func() (*mochi.Server, func()) {
		srv, stop := testbroker.Start(t, addr)
		require.NoError(t, srv.Subscribe("outpost/v1/acme/gw-link/status", 1, func(_ *mochi.Client, _ packets.Subscription, pk packets.Packet) {
			if _, err := protocol.ParseStatus(pk.Payload); err != nil {
				t.Errorf("bad status: %v", err)
				return
			}
			mu.Lock()
			statuses++
			mu.Unlock()
		}))
		return srv, stop
	}
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return statuses
	}
	_, stop := start()

	conn, err := fleetlink.New(fleetlink.Options{Broker: "tcp://" + addr, Fleet: "acme", Device: "gw-link",
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	require.NoError(t, err)
	l, err := NewLink(LinkOptions{Conn: conn, Fleet: "acme", Device: "gw-link", Timeout: 5 * time.Second,
		Status: func() protocol.Status {
			return protocol.Status{Protocol: protocol.Version, Device: "gw-link", AgentVersion: "1.0.0",
				Health: protocol.HealthSummary{Status: protocol.HealthOK}, Time: time.Now()}
		}})
	require.NoError(t, err)
	cmds := make(chan string, 4)
	l.SetCommandHandler(func(p []byte) error { cmds <- string(p); return nil })

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	wg.Go(func() { assert.NoError(t, conn.Run(ctx)) })
	wg.Go(func() { assert.NoError(t, l.Run(ctx)) })

	connected := func(what string) {
		t.Helper()
		select {
		case <-l.Connected():
		case <-time.After(20 * time.Second):
			t.Fatalf("no Connected signal %s", what)
		}
	}
	connected("after the first connection")
	require.Eventually(t, func() bool { return count() >= 1 }, 10*time.Second, 5*time.Millisecond, "no status after the first connection")

	before := count()
	stop()
	srv, _ := start()
	connected("after the broker restarted")
	require.Eventually(t, func() bool { return count() > before }, 10*time.Second, 5*time.Millisecond, "no status after the reconnection")
	require.NoError(t, srv.Publish("outpost/v1/acme/gw-link/cmd", []byte("after restart"), false, 1))
	select {
	case got := <-cmds:
		assert.Equal(t, "after restart", got)
	case <-time.After(10 * time.Second):
		t.Fatal("no command after the restart")
	}
}

// TestNewLinkNeedsConn: the link cannot exist without the connection.
func TestNewLinkNeedsConn(t *testing.T) {
	_, err := NewLink(LinkOptions{Fleet: "acme", Device: "gw"})
	assert.ErrorIs(t, err, ErrOptions)
}
