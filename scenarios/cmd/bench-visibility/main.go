// Command bench-visibility measures how long a change made through one
// meshfs mount takes to show through another mount of the same mesh.
//
// The writer is the mount of a 'meshfs up' this program starts in -work
// (-nodes nodes, the metadata at 3 current replicas, or 1 below 3 nodes, before
// it measures) and stops at the end. The observer is a second 'meshfs
// mount' of it, started twice: first with the
// default flags (--invalidate=true, a 10 s cache timeout: freshness comes
// from the change feed), then as the baseline with --invalidate=false
// --cache-timeout 1s (freshness from a fixed 1 s kernel cache timeout alone).
//
// Each change is one of four kinds, in equal shares: create a new file with
// content, rename the file, overwrite its content (with a new length), or
// chmod it. After the writer's syscall returns (close(2) for the two that
// write content), the observer polls its mount until it sees the new state:
// it reads the file for the content changes, stats the new name (and the
// old one, which must be gone) for a rename, and stats the mode for a chmod.
// The delay is the time from the writer's syscall returning to the
// observer's successful poll returning.
//
// Before each change a slot waits a random gap, uniform in [0, -gap), after
// it observed its previous change: the observer has just looked at the file,
// so with a fixed cache timeout what the kernel caches has a random age when
// the change comes, as for a reader that looks at the file now and then.
// Both modes run the same procedure, with -parallel slots (each its own
// files) at once.
//
// A freshly mounted observer follows the change feed only from a moment
// after its mount, and misses (until its cache timeout) changes made
// before; so before measuring, the default observer is probed until its
// feed invalidates a change, and feed_ready_ms reports how long after the
// mount that first worked (an upper bound of that window).
package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshfs/meshfs/scenarios/benchutil"
)

type kind int

const (
	kindCreate kind = iota
	kindRename
	kindWrite
	kindChmod
	nKinds
)

var kindNames = [nKinds]string{"create", "rename", "write", "chmod"}

type sample struct {
	kind  kind
	slot  int
	at    time.Duration // when the writer's syscall returned, since the observer was mounted
	delay time.Duration
	seen  bool // false: not seen within -timeout
}

type config struct {
	changes  int
	parallel int
	gap      time.Duration
	poll     time.Duration
	timeout  time.Duration
	samples  string
}

func main() {
	bin := flag.String("meshfs", "", "meshfs binary, for 'meshfs up', 'meshfs status' and 'meshfs mount'; required")
	work := flag.String("work", "", "directory for the mesh, the observer's mount points and logs (default: a new temporary directory)")
	nodes := flag.Int("nodes", 3, "nodes of the mesh")
	changes := flag.Int("changes", 1000, "changes measured with the default observer (--invalidate=true)")
	baseChanges := flag.Int("baseline-changes", 1000, "changes measured with the baseline observer (--invalidate=false --cache-timeout 1s); 0 skips it")
	parallel := flag.Int("parallel", 8, "slots changing files at once (each slot its own files, one change at a time)")
	gap := flag.Duration("gap", time.Second, "each slot waits a random time in [0, gap) between its changes")
	poll := flag.Duration("poll", 500*time.Microsecond, "pause between the observer's polls (0: a tight loop)")
	timeout := flag.Duration("timeout", 30*time.Second, "give up on a change not seen after this long (counted as missed)")
	samplesTo := flag.String("samples", "", "also write every change (observer, kind, slot, ms since the observer was mounted, delay ms, seen) to this file")
	flag.Parse()
	if *bin == "" || *nodes < 1 || *changes < 1 || *parallel < 1 || *baseChanges < 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *work, *nodes, *baseChanges, config{
		changes: *changes, parallel: *parallel, gap: *gap, poll: *poll, timeout: *timeout, samples: *samplesTo,
	}); err != nil {
		fmt.Fprintln(os.Stderr, "bench-visibility:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench-visibility: "+format+"\n", args...)
}

