package posixdiff

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Minimized is what Minimize found.
type Minimized struct {
	// Prefix is the length of the shortest prefix of the original
	// sequence that shows the mismatch.
	Prefix int
	// Ops is the smallest sequence found that still shows a mismatch of
	// the same Signature, and Mismatch is how it shows there.
	Ops      []Op
	Mismatch *Mismatch
	Replays  int
	// Complete is false when the budget ran out before no single chunk
	// of operations could be dropped any more.
	Complete bool
}

// Minimize looks for a short sequence that shows first, a mismatch that
// running ops with checkEvery found. It replays the prefix up to the
// mismatch; a difference the full-tree comparison found is pinned down to
// the operation after which it appears by comparing the trees more often
// between the last comparison that found them equal and the one that did
// not. That gives the shortest prefix. Then it drops chunks of operations,
// halving their size (delta debugging), as long as a mismatch of the same
// Signature still shows, until budget is spent, and pins the smallest
// sequence's difference down the same way. Each replay runs in fresh
// directories. If no replay shows a mismatch it returns an error wrapping
// ErrNotReproduced, and what it has; the budget running out is not an
// error (Complete says so).
func (r *Runner) Minimize(ctx context.Context, ops []Op, first *Mismatch, checkEvery int, budget time.Duration) (*Minimized, error) {
	mctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	if first.Where == AtOp && Differ(first.Under, first.Reference) == "timestamps" {
		// Make every replay's timestamp checks of that call decisive,
		// so dropping an operation that only took time cannot lose the
		// mismatch, and the minimal sequence shows it every time.
		r.settle, r.settleKind = true, first.Op.Kind
		defer func() { r.settle = false }()
	}
	prefix := ops[:first.Index+1]
	out := &Minimized{Prefix: len(prefix), Ops: prefix, Mismatch: first}
	// replay runs cand comparing the trees where check says and at the
	// end; spent reports the budget running out (not an error).
	replay := func(cand []Op, check func(int) bool) (mm *Mismatch, spent bool, err error) {
		out.Replays++
		mm, err = r.run(mctx, cand, check)
		if err != nil && ctx.Err() == nil && mctx.Err() != nil {
			return nil, true, nil
		}
		return mm, false, err
	}
	atEnd := func(int) bool { return false }

	lastEqual := -1 // the last operation after which the trees compared equal
	if checkEvery > 0 {
		lastEqual = (first.Index+1)/checkEvery*checkEvery - 1
		if lastEqual == first.Index {
			lastEqual -= checkEvery
		}
	}
	target, spent, err := replay(prefix, func(i int) bool { return checkEvery > 0 && (i+1)%checkEvery == 0 })
	if err != nil || spent {
		return out, err
	}
	if target == nil {
		return out, fmt.Errorf("posixdiff: replaying %d operations: %w", len(prefix), ErrNotReproduced)
	}
	if target.Where == AtTree {
		if target, spent, err = r.pinpoint(prefix[:target.Index+1], max(lastEqual, -1), target, replay); err != nil || spent {
			return out, err
		}
	}
	cur := prefix[:target.Index+1]
	out.Prefix, out.Ops, out.Mismatch = len(cur), cur, target
	sig := target.Signature()
	r.log.Info("posixdiff: shortest prefix", "ops", len(cur), "signature", sig)

	// Delta debugging. Replays compare the trees only at the end, where
	// a tree difference that appeared anywhere before mostly still is.
	n := 2
	for len(cur) >= 2 {
		chunk := (len(cur) + n - 1) / n
		reduced := false
		for start := 0; start < len(cur) && !reduced; start += chunk {
			cand := append(append([]Op(nil), cur[:start]...), cur[min(start+chunk, len(cur)):]...)
			mm, spent, err := replay(cand, atEnd)
			if err != nil || spent {
				return out, err
			}
			if mm != nil && mm.Signature() == sig {
				cur = cand[:mm.Index+1]
				out.Ops, out.Mismatch = cur, mm
				n = max(n-1, 2)
				reduced = true
				r.log.Info("posixdiff: smaller sequence", "ops", len(cur), "replays", out.Replays)
			}
		}
		if !reduced {
			if n >= len(cur) {
				break
			}
			n = min(2*n, len(cur))
		}
	}
	if out.Mismatch.Where == AtTree {
		mm, spent, err := r.pinpoint(cur, -1, out.Mismatch, replay)
		if err != nil || spent {
			return out, err
		}
		out.Ops, out.Mismatch = cur[:mm.Index+1], mm
	}
	out.Complete = true
	return out, nil
}

// pinpoint finds the first operation of ops after which the trees differ,
// knowing they compared equal after ops[lastEqual] (-1: before the first)
// and differ at the end (found). Comparing after each of thousands of
// operations would take too long on a big tree: it compares after every
// stride-th operation first, then after each in the stretch that failed.
func (r *Runner) pinpoint(ops []Op, lastEqual int, found *Mismatch,
	replay func([]Op, func(int) bool) (*Mismatch, bool, error)) (*Mismatch, bool, error) {
	lo, hi := lastEqual, len(ops)-1 // equal after lo, different after hi
	for hi-lo > 1 {
		stride := max(1, (hi-lo+15)/16)
		mm, spent, err := replay(ops[:hi+1], func(i int) bool { return i > lo && (i-lo)%stride == 0 })
		if err != nil || spent || mm == nil {
			// Gone, with comparisons in between: keep what was found.
			return found, spent, err
		}
		found = mm
		if stride == 1 {
			return found, false, nil
		}
		hi, lo = mm.Index, max(lo, mm.Index-stride)
	}
	return found, false, nil
}

// Report renders a mismatch and what Minimize made of it, in the form the
// CLI and the tests print: the seed, the first mismatch, the shortest
// prefix and the listing of the smallest sequence.
func Report(seed uint64, nOps int, first *Mismatch, shrunk *Minimized, minErr error) string {
	s := fmt.Sprintf("seed=%d ops=%d %s\n", seed, nOps, first)
	if shrunk == nil {
		return s
	}
	if minErr != nil {
		s += fmt.Sprintf("minimising: %v\n", minErr)
		if errors.Is(minErr, ErrNotReproduced) {
			return s + "(a mismatch that does not replay depends on timing: a timestamp rule applied where it does not hold, or a race in the file system)\n"
		}
	}
	s += fmt.Sprintf("shortest prefix that shows it: %d ops (seed=%d ops=%d)\n", shrunk.Prefix, seed, shrunk.Prefix)
	complete := "complete"
	if !shrunk.Complete {
		complete = "budget spent"
	}
	s += fmt.Sprintf("minimal sequence (%d ops, %d replays, %s): %s\n%s", len(shrunk.Ops), shrunk.Replays, complete, shrunk.Mismatch, Listing(shrunk.Ops))
	return s
}
