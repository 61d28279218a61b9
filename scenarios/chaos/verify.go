package chaos

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// WaitHealed waits until every block is back at R live copies: 'meshfs
// status --json' shows no block under-replicated or lost and R copies of
// each, and every block of the known files is held by at least R live
// members. The first time it succeeds it records heal_s, the time since
// since. It fails the run when the heal takes longer than HealTimeout
// after since, or when some known block has had no live copy for 15 s
// (nothing can bring it back), and then returns false.
func (e *Env) WaitHealed(ctx context.Context, since time.Time) bool {
	return e.waitHealed(ctx, since, true)
}

// waitHealed is WaitHealed; record says whether to record heal_s.
func (e *Env) waitHealed(ctx context.Context, since time.Time, record bool) bool {
	deadline := since.Add(e.HealTimeout)
	var lostSince, lastLog time.Time
	last := ""
	for {
		st, serr := e.Status(ctx)
		inv, ierr := e.Inventory(ctx)
		blocks, under, lost := inv.Copies(e.Files.Blocks(), e.R())
		e.mu.Lock()
		if ierr == nil {
			e.result.Lost = lost
		}
		e.mu.Unlock()
		msg := fmt.Sprintf("status: %s; known files: %d blocks, %d below %d copies, %d with no live copy", st, blocks, under, e.R(), lost)
		switch {
		case serr != nil:
			msg = fmt.Sprintf("%v", serr)
		case ierr != nil:
			msg = fmt.Sprintf("inventory: %v", ierr)
		case st.Healthy() && under == 0:
			took := time.Since(since)
			e.mu.Lock()
			first := e.result.Heal < 0 && record
			if first {
				e.result.Heal = took.Seconds()
			}
			e.mu.Unlock()
			if first {
				e.Logf("healed %.1fs after the chaos: %s", took.Seconds(), msg)
			} else {
				e.Logf("every block at %d copies: %s", e.R(), msg)
			}
			return true
		}
		now := time.Now()
		if msg != last && now.Sub(lastLog) > 3*time.Second {
			e.Logf("waiting for the heal: %s", msg)
			last, lastLog = msg, now
		}
		if ierr == nil && lost > 0 {
			if lostSince.IsZero() {
				lostSince = now
			} else if now.Sub(lostSince) > 15*time.Second {
				e.giveUpHeal("%d blocks of the known files have no live copy (for 15s): they are lost; %s", lost, msg)
				return false
			}
		} else {
			lostSince = time.Time{}
		}
		if now.After(deadline) {
			e.giveUpHeal("not healed %v after the chaos: %s", e.HealTimeout, msg)
			return false
		}
		if !Sleep(ctx, time.Second) {
			return false
		}
	}
}

// giveUpHeal fails the run and keeps Finish from waiting again.
func (e *Env) giveUpHeal(format string, args ...any) {
	e.Fail(format, args...)
	e.mu.Lock()
	e.healGaveUp = true
	e.mu.Unlock()
}

// FinishOptions say what Finish may tolerate.
type FinishOptions struct {
	// Workload, if set, is stopped first.
	Workload *Workload
	// HealSince is when the chaos ended, for heal_s; zero: the scenario
	// measured its own (or has none), and Finish only checks the copies
	// (with HealTimeout from now). A heal_s already recorded stays.
	HealSince time.Time
	// AllowReadErrors: the workload's failed reads do not fail the run
	// (the scenario kills what they read through). Wrong bytes always do.
	AllowReadErrors bool
	// AllowWriteErrors: the workload's failed writes do not fail the run.
	AllowWriteErrors bool
}

