package runtime

import (
	"context"
	"sync"
)

// pool hands workers to callers. The free workers are a stack: the one
// released last is taken next, so under light load one interpreter keeps
// its weights and arena in the CPU caches, where a FIFO (the channel this
// replaced) alternated between cold ones. Callers that find no free worker
// wait in arrival order, at most maxQueue of them. Safe for concurrent use.
type pool struct {
	mu       sync.Mutex
	free     []worker      // guarded by mu; most recently released last
	waiters  []chan worker // guarded by mu; oldest first, each buffered 1
	maxQueue int
}

func newPool(all []worker, maxQueue int) *pool {
	return &pool{free: append([]worker(nil), all...), maxQueue: maxQueue}
}

// get returns a worker, waiting until ctx is done if none is free; it fails
// fast with ErrOverloaded when maxQueue callers already wait.
func (p *pool) get(ctx context.Context) (worker, error) {
	p.mu.Lock()
	if n := len(p.free); n > 0 {
		w := p.free[n-1]
		p.free = p.free[:n-1]
		p.mu.Unlock()
		return w, nil
	}
	if len(p.waiters) >= p.maxQueue {
		p.mu.Unlock()
		return nil, ErrOverloaded
	}
	ch := make(chan worker, 1)
	p.waiters = append(p.waiters, ch)
	p.mu.Unlock()
	select {
	case w := <-ch:
		return w, nil
	case <-ctx.Done():
	}
	p.mu.Lock()
	for i, c := range p.waiters {
		if c == ch {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			p.mu.Unlock()
			return nil, ctx.Err()
		}
	}
	p.mu.Unlock()
	// put handed us a worker as ctx ended: pass it on.
	p.put(<-ch)
	return nil, ctx.Err()
}

// put returns w: to the oldest waiter, else to the top of the stack.
func (p *pool) put(w worker) {
	p.mu.Lock()
	if len(p.waiters) > 0 {
		ch := p.waiters[0]
		p.waiters[0] = nil
		p.waiters = p.waiters[1:]
		p.mu.Unlock()
		ch <- w
		return
	}
	p.free = append(p.free, w)
	p.mu.Unlock()
}

// waiting is the number of callers waiting for a worker.
func (p *pool) waiting() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiters)
}
