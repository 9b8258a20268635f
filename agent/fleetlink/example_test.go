package fleetlink_test

import (
	"context"
	"fmt"
	"os"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/outpost-edge/outpost/agent/fleetlink"
	"github.com/outpost-edge/outpost/internal/freeport"
	"github.com/outpost-edge/outpost/internal/testbroker"
)

// broker is the embedded broker the example runs against, on a free
// loopback port; the fleet controller's side of the example publishes
// through its inline client.
var (
	broker    *mochi.Server
	brokerURL string
)

func TestMain(m *testing.M) {
	addr, err := freeport.Addr()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv, stop, err := testbroker.Serve(addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	broker, brokerURL = srv, "tcp://"+addr
	code := m.Run()
	stop()
	os.Exit(code)
}

// The daemon builds the link once, lets the updater register its handlers
// before Run, and hands the link to telemetry and the updater, which publish
// through it.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	link, err := fleetlink.New(fleetlink.Options{Broker: brokerURL, Fleet: "acme", Device: "gw-01"})
	if err != nil {
		fmt.Println(err)
		return
	}
	// Before Run: commands the broker queued for the session arrive right
	// after CONNACK.
	cmds := make(chan string, 1)
	if err := link.Handle(link.Topics().Cmd, 1, func(p []byte) { cmds <- string(p) }); err != nil {
		fmt.Println(err)
		return
	}
	done := make(chan error, 1)
	go func() { done <- link.Run(ctx) }()

	if err := link.WaitUp(ctx); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("connected as", link.ClientID())
	if err := link.Publish(ctx, link.Topics().Ack, false, []byte(`{"state":"idle"}`)); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("ack acknowledged by the broker")

	// The controller's side sends a command.
	if err := broker.Publish(link.Topics().Cmd, []byte("hello"), false, 1); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("command:", <-cmds)

	cancel()
	fmt.Println("stopped:", <-done)
	// Output:
	// connected as gw-01
	// ack acknowledged by the broker
	// command: hello
	// stopped: <nil>
}
