package posixdiff

import (
	"cmp"
	"fmt"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockSlack is how far behind the caller's clock a timestamp the file
// system set during a call may be: kernels stamp files from a coarse clock
// that lags the fine one by up to a tick (4 to 10 ms).
const clockSlack = 20 * time.Millisecond

// watch holds one object's attributes from before a call, to check the
// call's timestamp rules afterwards against the side's own clock: a
// timestamp "marked for update" must lie within the call, one that must be
// left alone must not change. Only the verdicts go into the Result; two
// trees' clocks are never compared.
type watch struct {
	s      *Side
	label  string // how the object is named in a report
	path   string // relative path, when not a slot
	slot   int    // -1 when path
	follow bool   // stat through a symlink
	pre    unix.Stat_t
	preErr error
	t0     time.Time
}

func (s *Side) watchPath(label, p string, follow bool) *watch {
	w := &watch{s: s, label: label, path: p, slot: -1, follow: follow}
	w.start()
	return w
}

// watchParent watches the directory holding p, labelled "dir(D)".
func (s *Side) watchParent(p string) *watch {
	return s.watchPath("dir("+cmp.Or(parentOf(p), ".")+")", parentOf(p), true)
}

func (s *Side) watchSlot(slot int) *watch {
	w := &watch{s: s, label: slotLabel(slot), slot: slot}
	w.start()
	return w
}

// slotLabel names a handle slot in reports: "h3".
func slotLabel(slot int) string { return fmt.Sprintf("h%d", slot) }

// start records the object before the call, and the time the call starts.
// On a side settling the current kind of call, it first waits until the
// object's mtime and ctime lie more than the clock slack in the past.
func (w *watch) start() {
	w.preErr = w.stat(&w.pre)
	if w.s.settle && w.s.current == w.s.settleKind && w.preErr == nil {
		newest := time.Unix(w.pre.Mtim.Unix())
		if c := time.Unix(w.pre.Ctim.Unix()); c.After(newest) {
			newest = c
		}
		if wait := time.Until(newest.Add(clockSlack + time.Millisecond)); wait > 0 {
			time.Sleep(min(wait, time.Second))
		}
	}
	w.t0 = time.Now()
}

func (w *watch) stat(st *unix.Stat_t) error {
	if w.slot >= 0 {
		return retry(func() error { return unix.Fstat(w.s.fd(w.slot), st) })
	}
	flags := unix.AT_SYMLINK_NOFOLLOW
	if w.follow {
		flags = 0
	}
	return retry(func() error { return unix.Fstatat(unix.AT_FDCWD, w.s.abs(w.path), st, flags) })
}

// stamp is one named timestamp of a stat.
type stamp struct {
	name string
	ts   unix.Timespec
}

// stampsOf picks the fields ("m" for mtime, "c" for ctime) of a stat.
func stampsOf(st *unix.Stat_t, fields string) []stamp {
	var out []stamp
	for _, f := range fields {
		switch f {
		case 'm':
			out = append(out, stamp{"mtime", st.Mtim})
		case 'c':
			out = append(out, stamp{"ctime", st.Ctim})
		}
	}
	return out
}

// updated checks that the fields ("m", "c" or "mc") were set to a time
// within the call: from t0 (less the clock slack) to now.
func (w *watch) updated(r *Result, fields string) {
	var st unix.Stat_t
	if err := w.stat(&st); err != nil {
		r.Times = append(r.Times, fmt.Sprintf("%s: stat after the call: %s", w.label, errnoName(errnoOf(err))))
		return
	}
	t1 := time.Now()
	for _, f := range stampsOf(&st, fields) {
		ts := time.Unix(f.ts.Unix())
		switch {
		case ts.Before(w.t0.Add(-clockSlack)):
			r.Times = append(r.Times, fmt.Sprintf("%s %s not updated", w.label, f.name))
			addNote(r, fmt.Sprintf("%s %s of %s is %v before the call", w.label, f.name, ts.Format(time.RFC3339Nano), w.t0.Sub(ts)))
		case ts.After(t1.Add(clockSlack)):
			r.Times = append(r.Times, fmt.Sprintf("%s %s in the future", w.label, f.name))
			addNote(r, fmt.Sprintf("%s %s of %s is %v after the call", w.label, f.name, ts.Format(time.RFC3339Nano), ts.Sub(t1)))
		}
	}
}

// kept checks that the fields did not change in the call. Without an
// object before the call there is nothing to keep.
func (w *watch) kept(r *Result, fields string) {
	if w.preErr != nil {
		return
	}
	var st unix.Stat_t
	if err := w.stat(&st); err != nil {
		r.Times = append(r.Times, fmt.Sprintf("%s: stat after the call: %s", w.label, errnoName(errnoOf(err))))
		return
	}
	before := stampsOf(&w.pre, fields)
	for i, f := range stampsOf(&st, fields) {
		if f.ts != before[i].ts {
			r.Times = append(r.Times, fmt.Sprintf("%s %s changed", w.label, f.name))
			addNote(r, fmt.Sprintf("%s %s %s -> %s", w.label, f.name, timespecString(before[i].ts), timespecString(f.ts)))
		}
	}
}

func addNote(r *Result, s string) {
	if r.Note == "" {
		r.Note = s
		return
	}
	r.Note = strings.Join([]string{r.Note, s}, "; ")
}
