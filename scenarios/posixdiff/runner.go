package posixdiff

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Tree names a directory a Runner makes its runs in.
type Tree struct {
	Name string // for reports: "meshfs", "local"
	Dir  string // must exist; each run makes a fresh directory in it
}

// Config configures a Runner.
type Config struct {
	// Under is the file system under test, Reference the one whose
	// behaviour it must match (a local file system).
	Under, Reference Tree
	// Slots is the number of handle slots; it must match the GenConfig
	// the operations were made with. Default 6.
	Slots int
	// Tolerate names Deviations not to check, so a run goes past known
	// ones.
	Tolerate []string
	// Log receives progress; nil discards it.
	Log *slog.Logger
	// Crasher, when set, runs the crash mode (see Crash): after about
	// every CrashEvery operations (default 200), at points drawn from
	// CrashSeed, it breaks the tree under test, and the runner checks
	// that no fsync'd byte was lost before going on.
	Crasher    Crasher
	CrashEvery int
	CrashSeed  uint64
}

// Runner runs sequences on both trees and compares them. Each run works in
// a fresh pair of directories named alike, so a symlink that points one
// level up resolves to the same (absent) name on both sides.
type Runner struct {
	cfg  Config
	log  *slog.Logger
	runs int
	// tamper, when set, is called after each op on the reference side
	// with its run's root: tests plant a difference with it, to show
	// the comparison catches one.
	tamper func(op Op, root string)
	// settle and settleKind are passed to the Sides (see Side.settle).
	settle     bool
	settleKind Kind
	crashStats CrashStats
	tolerate   map[string]bool // Config.Tolerate, shared by every Side
}

// CrashStats says what the crash mode did and checked so far.
func (r *Runner) CrashStats() CrashStats { return r.crashStats }

