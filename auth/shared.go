package auth

import (
	"context"
	"sync"
)

// sharedCalls runs a lookup once for every caller that asks for the same
// key while it runs, and consults and fills a cache under the same lock
// that guards the running calls, so that a caller arriving just as a call
// ends takes its answer instead of starting another.
type sharedCalls[K comparable, V any] struct {
	running map[K]*sharedCall[V]
}

type sharedCall[V any] struct {
	done chan struct{}
	val  V
	err  error
	// retry: the caller that ran it gave up (its context ended), so the
	// outcome says nothing about the key.
	retry bool
}

// do answers from cached if it can, else joins the call running for k or
// runs run itself. cached and keep are called with mu held; keep is given
// a success, unless forget(k) came while it ran, and returns the value
// to share (it may adjust it, an expiry say). A caller whose context ends
// stops waiting with ctx.Err(); a failure is shared only with those
// waiting at that moment and is never kept.
func (s *sharedCalls[K, V]) do(ctx context.Context, mu *sync.Mutex, k K, cached func() (V, bool), run func() (V, error), keep func(V) V) (V, error) {
	for {
		mu.Lock()
		if v, ok := cached(); ok {
			mu.Unlock()
			return v, nil
		}
		if c, ok := s.running[k]; ok {
			mu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				var zero V
				return zero, ctx.Err()
			}
			if c.retry {
				continue
			}
			return c.val, c.err
		}
		c := &sharedCall[V]{done: make(chan struct{})}
		if s.running == nil {
			s.running = map[K]*sharedCall[V]{}
		}
		s.running[k] = c
		mu.Unlock()

		v, err := run()
		mu.Lock()
		if s.running[k] == c {
			delete(s.running, k)
			if err == nil {
				v = keep(v)
			}
		}
		c.val, c.err, c.retry = v, err, err != nil && ctx.Err() != nil
		mu.Unlock()
		close(c.done)
		return v, err
	}
}

// forget makes the call running for k, if any, go unkept: it may have
// read what is now out of date, and later callers run their own. The
// caller holds the lock given to do.
func (s *sharedCalls[K, V]) forget(k K) {
	delete(s.running, k)
}
