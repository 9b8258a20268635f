package fleetlink_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
)

// refuser lets every client connect and publish, and refuses subscriptions
// to the filters containing deny's value (none while it is empty), as a
// broker's ACL or a broker out of resources does: SUBACK code 0x80.
type refuser struct {
	mochi.HookBase
	deny atomic.Value // string
}

func (*refuser) ID() string { return "refuser" }

func (*refuser) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (*refuser) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (r *refuser) OnACLCheck(_ *mochi.Client, topic string, write bool) bool {
	d, _ := r.deny.Load().(string)
	return write || d == "" || !strings.Contains(topic, d)
}

// TestRefusedSubscription: a subscription the broker refuses fails the
// connection (the link would otherwise sit deaf to its commands while
// saying it is online): no "online" state, the link not up, until the broker
// grants it; then the link connects and a command reaches the handler.
func TestRefusedSubscription(t *testing.T) {
	addr := testbroker.FreeAddr(t)
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	hook := new(refuser)
	hook.deny.Store("/cmd")
	require.NoError(t, srv.AddHook(hook, nil))
	require.NoError(t, srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})))
	require.NoError(t, srv.Serve())
	t.Cleanup(func() { srv.Close() })

	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("acme", dev)
	require.NoError(t, err)
	l, err := fleetlink.New(fleetlink.Options{Broker: "tcp://" + addr, Fleet: "acme", Device: dev,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	require.NoError(t, err)
	got := make(chan string, 1)
	require.NoError(t, l.Handle(topics.Cmd, 1, func(p []byte) {
		select {
		case got <- string(p):
		default:
		}
	}))
	states := make(chan string, 64)
	w := watcher(t, "tcp://"+addr, dev+"-ctl")
	require.True(t, w.Subscribe(topics.State, 1, func(_ mqtt.Client, m mqtt.Message) { states <- string(m.Payload()) }).WaitTimeout(5*time.Second))
	run(t, l)

	// Several attempts are refused (backoff at most 100 ms).
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	require.Error(t, l.WaitUp(ctx), "the link came up with its command subscription refused")
	for len(states) > 0 {
		// "offline" is the truth (the will of a dropped attempt); "online" a lie.
		require.NotEqual(t, protocol.StateOnline, <-states, "online while the command subscription was refused")
	}

	hook.deny.Store("")
	waitUp(t, l)
	for online := false; !online; {
		select {
		case s := <-states:
			online = s == protocol.StateOnline
		case <-time.After(10 * time.Second):
			t.Fatal("no online state after the subscription was granted")
		}
	}
	tok := w.Publish(topics.Cmd, 1, false, "cmd-1")
	require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil)
	select {
	case c := <-got:
		require.Equal(t, "cmd-1", c)
	case <-time.After(10 * time.Second):
		t.Fatal("the command did not reach the handler once the subscription was granted")
	}
}

// loginRefuser refuses every CONNECT while refuse is set and records the
// protocol version of each.
type loginRefuser struct {
	mochi.HookBase
	refuse   atomic.Bool
	mu       sync.Mutex
	versions []byte
}

func (*loginRefuser) ID() string { return "login-refuser" }

func (*loginRefuser) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (r *loginRefuser) OnConnectAuthenticate(_ *mochi.Client, pk packets.Packet) bool {
	r.mu.Lock()
	r.versions = append(r.versions, pk.ProtocolVersion)
	r.mu.Unlock()
	return !r.refuse.Load()
}

func (*loginRefuser) OnACLCheck(*mochi.Client, string, bool) bool { return true }

func (r *loginRefuser) seen() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]byte(nil), r.versions...)
}

// TestRefusedLogin: a refused CONNECT is one login attempt in MQTT 3.1.1,
// not a second one in MQTT 3.1 (paho's fallback when no version is set),
// which would double the logins a refusing broker gets and, on brokers
// without 3.1, hide the broker's reason; the link comes up once the broker
// accepts it.
func TestRefusedLogin(t *testing.T) {
	addr := testbroker.FreeAddr(t)
	srv := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	hook := new(loginRefuser)
	hook.refuse.Store(true)
	require.NoError(t, srv.AddHook(hook, nil))
	require.NoError(t, srv.AddListener(listeners.NewTCP(listeners.Config{ID: "t", Address: addr})))
	require.NoError(t, srv.Serve())
	t.Cleanup(func() { srv.Close() })

	l, err := fleetlink.New(fleetlink.Options{Broker: "tcp://" + addr, Fleet: "acme", Device: deviceName(t),
		BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond})
	require.NoError(t, err)
	run(t, l)
	require.Eventually(t, func() bool { return len(hook.seen()) >= 3 }, 10*time.Second, 10*time.Millisecond,
		"fewer than 3 login attempts in 10 s")
	for i, v := range hook.seen() {
		require.Equal(t, byte(4), v, "attempt %d of %v was not MQTT 3.1.1", i, hook.seen())
	}
	hook.refuse.Store(false)
	waitUp(t, l)
}
