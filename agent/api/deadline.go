package api

import (
	"context"
	"sync"
	"time"
)

// requestDeadline is a request's context with the request timeout, whose
// timer starts only when something waits on it: a request that finds an
// interpreter free never waits, and starting and stopping a timer for each
// one was half of the agent's cost of finding the model
// (BenchmarkOverheadPhases: the lookup phase 7-10 µs with it, 3-4 without,
// every cache line it touches being cold after the last invoke).
//
// Done and Err arm it: from then on it is context.WithDeadline of the
// request's context. A call's requestDeadline is reused request after
// request (reset, then release); it is safe for concurrent use between
// the two.
type requestDeadline struct {
	context.Context // the request's
	deadline        time.Time

	once   sync.Once
	armed  context.Context // set by once
	cancel context.CancelFunc
}

// reset makes d parent with a deadline timeout from now.
func (d *requestDeadline) reset(parent context.Context, timeout time.Duration) {
	*d = requestDeadline{Context: parent, deadline: time.Now().Add(timeout)}
}

func (d *requestDeadline) arm() {
	d.once.Do(func() { d.armed, d.cancel = context.WithDeadline(d.Context, d.deadline) })
}

// Deadline is the earlier of the timeout and the request's own.
func (d *requestDeadline) Deadline() (time.Time, bool) {
	if p, ok := d.Context.Deadline(); ok && p.Before(d.deadline) {
		return p, true
	}
	return d.deadline, true
}

func (d *requestDeadline) Done() <-chan struct{} {
	d.arm()
	return d.armed.Done()
}

func (d *requestDeadline) Err() error {
	d.arm()
	return d.armed.Err()
}

// release ends the request: a timer armed is stopped, and one not armed
// never will be (Done and Err then report the request over).
func (d *requestDeadline) release() {
	d.once.Do(func() { d.armed = released })
	if d.cancel != nil {
		d.cancel()
	}
}

// released is what a requestDeadline released before it was armed answers.
var released = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()
