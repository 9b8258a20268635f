package fleetlink_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/internal/testbroker"
	"github.com/outpost-edge/outpost/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func deviceName(t *testing.T) string {
	return strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
}

// run starts l and stops it when the test ends (or when the returned stop
// is called), checking Run's result.
func run(t *testing.T, l *fleetlink.Link) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: got %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitUp(t *testing.T, l *fleetlink.Link) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, l.WaitUp(ctx), "the link did not come up")
}

// watcher is a plain paho client on the broker, the fleet's side.
func watcher(t *testing.T, url, id string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(id))
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "connect: %v", tok.Error())
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func TestNewOptions(t *testing.T) {
	tests := []struct {
		name string
		o    fleetlink.Options
		want error
	}{
		{"no broker", fleetlink.Options{Fleet: "f", Device: "d"}, fleetlink.ErrOptions},
		{"no device", fleetlink.Options{Broker: "tcp://127.0.0.1:1", Fleet: "f"}, fleetlink.ErrOptions},
		{"bad device", fleetlink.Options{Broker: "tcp://127.0.0.1:1", Fleet: "f", Device: "a/b"}, protocol.ErrBadTopicSegment},
		{"good", fleetlink.Options{Broker: "tcp://127.0.0.1:1", Fleet: "f", Device: "d"}, nil},
		{"brokers only", fleetlink.Options{Brokers: []string{"tcp://127.0.0.1:1", "ssl://127.0.0.1:2"}, Fleet: "f", Device: "d"}, nil},
		{"bad scheme in brokers", fleetlink.Options{Broker: "tcp://127.0.0.1:1", Brokers: []string{"127.0.0.1:2"}, Fleet: "f", Device: "d"}, fleetlink.ErrOptions},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := fleetlink.New(tt.o)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("got error %v, want %v", err, tt.want)
			}
			if err == nil {
				assert.Equal(t, "outpost/v1/f/d/events", l.Topics().Events)
				assert.Equal(t, "d", l.ClientID(), "the client id is the device id")
				assert.False(t, l.Connected())
			}
		})
	}
}

// TestPublishWithoutConnection: Publish before any connection says
// ErrNotConnected, and WaitUp gives up with its context.
func TestPublishWithoutConnection(t *testing.T) {
	l, err := fleetlink.New(fleetlink.Options{Broker: "tcp://127.0.0.1:1", Fleet: "f", Device: "d"})
	require.NoError(t, err)
	err = l.Publish(context.Background(), l.Topics().Events, false, []byte("x"))
	assert.ErrorIs(t, err, fleetlink.ErrNotConnected)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	assert.ErrorIs(t, l.WaitUp(ctx), context.Canceled)
}

// TestClientIDIsDeviceID: the broker sees the bare device id, not
// <fleet>/<device>, and the same one after a restart of the link.
func TestClientIDIsDeviceID(t *testing.T) {
	addr := testbroker.FreeAddr(t)
	srv, _ := testbroker.Start(t, addr)
	dev := deviceName(t)
	for range 2 {
		l, err := fleetlink.New(fleetlink.Options{Broker: "tcp://" + addr, Fleet: "acme", Device: dev})
		require.NoError(t, err)
		stop := run(t, l)
		waitUp(t, l)
		cl, ok := srv.Clients.Get(dev)
		require.True(t, ok, "no client %q at the broker", dev)
		assert.False(t, cl.Properties.Clean, "the session must be persistent")
		stop()
	}
}

// TestHandleAfterRun: a handler added once Run started would miss what the
// broker delivers right after CONNACK, so Handle refuses it. QoS 2, which
// Outpost does not use, is refused at once.
func TestHandleAfterRun(t *testing.T) {
	addr := testbroker.FreeAddr(t)
	testbroker.Start(t, addr)
	l, err := fleetlink.New(fleetlink.Options{Broker: "tcp://" + addr, Fleet: "acme", Device: deviceName(t)})
	require.NoError(t, err)
	assert.ErrorContains(t, l.Handle(l.Topics().Cmd, 2, func([]byte) {}), "QoS 2 (0 or 1)")
	run(t, l)
	waitUp(t, l)
	assert.ErrorIs(t, l.Handle(l.Topics().Cmd, 1, func([]byte) {}), fleetlink.ErrStarted)
}

