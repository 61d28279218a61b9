package posixdiff

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Crash mode: a Crasher breaks the file system under test between two
// operations (a node SIGKILLed, the mount process SIGKILLed) and brings it
// back; the runner then checks that what is left is what a local file
// system could have left after the same crash, and goes on.
//
// The rule, from what POSIX and Linux promise a program:
//   - Everything but file data is synchronous on meshfs (each namespace or
//     attribute change is committed before the call returns), so names,
//     types, modes, owners, link counts, symlinks and xattrs must match the
//     local tree exactly, after any crash.
//   - A file whose data did not change since its last fsync (through any
//     handle of it; or since it was created empty) must hold exactly its
//     bytes: fsync'd data is never lost.
//   - A file written or truncated since its last fsync may have lost those
//     changes when the mount died, as on a local file system after a power
//     cut: its size must be one it had since that fsync, and each byte one
//     it held at that offset since then (or a zero, as a hole).
//   - A crash that leaves the mount alive (a node killed and later
//     restarted) must change nothing at all: the comparison stays exact.
//
// After a mount loss the local tree's dirty files are set to what meshfs
// kept, so that the run goes on from the same state on both sides.

// AtCrash says a mismatch showed in the check after a crash.
const AtCrash = "crash"

// Crash is what a Crasher did.
type Crash struct {
	What string // for reports: "SIGKILL node2", "SIGKILL the mount, remounted"
	// MountLost says the mount process died: its open handles are gone,
	// and data not fsync'd may be lost with it.
	MountLost bool
}

// Crasher breaks the tree under test and returns once it answers again.
// n counts the crashes of a run from 0.
type Crasher interface {
	Crash(ctx context.Context, n int) (Crash, error)
}

// CrashStats counts what the crash checks covered, over a Runner's life.
type CrashStats struct {
	Crashes, MountLosses int
	// ExactFiles and ExactBytes are the files (and their bytes) checked
	// byte for byte after mount losses: fsync'd, or unchanged since.
	ExactFiles int
	ExactBytes int64
	// LooseFiles were written since their last fsync and checked against
	// the states they went through.
	LooseFiles int
	// LostFiles are those of LooseFiles that came back with older content
	// than the local tree's (unsynced changes lost, which is allowed).
	LostFiles int
}

func (c CrashStats) String() string {
	return fmt.Sprintf("crashes=%d mount_losses=%d exact_files=%d exact_bytes=%d loose_files=%d unsynced_lost=%d",
		c.Crashes, c.MountLosses, c.ExactFiles, c.ExactBytes, c.LooseFiles, c.LostFiles)
}

// crashPoints draws the operations after which a crash happens: on
// average every `every` operations, from its own seeded source so that
// the sequence of operations does not depend on it.
type crashPoints struct {
	rng   *rand.Rand
	every int
	next  int
}

func newCrashPoints(seed uint64, every int) *crashPoints {
	p := &crashPoints{rng: rand.New(rand.NewPCG(seed, 0x63726173)), every: max(every, 1), next: -1}
	p.next = p.draw(0)
	return p
}

func (p *crashPoints) draw(from int) int { return from + p.every/2 + p.rng.IntN(p.every) }

// after reports whether a crash comes after operation i.
func (p *crashPoints) after(i int) bool {
	if i != p.next {
		return false
	}
	p.next = p.draw(i + 1)
	return true
}

// durability follows, on the reference side, which files hold data that
// is not fsync'd: for each such inode, every content it had since its last
// fsync, oldest (the fsync'd one) first.
type durability struct {
	states map[uint64][][]byte
	// created is set by before for an open that may create its file.
	created bool
}

func newDurability() *durability { return &durability{states: make(map[uint64][][]byte)} }

// target names the regular file op changes the data of, and how to read
// it; ok is false for other operations.
func (d *durability) target(s *Side, op Op) (ino uint64, read func() ([]byte, error), ok bool) {
	var st unix.Stat_t
	switch op.Kind {
	case KindPwrite, KindWrite, KindFtruncate, KindFsync:
		fd := s.fd(op.Slot)
		if fd < 0 || unix.Fstat(fd, &st) != nil {
			return 0, nil, false
		}
		// The handle may be write-only, or its file unlinked: the
		// descriptor's /proc link opens it for reading all the same.
		proc := fmt.Sprintf("/proc/self/fd/%d", fd)
		read = func() ([]byte, error) { return os.ReadFile(proc) }
	case KindTruncate, KindOpen:
		if op.Kind == KindOpen && op.Flags&unix.O_TRUNC == 0 {
			return 0, nil, false
		}
		p := s.abs(op.Path)
		if unix.Stat(p, &st) != nil {
			return 0, nil, false
		}
		read = func() ([]byte, error) { return os.ReadFile(p) }
	default:
		return 0, nil, false
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, nil, false
	}
	return st.Ino, read, true
}

// before records, ahead of an operation that changes a clean file's data,
// the content it has now: its durable content.
func (d *durability) before(s *Side, op Op) {
	d.created = false
	if op.Kind == KindOpen && op.Flags&unix.O_CREAT != 0 {
		var st unix.Stat_t
		d.created = unix.Stat(s.abs(op.Path), &st) != nil
	}
	if op.Kind == KindFsync {
		return
	}
	ino, read, ok := d.target(s, op)
	if !ok {
		return
	}
	if _, dirty := d.states[ino]; dirty {
		return
	}
	if data, err := read(); err == nil {
		d.states[ino] = [][]byte{data}
	}
}

