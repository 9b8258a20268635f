package runtime

import (
	"errors"
	"sync"
	"sync/atomic"
)

// Slot holds the model currently serving under one name, with a caller's tag
// (its version and digest, say), and swaps it for a new one without failing a
// call: the new model is loaded and warmed before Swap, calls that already
// hold the old one finish on it, and the old one is freed only after them.
//
// A Slot is safe for concurrent use. The zero value is empty.
type Slot[T any] struct {
	cur atomic.Pointer[slotEntry[T]]
	mu  sync.Mutex // serializes Swap, so at most one old model is draining per Slot
}

type slotEntry[T any] struct {
	m   *Model
	tag T
}

// ErrEmpty is returned by Slot.Do before any model was swapped in.
var ErrEmpty = errors.New("runtime: no model loaded")

// Swap makes m (with tag) current, waits for calls on the previous model to
// finish, closes it and returns its tag. ok is false when the slot was empty.
func (s *Slot[T]) Swap(m *Model, tag T) (old T, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.cur.Swap(&slotEntry[T]{m: m, tag: tag})
	if prev == nil {
		return old, false
	}
	prev.m.Close()
	return prev.tag, true
}

// Current returns the serving model and its tag without holding it; use Do
// to run it.
func (s *Slot[T]) Current() (*Model, T, bool) {
	e := s.cur.Load()
	if e == nil {
		var zero T
		return nil, zero, false
	}
	return e.m, e.tag, true
}

// Do calls fn with the current model and tag. If fn reports ErrClosed
// because a Swap closed that model before the call reached it, Do runs fn
// again on the new one, so a swap never fails a call. fn must not have side
// effects it cannot repeat before its call into the model.
func (s *Slot[T]) Do(fn func(m *Model, tag T) error) error {
	for {
		e := s.cur.Load()
		if e == nil {
			return ErrEmpty
		}
		err := fn(e.m, e.tag)
		if errors.Is(err, ErrClosed) && s.cur.Load() != e {
			continue
		}
		return err
	}
}

// Close closes the current model and empties the slot.
func (s *Slot[T]) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.cur.Swap(nil); e != nil {
		return e.m.Close()
	}
	return nil
}

// Release empties the slot without closing its model and returns it, so the
// caller can serve it elsewhere (a candidate promoted to serving). Calls in
// flight finish on it; calls after Release find the slot empty (ErrEmpty).
func (s *Slot[T]) Release() (*Model, T, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.cur.Swap(nil)
	if e == nil {
		var zero T
		return nil, zero, false
	}
	return e.m, e.tag, true
}
