package broker

import (
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// drainListener wraps mochi's TCP listener so that closing it waits for
// every accepted connection's handler to return before mochi waits for its
// clients. mochi counts a client in a WaitGroup only once the handler runs,
// so a connection accepted just before Close could be counted while Close
// already waits: the count is then wrong and the race detector reports it.
// Here a connection is either refused (the listener is closing) or tracked,
// and Close closes the tracked connections that mochi does not know yet
// (still in the MQTT handshake) and waits for all of them.
type drainListener struct {
	*listeners.TCP

	mu      sync.Mutex // guards closing, conns and the wake-ups of idle
	closing bool
	conns   map[net.Conn]struct{}
	idle    *sync.Cond // signalled when conns shrinks
}

func newDrainListener(ln *listeners.TCP) *drainListener {
	d := &drainListener{TCP: ln, conns: map[net.Conn]struct{}{}}
	d.idle = sync.NewCond(&d.mu)
	return d
}

// Serve hands each accepted connection to establish, unless Close began.
func (d *drainListener) Serve(establish listeners.EstablishFn) {
	d.TCP.Serve(func(id string, c net.Conn) error {
		d.mu.Lock()
		if d.closing {
			d.mu.Unlock()
			return c.Close()
		}
		d.conns[c] = struct{}{}
		d.mu.Unlock()
		defer func() {
			d.mu.Lock()
			delete(d.conns, c)
			d.idle.Broadcast()
			d.mu.Unlock()
		}()
		return establish(id, c)
	})
}

// drainWait bounds how long Close waits for the handlers. A handler still
// running after it is left to mochi's own wait, as without this wrapper: the
// wait must never be what holds a shutdown.
const drainWait = 2 * time.Second

// Close stops accepting, lets mochi close the clients it knows (closeClients),
// closes the connections still in their handshake, and returns once every
// handler has returned, or after drainWait.
func (d *drainListener) Close(closeClients listeners.CloseFn) {
	d.mu.Lock()
	d.closing = true
	d.mu.Unlock()
	d.TCP.Close(closeClients)
	d.mu.Lock()
	defer d.mu.Unlock()
	for c := range d.conns {
		c.Close()
	}
	deadline := time.Now().Add(drainWait)
	t := time.AfterFunc(drainWait, func() {
		d.mu.Lock()
		d.idle.Broadcast()
		d.mu.Unlock()
	})
	defer t.Stop()
	for len(d.conns) > 0 && time.Now().Before(deadline) {
		d.idle.Wait()
	}
}
