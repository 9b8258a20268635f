package controller

import (
	"context"
	"sync"
	"time"

	"github.com/outpost-edge/outpost/protocol"
)

// A device's state topic carries "online" from each of its connections and
// "offline" from the broker, the last will, when one ends. MQTT keeps the
// order of one publisher's messages only, and a will speaks for a
// connection the device may already have replaced: a connect attempt it
// gave up on (no CONNACK in time) that the broker accepted after all ends
// with a will, and a subscriber can receive that "offline" after the new
// connection's "online". Mosquitto did so under load (make scale at 10,000
// devices, docs/SCALE.md): its retained state said "online", the
// controller had stored "offline", and would have kept it until the
// device's next connection.
//
// So a live "offline" is checked once against the broker's retained
// state: the controller subscribes to that device's own state topic, which
// makes the broker send its retained message through the usual route (a
// retained message is the broker's current state and is not checked
// again), and unsubscribes at once.

// stateCheckEvery is how often the devices to check are checked, at most
// maxStateChecks of them at a time.
const (
	stateCheckEvery = 2 * time.Second
	maxStateChecks  = 500
)

// stateChecks are the devices whose last "offline" is to be checked.
type stateChecks struct {
	mu      sync.Mutex // guards pending
	pending map[string]bool
}

func (s *stateChecks) add(device string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		s.pending = map[string]bool{}
	}
	s.pending[device] = true
}

// take removes and returns up to n devices.
func (s *stateChecks) take(n int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for d := range s.pending {
		if len(out) == n {
			break
		}
		out = append(out, d)
		delete(s.pending, d)
	}
	return out
}

// checkStates checks the pending devices until ctx is done.
func (c *Controller) checkStates(ctx context.Context) error {
	tick := time.NewTicker(stateCheckEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		for {
			devices := c.states.take(maxStateChecks)
			if len(devices) == 0 {
				break
			}
			if err := c.checkState(ctx, devices); err != nil {
				c.log.Debug("state check", "devices", len(devices), "err", err)
				for _, d := range devices { // on the next connection
					c.states.add(d)
				}
				break
			}
		}
	}
}

// checkState has the broker send the retained state of devices again.
func (c *Controller) checkState(ctx context.Context, devices []string) error {
	c.mu.Lock()
	m := c.conn
	c.mu.Unlock()
	if m == nil {
		return ErrNotConnected
	}
	filters := make(map[string]byte, len(devices))
	topics := make([]string, 0, len(devices))
	for _, d := range devices {
		t, err := protocol.DeviceTopics(c.opts.Fleet, d)
		if err != nil {
			continue
		}
		// QoS 0: the retained message is all it is for, and on NATS a
		// QoS 1 subscription costs a JetStream consumer.
		filters[t.State] = 0
		topics = append(topics, t.State)
	}
	if len(topics) == 0 {
		return nil
	}
	if err := c.wait(ctx, m.client.SubscribeMultiple(filters, nil), ackTimeout, m.lost); err != nil {
		return err
	}
	// The broker queues the retained messages for the session as it takes
	// the subscriptions; they go at once after that (on a persistent
	// session they would deliver every state message twice).
	return c.wait(ctx, m.client.Unsubscribe(topics...), ackTimeout, m.lost)
}