// Finish ends a scenario: it stops the workload, waits for the heal,
// verifies every known file through the mount of 'meshfs up' and through
// a fresh second mount, and fails the run on any loss, corruption, read
// error or missing heal.
func (e *Env) Finish(ctx context.Context, opts FinishOptions) {
	e.mu.Lock()
	e.finished = true
	e.mu.Unlock()
	if opts.Workload != nil {
		opts.Workload.Stop()
	}
	since, record := opts.HealSince, true
	if since.IsZero() {
		since, record = time.Now(), false
	}
	e.mu.Lock()
	gaveUp := e.healGaveUp
	e.mu.Unlock()
	if gaveUp {
		// Already reported; count what is lost now, once.
		if inv, err := e.Inventory(ctx); err == nil {
			_, _, lost := inv.Copies(e.Files.Blocks(), e.R())
			e.mu.Lock()
			e.result.Lost = lost
			e.mu.Unlock()
		}
	} else {
		e.waitHealed(ctx, since, record)
	}
	if ctx.Err() != nil {
		return
	}
	okUp := e.VerifyFiles(ctx, e.Mount())
	dir, unmount, err := e.MountAgain(ctx)
	if err != nil {
		e.Fail("fresh mount for verification: %v", err)
		return
	}
	okFresh := e.VerifyFiles(ctx, dir)
	if err := unmount(); err != nil {
		e.Fail("unmount %s: %v", dir, err)
	}
	files := e.Files.All()
	var bytes int64
	for _, f := range files {
		if okUp[f.Path] && okFresh[f.Path] {
			bytes += f.Size
		}
	}
	e.mu.Lock()
	r := &e.result
	r.Files, r.BytesVerified = len(files), bytes
	readErrors, corrupt, writeErrors, lost := r.ReadErrors, r.Corrupt, r.WriteErrors, r.Lost
	e.mu.Unlock()
	if lost > 0 {
		e.Fail("%d blocks lost", lost)
	}
	if corrupt > 0 {
		e.Fail("%d reads returned wrong bytes", corrupt)
	}
	if readErrors > 0 && !opts.AllowReadErrors {
		e.Fail("%d reads failed", readErrors)
	}
	if writeErrors > 0 && !opts.AllowWriteErrors {
		e.Fail("%d writes failed", writeErrors)
	}
}

// VerifyFiles reads every known file through the mount at dir and checks
// its size and SHA-256; it returns the paths that were right. Failed and
// wrong reads count as read errors and corrupt reads, and fail the run.
func (e *Env) VerifyFiles(ctx context.Context, dir string) map[string]bool {
	files := e.Files.All()
	ok := map[string]bool{}
	type outcome struct {
		path string
		size int64
		err  error
	}
	// Room for every outcome: after a timeout or cancel nobody receives,
	// and the reader must not block.
	results := make(chan outcome, len(files))
	t := time.Now()
	go func() {
		defer close(results)
		for _, f := range files {
			if ctx.Err() != nil {
				return
			}
			n, sum, err := readSum(filepath.Join(dir, f.Path))
			if err == nil && (n != f.Size || sum != f.Sum) {
				err = fmt.Errorf("%w: %d bytes with sha256 %x, want %d bytes with %x", errCorrupt, n, sum[:8], f.Size, f.Sum[:8])
			}
			results <- outcome{f.Path, f.Size, err}
		}
	}()
	timeout := time.After(3 * time.Minute)
	var bad, wrong int64
	var bytes int64
	for {
		select {
		case o, more := <-results:
			if !more {
				e.mu.Lock()
				e.result.ReadErrors += bad
				e.result.Corrupt += wrong
				e.mu.Unlock()
				if bad+wrong > 0 {
					e.Fail("%s: %d of %d files unreadable, %d with wrong content", dir, bad, len(files), wrong)
				}
				e.Logf("verified %d of %d files (%s) through %s in %.1fs", len(ok), len(files), formatBytes(bytes), dir, time.Since(t).Seconds())
				return ok
			}
			switch {
			case o.err == nil:
				ok[o.path] = true
				bytes += o.size
			case errors.Is(o.err, errCorrupt):
				wrong++
				e.Logf("verify: CORRUPT %s: %v", o.path, o.err)
			default:
				bad++
				if bad <= 5 {
					e.Logf("verify: %s: %v", o.path, o.err)
				}
			}
		case <-timeout:
			e.Fail("%s: verification stuck: %d of %d files checked after 3 minutes", dir, len(ok), len(files))
			return ok
		case <-ctx.Done():
			return ok
		}
	}
}

// errCorrupt marks a read that returned the wrong bytes.
var errCorrupt = errors.New("content differs")