// TestQueuedCommandReachesHandler: a command the broker queued for the
// persistent session while the device was away reaches the handler after
// the next connection, though it arrives right after CONNACK, before the
// link subscribes. Real Mosquitto, restarted in between to show the
// session (and its queue) outlive the broker too. Chunks, subscribed at
// protocol.ChunkQoS (0), are not queued for the session, even those
// published at QoS 1: after the reconnection the first chunk that arrives
// is one published since.
func TestQueuedCommandReachesHandler(t *testing.T) {
	b := testbroker.StartMosquitto(t, "")
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("acme", dev)
	require.NoError(t, err)

	got, chunks := make(chan string, 1024), make(chan string, 1024)
	start := func() (stop func()) {
		l, err := fleetlink.New(fleetlink.Options{Broker: b.URL(), Fleet: "acme", Device: dev,
			BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, l.Handle(topics.Cmd, 1, func(p []byte) { got <- string(p) }))
		require.NoError(t, l.Handle(topics.Chunk, protocol.ChunkQoS, func(p []byte) { chunks <- string(p) }))
		stop = run(t, l)
		waitUp(t, l)
		return stop
	}
	start()() // subscribes once, so the session holds the subscription

	b.Stop()
	b.Start()
	ctl := watcher(t, b.URL(), dev+"-ctl")
	// Many, so some are surely on the wire before a SUBSCRIBE could be.
	const n = 300
	for i := range n {
		tok := ctl.Publish(topics.Cmd, 1, false, fmt.Sprintf("cmd-%d", i))
		require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "publish: %v", tok.Error())
		for _, qos := range []byte{0, 1} {
			tok := ctl.Publish(topics.Chunk, qos, false, fmt.Sprintf("stale-chunk-%d-qos%d", i, qos))
			require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "publish: %v", tok.Error())
		}
	}

	start()
	seen := map[string]bool{}
	timeout := time.After(20 * time.Second)
	for len(seen) < n {
		select {
		case cmd := <-got:
			seen[cmd] = true
		case <-timeout:
			t.Fatalf("%d of %d queued commands reached the handler", len(seen), n)
		}
	}
	for i := range n {
		assert.True(t, seen[fmt.Sprintf("cmd-%d", i)], "cmd-%d", i)
	}
	tok := ctl.Publish(topics.Chunk, 1, false, "live-chunk")
	require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "publish: %v", tok.Error())
	select {
	case c := <-chunks:
		assert.Equal(t, "live-chunk", c, "a chunk published while the device was away was queued for its session")
	case <-time.After(10 * time.Second):
		t.Fatal("the chunk published while connected did not arrive")
	}
}

// TestCleanSessionQueuesNothing: with CleanSession a command published while
// the device is away is not kept for it (docs/PROTOCOL.md, Transport: the
// controller sends it again once the device is back online); one published
// after it is back arrives. A queued command would come first, right after
// CONNACK.
func TestCleanSessionQueuesNothing(t *testing.T) {
	b := testbroker.StartMosquitto(t, "")
	dev := deviceName(t)
	topics, err := protocol.DeviceTopics("acme", dev)
	require.NoError(t, err)
	got := make(chan string, 16)
	start := func() (stop func()) {
		l, err := fleetlink.New(fleetlink.Options{Broker: b.URL(), Fleet: "acme", Device: dev, CleanSession: true,
			BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
		require.NoError(t, err)
		require.NoError(t, l.Handle(topics.Cmd, 1, func(p []byte) { got <- string(p) }))
		stop = run(t, l)
		waitUp(t, l)
		return stop
	}
	start()()
	ctl := watcher(t, b.URL(), dev+"-ctl")
	tok := ctl.Publish(topics.Cmd, 1, false, "sent-while-away")
	require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "publish: %v", tok.Error())
	start()
	tok = ctl.Publish(topics.Cmd, 1, false, "sent-while-back")
	require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "publish: %v", tok.Error())
	select {
	case c := <-got:
		assert.Equal(t, "sent-while-back", c, "a command published while the clean-session device was away reached it")
	case <-time.After(10 * time.Second):
		t.Fatal("the command published after the device came back did not arrive")
	}
}