func run(ctx context.Context, bin, work string, nodes, baseChanges int, cfg config) (err error) {
	syscall.Umask(0) // modes are exactly what the benchmark sets
	if work == "" {
		if work, err = os.MkdirTemp("", "bench-visibility."); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	mesh, err := benchutil.Up(ctx, bin, filepath.Join(work, "mesh"), nodes, logf)
	if err != nil {
		return err
	}
	defer func() {
		if serr := mesh.Stop(); serr != nil && err == nil {
			err = fmt.Errorf("stopping the mesh: %w", serr)
		}
	}()

	// measure mounts an observer with mountFlags and measures changes
	// through it. With probe, it first waits until the observer's change
	// feed delivers invalidations, and returns how long after the mount
	// that was.
	measure := func(name string, changes int, probe bool, mountFlags ...string) ([]sample, time.Duration, error) {
		wdir := filepath.Join(mesh.Mount(), "visibility-"+name)
		if err := os.Mkdir(wdir, 0o755); err != nil {
			return nil, 0, err
		}
		mnt := filepath.Join(work, "observer-"+name)
		if err := os.Mkdir(mnt, 0o755); err != nil {
			return nil, 0, err
		}
		mctx, cancel := context.WithTimeout(ctx, time.Minute)
		unmount, err := mesh.MountAgain(mctx, mnt, mountFlags...)
		cancel()
		if err != nil {
			return nil, 0, err
		}
		mountedAt := time.Now()
		defer func() {
			if uerr := unmount(); uerr != nil {
				logf("%v", uerr)
			}
		}()
		odir := filepath.Join(mnt, filepath.Base(wdir))
		var ready time.Duration
		if probe {
			if ready, err = probeFeed(ctx, wdir, odir, mountedAt); err != nil {
				return nil, 0, err
			}
			logf("%s: the observer's feed invalidated a change made %.0f ms after it was mounted", name, ms64(ready))
		}
		c := cfg
		c.changes = changes
		logf("%s: %d changes, observer 'meshfs mount %s'", name, changes, strings.Join(mountFlags, " "))
		start := time.Now()
		s, err := measureMode(ctx, wdir, odir, mountedAt, c)
		logf("%s: done in %.0fs", name, time.Since(start).Seconds())
		return s, ready, err
	}

	feed, feedReady, err := measure("invalidate", cfg.changes, true)
	if err != nil {
		return err
	}
	var base []sample
	if baseChanges > 0 {
		if base, _, err = measure("baseline", baseChanges, false, "--invalidate=false", "--cache-timeout", "1s"); err != nil {
			return err
		}
	}

	results := []struct {
		name string
		s    []sample
	}{{"invalidate", feed}, {"baseline", base}}
	for _, m := range results {
		if len(m.s) == 0 {
			continue
		}
		for k := range nKinds {
			var d []time.Duration
			for _, s := range m.s {
				if s.kind == k {
					d = append(d, s.delay)
				}
			}
			if len(d) == 0 {
				continue
			}
			sum := summarize(d)
			fmt.Printf("bench=visibility observer=%s kind=%s changes=%d p50_ms=%s p99_ms=%s max_ms=%s\n",
				m.name, kindNames[k], len(d), ms(sum.p50), ms(sum.p99), ms(sum.max))
		}
	}
	for _, m := range results {
		slowest := slices.SortedFunc(slices.Values(m.s), func(a, b sample) int { return cmp.Compare(b.delay, a.delay) })
		var top []string
		for _, s := range slowest[:min(5, len(slowest))] {
			top = append(top, fmt.Sprintf("%s %sms", kindNames[s.kind], ms(s.delay)))
		}
		if len(top) > 0 {
			logf("%s: slowest: %s", m.name, strings.Join(top, ", "))
		}
	}
	if cfg.samples != "" {
		var buf bytes.Buffer
		fmt.Fprintln(&buf, "observer kind slot at_ms delay_ms seen")
		for _, m := range results {
			for _, x := range m.s {
				fmt.Fprintf(&buf, "%s %s %d %s %s %v\n", m.name, kindNames[x.kind], x.slot, ms(x.at), ms(x.delay), x.seen)
			}
		}
		if err := os.WriteFile(cfg.samples, buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	f := summarize(delays(feed))
	line := fmt.Sprintf("bench=visibility changes=%d missed=%d p50_ms=%s p99_ms=%s max_ms=%s feed_ready_ms=%.0f",
		len(feed), missed(feed), ms(f.p50), ms(f.p99), ms(f.max), ms64(feedReady))
	if len(base) > 0 {
		bs := summarize(delays(base))
		ratio := "inf"
		if bs.p99 > 0 {
			ratio = fmt.Sprintf("%.3f", float64(f.p99)/float64(bs.p99))
		}
		line += fmt.Sprintf(" baseline_changes=%d baseline_missed=%d baseline_p50_ms=%s baseline_p99_ms=%s baseline_max_ms=%s ratio_p99=%s",
			len(base), missed(base), ms(bs.p50), ms(bs.p99), ms(bs.max), ratio)
	}
	line += fmt.Sprintf(" parallel=%d gap_ms=%d poll_us=%d", cfg.parallel, cfg.gap.Milliseconds(), cfg.poll.Microseconds())
	fmt.Println(line)
	return nil
}

// slot is one file a slot goroutine changes, as the writer left it.
type slot struct {
	id      int
	n       int // names made so far
	name    string
	content []byte
	mode    uint32
}

// measureMode makes cfg.changes changes under wdir (the writer's mount) and
// times how long each takes to show under odir (the same directory through
// the observer's mount).
func measureMode(ctx context.Context, wdir, odir string, mountedAt time.Time, cfg config) ([]sample, error) {
	var (
		next    atomic.Int64
		mu      sync.Mutex
		samples []sample
		wg      sync.WaitGroup
		errOnce sync.Once
		firstEr error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) {
		errOnce.Do(func() { firstEr = err; cancel() })
	}
	for i := range cfg.parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
			s := &slot{id: i}
			// Unmeasured warm-up: a file the observer has looked at.
			if _, err := s.change(kindCreate, wdir, rng); err != nil {
				fail(err)
				return
			}
			if _, ok, err := s.observe(ctx, kindCreate, odir, "", time.Now(), cfg); err != nil || !ok {
				fail(fmt.Errorf("warm-up: slot %d never saw its first file: %v", i, err))
				return
			}
			for {
				t := next.Add(1) - 1
				if t >= int64(cfg.changes) {
					return
				}
				if err := benchutil.Sleep(ctx, time.Duration(rng.Int64N(int64(cfg.gap)+1))); err != nil {
					return
				}
				k := kind(t % int64(nKinds))
				old, err := s.change(k, wdir, rng)
				if err != nil {
					fail(fmt.Errorf("writer: %s: %w", kindNames[k], err))
					return
				}
				t0 := time.Now()
				d, ok, err := s.observe(ctx, k, odir, old, t0, cfg)
				if err != nil {
					if ctx.Err() == nil {
						fail(fmt.Errorf("observer: %s: %w", kindNames[k], err))
					}
					return
				}
				mu.Lock()
				samples = append(samples, sample{kind: k, slot: i, at: t0.Sub(mountedAt), delay: d, seen: ok})
				n := len(samples)
				mu.Unlock()
				if !ok {
					logf("%s of %s not seen after %v", kindNames[k], s.name, cfg.timeout)
				}
				if n%100 == 0 {
					logf("%d/%d changes", n, cfg.changes)
				}
			}
		}()
	}
	wg.Wait()
	if firstEr != nil {
		return nil, firstEr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return samples, nil
}

// change makes one change of kind k through the writer's mount and returns
// the file's previous name (for a rename).
func (s *slot) change(k kind, wdir string, rng *rand.Rand) (old string, err error) {
	old = s.name
	switch k {
	case kindCreate:
		s.n++
		s.name = fmt.Sprintf("s%d-%d", s.id, s.n)
		s.content = s.newContent(rng)
		s.mode = 0o644
		return old, writeFile(filepath.Join(wdir, s.name), s.content, os.O_CREATE|os.O_EXCL, s.mode)
	case kindRename:
		s.n++
		s.name = fmt.Sprintf("s%d-%d", s.id, s.n)
		return old, os.Rename(filepath.Join(wdir, old), filepath.Join(wdir, s.name))
	case kindWrite:
		s.content = s.newContent(rng)
		return old, writeFile(filepath.Join(wdir, s.name), s.content, os.O_TRUNC, 0)
	case kindChmod:
		modes := []uint32{0o600, 0o640, 0o644, 0o660, 0o664, 0o604}
		m := s.mode
		for m == s.mode {
			m = modes[rng.IntN(len(modes))]
		}
		s.mode = m
		return old, os.Chmod(filepath.Join(wdir, s.name), os.FileMode(m))
	}
	return old, fmt.Errorf("unknown kind %d", k)
}

// newContent returns content unlike the slot's current content, of another
// length (so a reader with stale attributes sees the wrong size).
func (s *slot) newContent(rng *rand.Rand) []byte {
	n := len(s.content)
	for n == len(s.content) {
		n = 64 + rng.IntN(4033)
	}
	b := make([]byte, n)
	copy(b, fmt.Sprintf("slot %d name %d %x\n", s.id, s.n, rng.Uint64()))
	for i := 40; i < n; i++ {
		b[i] = 'a' + byte(rng.IntN(26))
	}
	return b
}

// writeFile writes content to path with open(flags|O_WRONLY), write, close:
// close returns once meshfs has committed the content.
func writeFile(path string, content []byte, flags int, mode uint32) error {
	f, err := os.OpenFile(path, flags|os.O_WRONLY, os.FileMode(mode))
	if err != nil {
		return err
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// observe polls the observer's mount until it shows the slot's state after
// a change of kind k, and returns the time from t0 to the poll that saw it.
func (s *slot) observe(ctx context.Context, k kind, odir, old string, t0 time.Time, cfg config) (time.Duration, bool, error) {
	path := filepath.Join(odir, s.name)
	var check func() bool
	switch k {
	case kindCreate, kindWrite:
		check = func() bool {
			b, err := os.ReadFile(path)
			return err == nil && bytes.Equal(b, s.content)
		}
	case kindRename:
		oldPath := filepath.Join(odir, old)
		check = func() bool {
			var st syscall.Stat_t
			if syscall.Lstat(path, &st) != nil {
				return false
			}
			return errors.Is(syscall.Lstat(oldPath, &st), syscall.ENOENT)
		}
	case kindChmod:
		check = func() bool {
			var st syscall.Stat_t
			return syscall.Lstat(path, &st) == nil && st.Mode&0o7777 == s.mode
		}
	}
	for {
		ok := check()
		now := time.Now()
		if ok {
			return now.Sub(t0), true, nil
		}
		if now.Sub(t0) > cfg.timeout {
			// Missed, unless the observer's mount is gone (a dead one
			// answers ENOTCONN; an unmounted one has no odir). Statfs
			// is never answered from the kernel's caches.
			var fs syscall.Statfs_t
			if err := syscall.Statfs(odir, &fs); err != nil {
				return 0, false, fmt.Errorf("the observer's mount is gone: %w", err)
			}
			return now.Sub(t0), false, nil
		}
		if err := ctx.Err(); err != nil {
			return 0, false, err
		}
		if cfg.poll > 0 {
			time.Sleep(cfg.poll)
		}
	}
}

type summary struct{ p50, p99, max time.Duration }

// summarize gives nearest-rank percentiles.
func summarize(d []time.Duration) summary {
	if len(d) == 0 {
		return summary{}
	}
	d = slices.Clone(d)
	slices.Sort(d)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		return d[max(i, 0)]
	}
	return summary{p50: rank(0.50), p99: rank(0.99), max: d[len(d)-1]}
}

// delays lists every sample's delay; one not seen counts as the time the
// observer gave up, so missed changes push the percentiles up.
func delays(s []sample) []time.Duration {
	var d []time.Duration
	for _, x := range s {
		d = append(d, x.delay)
	}
	return d
}

func missed(s []sample) int {
	n := 0
	for _, x := range s {
		if !x.seen {
			n++
		}
	}
	return n
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", ms64(d)) }

func ms64(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// probeFeed waits until the observer's change feed works: a freshly mounted
// observer starts following the feed only after it is mounted, and a change
// committed before that is never invalidated (the observer shows the state
// it cached until its cache timeout). Each probe is a new file the observer
// stats (so its kernel caches the attributes) and the writer then chmods;
// the probe succeeds when the observer sees the new mode within probeWait.
// It returns when the first successful probe's chmod returned, measured
// from mountedAt: an upper bound on how long after the mount the observer
// misses other mounts' changes.
func probeFeed(ctx context.Context, wdir, odir string, mountedAt time.Time) (time.Duration, error) {
	const probeWait = 200 * time.Millisecond
	deadline := mountedAt.Add(time.Minute)
	for i := 0; ; i++ {
		if time.Now().After(deadline) {
			return 0, errors.New("the observer's change feed did not invalidate a change within a minute of its mount")
		}
		name := fmt.Sprintf("probe-%d", i)
		if err := writeFile(filepath.Join(wdir, name), []byte("probe\n"), os.O_CREATE|os.O_EXCL, 0o644); err != nil {
			return 0, err
		}
		var st syscall.Stat_t
		for err := syscall.Lstat(filepath.Join(odir, name), &st); err != nil; err = syscall.Lstat(filepath.Join(odir, name), &st) {
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("the observer does not show %s a minute after its mount: %w", name, err)
			}
			if err := benchutil.Sleep(ctx, time.Millisecond); err != nil {
				return 0, err
			}
		}
		if err := os.Chmod(filepath.Join(wdir, name), 0o600); err != nil {
			return 0, err
		}
		at := time.Since(mountedAt)
		for t := time.Now(); time.Since(t) < probeWait; {
			if syscall.Lstat(filepath.Join(odir, name), &st) == nil && st.Mode&0o7777 == 0o600 {
				return at, nil
			}
			if err := benchutil.Sleep(ctx, 500*time.Microsecond); err != nil {
				return 0, err
			}
		}
	}
}