// NewRunner checks the trees' directories and returns a Runner.
func NewRunner(cfg Config) (*Runner, error) {
	if cfg.Slots <= 0 {
		cfg.Slots = GenConfig{}.withDefaults().Slots
	}
	tolerate := make(map[string]bool)
	for _, name := range cfg.Tolerate {
		if err := checkDeviation(name); err != nil {
			return nil, fmt.Errorf("posixdiff: %w", err)
		}
		tolerate[name] = true
	}
	for _, t := range []Tree{cfg.Under, cfg.Reference} {
		st, err := os.Stat(t.Dir)
		if err != nil {
			return nil, fmt.Errorf("posixdiff: %s directory: %w", t.Name, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("posixdiff: %s directory %s is not a directory", t.Name, t.Dir)
		}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runner{cfg: cfg, log: log, tolerate: tolerate}, nil
}

// Where a mismatch showed.
const (
	AtOp    = "op"    // an operation's results differ
	AtTree  = "tree"  // a full-tree comparison after the operation
	AtClose = "close" // closing the handles still open at the end
)

// Mismatch is the first difference of a run.
type Mismatch struct {
	// Index is the operation after which it showed (0-based).
	Index int
	Where string // AtOp, AtTree or AtClose
	Op    Op     // ops[Index]; for AtClose a close of the slot that differed
	// Under and Reference are the two results (AtOp, AtClose).
	Under, Reference Result
	Tree             *TreeDiff // AtTree
	Names            [2]string // the trees' names, for String
}

// Signature says what kind of difference this is, so that a shorter
// sequence can be checked to show the same one rather than another:
// where, the operation's kind, and what differs.
func (m *Mismatch) Signature() string {
	switch m.Where {
	case AtTree, AtCrash:
		return m.Where + ":" + m.Tree.Field
	case AtClose:
		return "close:" + Differ(m.Under, m.Reference)
	}
	return m.Op.Kind.String() + ":" + Differ(m.Under, m.Reference)
}

func (m *Mismatch) String() string {
	switch m.Where {
	case AtTree, AtCrash:
		s := fmt.Sprintf("after op %d (%s), the trees differ: %s differs in %s:\n    %s: %s\n    %s: %s",
			m.Index, m.Op, m.Tree.Path, m.Tree.Field, m.Names[0], cmp.Or(m.Tree.A, "(missing)"), m.Names[1], cmp.Or(m.Tree.B, "(missing)"))
		if m.Tree.Data != "" {
			s += "\n    content: " + m.Tree.Data
		}
		return s
	case AtClose:
		return fmt.Sprintf("after op %d, closing the handles left open: %s: %s=<%s> %s=<%s>",
			m.Index, m.Op, m.Names[0], m.Under, m.Names[1], m.Reference)
	}
	s := fmt.Sprintf("mismatch at op %d: %s %s=<%s> %s=<%s>", m.Index, m.Op, m.Names[0], m.Under, m.Names[1], m.Reference)
	if Differ(m.Under, m.Reference) == "data" {
		s += ": " + DataDiff(m.Under.Data, m.Reference.Data)
	}
	return s
}

// Run applies ops to a fresh pair of directories and compares every
// result, the whole trees every checkEvery operations (0: only at the end,
// where they are compared with the handles still open, then after closing
// them). It returns the first mismatch, or nil; an error means the run
// could not be made (a directory, a mount that died, the context), not a
// difference.
func (r *Runner) Run(ctx context.Context, ops []Op, checkEvery int) (*Mismatch, error) {
	return r.run(ctx, ops, func(i int) bool { return checkEvery > 0 && (i+1)%checkEvery == 0 })
}

// run is Run comparing the trees after the operations whose index check
// accepts (and at the end).
func (r *Runner) run(ctx context.Context, ops []Op, check func(i int) bool) (*Mismatch, error) {
	r.runs++
	name := fmt.Sprintf("run%04d-%d", r.runs, os.Getpid())
	under, err := r.makeSide(r.cfg.Under, name)
	if err != nil {
		return nil, err
	}
	ref, err := r.makeSide(r.cfg.Reference, name)
	if err != nil {
		os.RemoveAll(under.Root())
		return nil, err
	}
	defer func() {
		under.CloseAll()
		ref.CloseAll()
		for _, s := range []*Side{under, ref} {
			if err := os.RemoveAll(s.Root()); err != nil {
				r.log.Warn("posixdiff: removing a run's directory failed", "side", s.Name, "dir", s.Root(), "err", err)
			}
		}
	}()
	names := [2]string{under.Name, ref.Name}
	var dur *durability
	var points *crashPoints
	if r.cfg.Crasher != nil {
		dur = newDurability()
		points = newCrashPoints(r.cfg.CrashSeed+uint64(r.runs), cmp.Or(r.cfg.CrashEvery, 200))
	}
	start := time.Now()
	for i, op := range ops {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("posixdiff: stopped after %d of %d operations: %w", i, len(ops), err)
		}
		if dur != nil {
			dur.before(ref, op)
		}
		a := under.Apply(op)
		b := ref.Apply(op)
		if dur != nil {
			dur.after(ref, op, b)
		}
		if r.tamper != nil {
			r.tamper(op, ref.Root())
		}
		if !a.Equal(b) {
			return r.found(&Mismatch{Index: i, Where: AtOp, Op: op, Under: a, Reference: b, Names: names})
		}
		if points != nil && points.after(i) {
			if m, err := r.crash(ctx, i, op, under, ref, dur, names); m != nil || err != nil {
				return m, err
			}
		}
		if check(i) {
			if d := diffTrees(under, ref); d != nil {
				return r.found(&Mismatch{Index: i, Where: AtTree, Op: op, Tree: d, Names: names})
			}
		}
		if (i+1)%2000 == 0 {
			r.log.Info("posixdiff: progress", "run", name, "ops", i+1, "of", len(ops),
				"ops_per_s", fmt.Sprintf("%.0f", float64(i+1)/time.Since(start).Seconds()))
		}
	}
	last := len(ops) - 1
	var lastOp Op
	if last >= 0 {
		lastOp = ops[last]
	}
	if d := diffTrees(under, ref); d != nil {
		return r.found(&Mismatch{Index: last, Where: AtTree, Op: lastOp, Tree: d, Names: names})
	}
	ca, cb := under.CloseAll(), ref.CloseAll()
	for slot := range ca {
		if !ca[slot].Equal(cb[slot]) {
			return r.found(&Mismatch{Index: last, Where: AtClose, Op: Op{Kind: KindClose, Slot: slot}, Under: ca[slot], Reference: cb[slot], Names: names})
		}
	}
	if d := diffTrees(under, ref); d != nil {
		return r.found(&Mismatch{Index: last, Where: AtTree, Op: lastOp, Tree: d, Names: names})
	}
	return nil, nil
}

// found returns m as the run's outcome, unless a tree's directory is gone:
// a mount that died answers ENOTCONN (or, unmounted, ENOENT) to every call,
// which is no difference between the file systems but the end of the run.
// It asks with statfs, which the kernel never answers from its caches.
func (r *Runner) found(m *Mismatch) (*Mismatch, error) {
	for _, t := range []Tree{r.cfg.Under, r.cfg.Reference} {
		var st unix.Statfs_t
		if err := unix.Statfs(t.Dir, &st); err != nil {
			return nil, fmt.Errorf("posixdiff: the %s directory is gone after op %d (%w): did its mount die?", t.Name, m.Index, err)
		}
	}
	return m, nil
}

func (r *Runner) makeSide(t Tree, name string) (*Side, error) {
	root := filepath.Join(t.Dir, name)
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, fmt.Errorf("posixdiff: %s run directory: %w", t.Name, err)
	}
	// The same mode on both sides whatever the umask.
	if err := os.Chmod(root, 0o755); err != nil {
		return nil, fmt.Errorf("posixdiff: %s run directory: %w", t.Name, err)
	}
	s := NewSide(t.Name, root, r.cfg.Slots)
	s.settle, s.settleKind = r.settle, r.settleKind
	s.tolerate = r.tolerate
	return s, nil
}

// diffTrees compares the whole trees of two sides.
func diffTrees(a, b *Side) *TreeDiff { return DiffSnapshots(Snapshot(a.Root()), Snapshot(b.Root())) }

// Listing renders ops as numbered lines, for a report.
func Listing(ops []Op) string {
	var b strings.Builder
	for i, op := range ops {
		fmt.Fprintf(&b, "  %4d  %s\n", i, op)
	}
	return b.String()
}

// ErrNotReproduced is what Minimize reports when a replay does not show
// the mismatch again: it depended on timing.
var ErrNotReproduced = errors.New("the mismatch did not show again on replay")