// after records the content an operation left, or forgets a file that an
// fsync made durable or an open just created (empty, and its inode number
// possibly one a removed file had).
func (d *durability) after(s *Side, op Op, res Result) {
	if res.Errno != 0 {
		return
	}
	if op.Kind == KindOpen && d.created {
		var st unix.Stat_t
		if fd := s.fd(op.Slot); fd >= 0 && unix.Fstat(fd, &st) == nil {
			delete(d.states, st.Ino)
		}
	}
	if op.Kind == KindOpen {
		if op.Flags&unix.O_TRUNC == 0 {
			return // only O_TRUNC changes the data
		}
		op = Op{Kind: KindFtruncate, Slot: op.Slot} // read it through the new handle
	}
	ino, read, ok := d.target(s, op)
	if !ok {
		return
	}
	if op.Kind == KindFsync {
		delete(d.states, ino)
		return
	}
	states, dirty := d.states[ino]
	if !dirty {
		return
	}
	if data, err := read(); err == nil && !bytes.Equal(data, states[len(states)-1]) {
		d.states[ino] = append(states, data)
	}
}

// couldHold says why data is no content a file that went through states
// could have after a crash, or "" if it is one.
func couldHold(data []byte, states [][]byte) string {
	sizeOK := slices.ContainsFunc(states, func(s []byte) bool { return len(s) == len(data) })
	if !sizeOK {
		var sizes []string
		for _, s := range states {
			sizes = append(sizes, fmt.Sprint(len(s)))
		}
		return fmt.Sprintf("size %d is none of the sizes it had since its last fsync (%s)", len(data), strings.Join(sizes, ", "))
	}
	for i, c := range data {
		if c == 0 {
			continue
		}
		if !slices.ContainsFunc(states, func(s []byte) bool { return i < len(s) && s[i] == c }) {
			return fmt.Sprintf("byte %d is %#02x, which it never held there since its last fsync", i, c)
		}
	}
	return ""
}

// crash runs one crash after operation i and checks what it left; a
// mismatch says the tree under test is not one the local file system
// could have left.
func (r *Runner) crash(ctx context.Context, i int, op Op, under, ref *Side, dur *durability, names [2]string) (*Mismatch, error) {
	n := r.crashStats.Crashes
	c, err := r.cfg.Crasher.Crash(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("posixdiff: crash %d, after op %d: %w", n, i, err)
	}
	r.crashStats.Crashes++
	r.log.Info("posixdiff: crash", "n", n, "after_op", i, "what", c.What)
	mismatch := func(d *TreeDiff) *Mismatch {
		d.Field = "after crash " + fmt.Sprint(n) + " (" + c.What + "): " + d.Field
		return &Mismatch{Index: i, Where: AtCrash, Op: op, Tree: d, Names: names}
	}
	if !c.MountLost {
		if d := diffTrees(under, ref); d != nil {
			return r.found(mismatch(d))
		}
		return nil, nil
	}
	r.crashStats.MountLosses++
	// The handles died with the mount; the local ones go too, so both
	// sides go on from no open handle (and unlinked open files vanish).
	under.CloseAll()
	ref.CloseAll()

	a, b := Snapshot(under.Root()), Snapshot(ref.Root())
	loose := make(map[string][][]byte)
	for _, e := range b {
		var st unix.Stat_t
		if !strings.HasPrefix(e.Text, "file ") || unix.Lstat(ref.abs(e.Path), &st) != nil {
			continue
		}
		if states, dirty := dur.states[st.Ino]; dirty {
			loose[e.Path] = states
		} else {
			r.crashStats.ExactFiles++
			r.crashStats.ExactBytes += int64(len(e.Data))
		}
	}
	if d := DiffSnapshots(withoutData(a, loose), withoutData(b, loose)); d != nil {
		if d.Field == "sha256" || d.Field == "size" {
			d.Field += " of a file fsync'd (or unchanged) since its last fsync"
		}
		return r.found(mismatch(d))
	}
	got := make(map[string][]byte, len(a))
	for _, e := range a {
		got[e.Path] = e.Data
	}
	for _, p := range slices.Sorted(maps.Keys(loose)) {
		states := loose[p]
		r.crashStats.LooseFiles++
		data := got[p]
		if why := couldHold(data, states); why != "" {
			return r.found(mismatch(&TreeDiff{Path: p, Field: "content of a file written since its last fsync",
				A: fmt.Sprintf("%d bytes", len(data)), B: fmt.Sprintf("%d bytes, %d states since its last fsync", len(states[len(states)-1]), len(states)), Data: why}))
		}
		if !bytes.Equal(data, states[len(states)-1]) {
			r.crashStats.LostFiles++
			if err := overwrite(ref.abs(p), data); err != nil {
				return nil, fmt.Errorf("posixdiff: after crash %d, setting the local %s to what meshfs kept: %w", n, p, err)
			}
		}
	}
	clear(dur.states)
	return nil, nil
}

// withoutData drops the size and content words of the entries at the
// paths in loose.
func withoutData(es []Entry, loose map[string][][]byte) []Entry {
	out := slices.Clone(es)
	for i, e := range out {
		if _, ok := loose[e.Path]; !ok {
			continue
		}
		words := strings.Fields(e.Text)
		words = slices.DeleteFunc(words, func(w string) bool {
			return strings.HasPrefix(w, "size=") || strings.HasPrefix(w, "sha256=")
		})
		out[i].Text = strings.Join(words, " ")
	}
	return out
}

// overwrite sets a file's content, keeping its inode, mode and links.
func overwrite(p string, data []byte) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	for off := 0; off < len(data); {
		n, err := unix.Pwrite(fd, data[off:], int64(off))
		if err != nil {
			unix.Close(fd)
			return err
		}
		off += n
	}
	return unix.Close(fd)
}