// TestStateAndResubscribe: "online" (retained) on the state topic while
// connected; after the broker restarts without its sessions the link comes
// back, subscribes again and gets new commands; "offline" after a clean stop.
func TestStateAndResubscribe(t *testing.T) {
	addr := testbroker.FreeAddr(t)
	srv, stopBroker := testbroker.Start(t, addr)
	dev := deviceName(t)
	l, err := fleetlink.New(fleetlink.Options{Broker: "tcp://" + addr, Fleet: "acme", Device: dev,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond})
	require.NoError(t, err)
	got := make(chan string, 16)
	require.NoError(t, l.Handle(l.Topics().Cmd, 1, func(p []byte) { got <- string(p) }))
	stop := run(t, l)
	waitUp(t, l)

	state := func(srv interface {
		Publish(string, []byte, bool, byte) error
	}) string {
		st := watcher(t, "tcp://"+addr, dev+"-state-"+time.Now().Format("150405.000000000"))
		c := make(chan string, 4)
		tok := st.Subscribe(l.Topics().State, 1, func(_ mqtt.Client, m mqtt.Message) { c <- string(m.Payload()) })
		require.True(t, tok.WaitTimeout(5*time.Second) && tok.Error() == nil, "subscribe: %v", tok.Error())
		select {
		case s := <-c:
			st.Disconnect(0)
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("no retained state")
			return ""
		}
	}
	assert.Equal(t, protocol.StateOnline, state(srv))

	up := l.Up()
	stopBroker()
	srv, _ = testbroker.Start(t, addr)
	select {
	case <-up:
	case <-time.After(20 * time.Second):
		t.Fatal("the link did not come back after the broker restarted")
	}
	require.NoError(t, srv.Publish(l.Topics().Cmd, []byte("after restart"), false, 1))
	select {
	case cmd := <-got:
		assert.Equal(t, "after restart", cmd)
	case <-time.After(10 * time.Second):
		t.Fatal("no command after the restart: not subscribed again")
	}
	require.NoError(t, l.Publish(context.Background(), l.Topics().Ack, false, []byte("{}")))

	stop()
	assert.Equal(t, protocol.StateOffline, state(srv))
	assert.ErrorIs(t, l.Publish(context.Background(), l.Topics().Ack, false, nil), fleetlink.ErrNotConnected)
}

// TestFailover: with a list of brokers the link connects to the first that
// answers, without waiting its backoff between the brokers of one round
// (the backoff here is far longer than the test's waits); when that broker
// goes away it fails over to another of the list, subscribes there and
// publishes, and Broker says where it is.
func TestFailover(t *testing.T) {
	a, b := testbroker.FreeAddr(t), testbroker.FreeAddr(t)
	srvB, stopB := testbroker.Start(t, b) // a is down
	dev := deviceName(t)
	l, err := fleetlink.New(fleetlink.Options{Brokers: []string{"tcp://" + a, "tcp://" + b}, Fleet: "acme", Device: dev,
		BackoffMin: time.Minute, BackoffMax: time.Minute})
	require.NoError(t, err)
	got := make(chan string, 16)
	require.NoError(t, l.Handle(l.Topics().Cmd, 1, func(p []byte) { got <- string(p) }))
	run(t, l)
	waitUp(t, l)
	assert.Equal(t, "tcp://"+b, l.Broker())
	require.NoError(t, srvB.Publish(l.Topics().Cmd, []byte("on b"), false, 1))
	select {
	case cmd := <-got:
		assert.Equal(t, "on b", cmd)
	case <-time.After(10 * time.Second):
		t.Fatal("no command on b")
	}

	// b dies and a comes up: after one backoff (a minute here, so a
	// shorter link is made for this half) the link is on a.
	l2, err := fleetlink.New(fleetlink.Options{Brokers: []string{"tcp://" + b, "tcp://" + a}, Fleet: "acme", Device: dev + "-2",
		BackoffMin: 20 * time.Millisecond, BackoffMax: 40 * time.Millisecond})
	require.NoError(t, err)
	got2 := make(chan string, 16)
	require.NoError(t, l2.Handle(l2.Topics().Cmd, 1, func(p []byte) { got2 <- string(p) }))
	run(t, l2)
	waitUp(t, l2)
	assert.Equal(t, "tcp://"+b, l2.Broker())
	up := l2.Up()
	srvA, _ := testbroker.Start(t, a)
	stopB()
	select {
	case <-up:
	case <-time.After(20 * time.Second):
		t.Fatal("the link did not fail over")
	}
	assert.Equal(t, "tcp://"+a, l2.Broker())
	require.NoError(t, srvA.Publish(l2.Topics().Cmd, []byte("on a"), false, 1))
	select {
	case cmd := <-got2:
		assert.Equal(t, "on a", cmd)
	case <-time.After(10 * time.Second):
		t.Fatal("no command on a: not subscribed there")
	}
	require.NoError(t, l2.Publish(context.Background(), l2.Topics().Ack, false, []byte("{}")))
	// The first link lost b too, and after a connection ends it waits its
	// backoff (a minute) before the next round.
	require.Eventually(t, func() bool { return !l.Connected() }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, "", l.Broker())
}
