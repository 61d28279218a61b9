package actors

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestSupervisorRestartsPanickingActor(t *testing.T) {
	s := NewSupervisor(context.Background(), quietLog())
	var runs atomic.Int64
	s.Start("flaky", ActorFunc(func(ctx context.Context) error {
		if runs.Add(1) <= 2 {
			panic("boom")
		}
		<-ctx.Done()
		return nil
	}))
	deadline := time.Now().Add(5 * time.Second)
	for runs.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := runs.Load(); got != 3 {
		t.Fatalf("actor ran %d times, want 3 (two panics, then running)", got)
	}
	if got := s.Restarts()["flaky"]; got != 2 {
		t.Fatalf("Restarts()[flaky] = %d, want 2", got)
	}
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return: an actor outlived its supervisor")
	}
}

func TestSupervisorDoesNotRestartReturnedActor(t *testing.T) {
	s := NewSupervisor(context.Background(), quietLog())
	var runs atomic.Int64
	s.Start("once", ActorFunc(func(ctx context.Context) error { runs.Add(1); return nil }))
	time.Sleep(300 * time.Millisecond)
	s.Close()
	if runs.Load() != 1 {
		t.Fatalf("returned actor ran %d times, want 1", runs.Load())
	}
}
