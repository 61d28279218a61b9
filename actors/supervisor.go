package actors

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Supervisor runs a node's actors, each in its own goroutine, and restarts
// an actor that panics (after a short pause, so a crash loop does not spin),
// logging the panic and counting it. An actor that returns ends for good.
// Close cancels every actor and waits for them.
type Supervisor struct {
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	restarts map[string]*atomic.Int64
}

// Actor is one long-running behaviour. Run returns when ctx ends (or on a
// fatal error); it may panic, and is then started again.
type Actor interface {
	Run(ctx context.Context) error
}

// ActorFunc adapts a function to Actor.
type ActorFunc func(ctx context.Context) error

func (f ActorFunc) Run(ctx context.Context) error { return f(ctx) }

// NewSupervisor returns a supervisor whose actors stop when parent ends or
// Close is called.
func NewSupervisor(parent context.Context, log *slog.Logger) *Supervisor {
	ctx, cancel := context.WithCancel(parent)
	return &Supervisor{log: log, ctx: ctx, cancel: cancel, restarts: map[string]*atomic.Int64{}}
}

// Start runs a in a goroutine under the name given (for logs and Restarts).
func (s *Supervisor) Start(name string, a Actor) {
	s.mu.Lock()
	counter, ok := s.restarts[name]
	if !ok {
		counter = new(atomic.Int64)
		s.restarts[name] = counter
	}
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		backoff := 100 * time.Millisecond
		for {
			err, panicked := s.runOnce(name, a)
			if !panicked {
				if err != nil && s.ctx.Err() == nil {
					s.log.Error("actor stopped", "actor", name, "err", err)
				}
				return
			}
			counter.Add(1)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
		}
	}()
}

func (s *Supervisor) runOnce(name string, a Actor) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			panicked = true
			s.log.Error("actor panicked; restarting it", "actor", name, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	return a.Run(s.ctx), false
}

// Restarts reports how often each actor was restarted after a panic.
func (s *Supervisor) Restarts() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.restarts))
	for name, c := range s.restarts {
		out[name] = c.Load()
	}
	return out
}

// Close stops every actor and waits for them to return.
func (s *Supervisor) Close() {
	s.cancel()
	s.wg.Wait()
}
