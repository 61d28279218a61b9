// Command bench-visibility measures how long a change made through one
// meshfs mount takes to show through another mount of the same mesh.
//
// The writer is the mount of 'meshfs up' (the -up directory). The observer
// is a second 'meshfs mount' this program starts, twice: first with the
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
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type upState struct {
	Mount      string `json:"mount"`
	SecretFile string `json:"secret_file"`
	Nodes      []struct {
		Name string `json:"name"`
		HTTP string `json:"http"`
	} `json:"nodes"`
}

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
	upDir := flag.String("up", "", "directory of a running 'meshfs up' (reads DIR/up.json); required")
	bin := flag.String("meshfs", "", "meshfs binary, for 'meshfs status' and 'meshfs mount'; required")
	work := flag.String("work", "", "directory for the observer's mount points and logs (default: a new temporary directory)")
	changes := flag.Int("changes", 1000, "changes measured with the default observer (--invalidate=true)")
	baseChanges := flag.Int("baseline-changes", 1000, "changes measured with the baseline observer (--invalidate=false --cache-timeout 1s); 0 skips it")
	parallel := flag.Int("parallel", 8, "slots changing files at once (each slot its own files, one change at a time)")
	gap := flag.Duration("gap", time.Second, "each slot waits a random time in [0, gap) between its changes")
	poll := flag.Duration("poll", 500*time.Microsecond, "pause between the observer's polls (0: a tight loop)")
	timeout := flag.Duration("timeout", 30*time.Second, "give up on a change not seen after this long (counted as missed)")
	samplesTo := flag.String("samples", "", "also write every change (observer, kind, slot, ms since the observer was mounted, delay ms, seen) to this file")
	flag.Parse()
	if *upDir == "" || *bin == "" || *changes < 1 || *parallel < 1 || *baseChanges < 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *upDir, *bin, *work, *baseChanges, config{
		changes: *changes, parallel: *parallel, gap: *gap, poll: *poll, timeout: *timeout, samples: *samplesTo,
	}); err != nil {
		fmt.Fprintln(os.Stderr, "bench-visibility:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, upDir, bin, work string, baseChanges int, cfg config) error {
	syscall.Umask(0) // modes are exactly what the benchmark sets
	var st upState
	b, err := os.ReadFile(filepath.Join(upDir, "up.json"))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("up.json: %w", err)
	}
	if work == "" {
		if work, err = os.MkdirTemp("", "bench-visibility."); err != nil {
			return err
		}
		defer os.RemoveAll(work)
	}
	if err := waitMetadata(ctx, bin, upDir, min(len(st.Nodes), 3)); err != nil {
		return err
	}

	// measure mounts an observer with mountFlags and measures changes
	// through it. With probe, it first waits until the observer's change
	// feed delivers invalidations, and returns how long after the mount
	// that was.
	measure := func(name string, changes int, probe bool, mountFlags ...string) ([]sample, time.Duration, error) {
		wdir := filepath.Join(st.Mount, "visibility-"+name)
		if err := os.Mkdir(wdir, 0o755); err != nil {
			return nil, 0, err
		}
		mnt := filepath.Join(work, "observer-"+name)
		if err := os.Mkdir(mnt, 0o755); err != nil {
			return nil, 0, err
		}
		unmount, err := mountAgain(ctx, bin, st, mnt, mountFlags...)
		if err != nil {
			return nil, 0, err
		}
		mountedAt := time.Now()
		defer func() {
			if uerr := unmount(); uerr != nil {
				fmt.Fprintln(os.Stderr, "bench-visibility:", uerr)
			}
		}()
		odir := filepath.Join(mnt, filepath.Base(wdir))
		var ready time.Duration
		if probe {
			if ready, err = probeFeed(ctx, wdir, odir, mountedAt); err != nil {
				return nil, 0, err
			}
			fmt.Fprintf(os.Stderr, "bench-visibility: %s: the observer's feed invalidated a change made %.0f ms after it was mounted\n", name, ms64(ready))
		}
		c := cfg
		c.changes = changes
		fmt.Fprintf(os.Stderr, "bench-visibility: %s: %d changes, observer 'meshfs mount %s'\n", name, changes, strings.Join(mountFlags, " "))
		start := time.Now()
		s, err := measureMode(ctx, wdir, odir, mountedAt, c)
		fmt.Fprintf(os.Stderr, "bench-visibility: %s: done in %.0fs\n", name, time.Since(start).Seconds())
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
			fmt.Fprintf(os.Stderr, "bench-visibility: %s: slowest: %s\n", m.name, strings.Join(top, ", "))
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
				if err := sleep(ctx, time.Duration(rng.Int64N(int64(cfg.gap)+1))); err != nil {
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
					fmt.Fprintf(os.Stderr, "bench-visibility: %s of %s not seen after %v\n", kindNames[k], s.name, cfg.timeout)
				}
				if n%100 == 0 {
					fmt.Fprintf(os.Stderr, "bench-visibility: %d/%d changes\n", n, cfg.changes)
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
	for i := 0; ; i++ {
		if time.Since(mountedAt) > time.Minute {
			return 0, errors.New("the observer's change feed did not invalidate a change within a minute of its mount")
		}
		name := fmt.Sprintf("probe-%d", i)
		if err := writeFile(filepath.Join(wdir, name), []byte("probe\n"), os.O_CREATE|os.O_EXCL, 0o644); err != nil {
			return 0, err
		}
		var st syscall.Stat_t
		for syscall.Lstat(filepath.Join(odir, name), &st) != nil {
			if err := sleep(ctx, time.Millisecond); err != nil {
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
			if err := sleep(ctx, 500*time.Microsecond); err != nil {
				return 0, err
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// waitMetadata waits until 'meshfs status' shows the metadata bucket with
// want replicas, all of them current.
func waitMetadata(ctx context.Context, bin, upDir string, want int) error {
	deadline := time.Now().Add(3 * time.Minute)
	var last string
	for {
		out, err := exec.CommandContext(ctx, bin, "status", "--up", upDir, "--json").Output()
		var rep struct {
			Metadata struct {
				Replicas int    `json:"replicas"`
				Current  int    `json:"current"`
				Leader   string `json:"leader"`
			} `json:"metadata"`
		}
		if err == nil && json.Unmarshal(out, &rep) == nil {
			m := rep.Metadata
			if m.Replicas == want && m.Current == want && m.Leader != "" {
				fmt.Fprintf(os.Stderr, "bench-visibility: metadata: %d replicas, %d current, leader %s\n", m.Replicas, m.Current, m.Leader)
				return nil
			}
			last = fmt.Sprintf("replicas=%d current=%d leader=%q", m.Replicas, m.Current, m.Leader)
		} else {
			last = fmt.Sprint(err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("metadata not at %d current replicas within 3 minutes (last: %s)", want, last)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
}

// mountAgain mounts the mesh at mnt with 'meshfs mount', waits until it is
// mounted, and returns a function that unmounts it and waits for the
// process to end.
func mountAgain(ctx context.Context, bin string, st upState, mnt string, extra ...string) (func() error, error) {
	args := []string{"mount", mnt, "--secret-file", st.SecretFile}
	for _, n := range st.Nodes {
		args = append(args, "--join", n.HTTP)
	}
	args = append(args, extra...)
	cmd := exec.Command(bin, args...)
	logPath := mnt + ".log"
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd.Stderr = lf
	out, err := cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	// Should this program die, the mount goes too (it unmounts on SIGTERM).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); lf.Close() }()
	mounted := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "meshfs mounted at") {
				close(mounted)
				break
			}
		}
		io.Copy(io.Discard, out)
	}()
	unmount := func() error {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			done <- err
			if err != nil {
				return fmt.Errorf("meshfs mount %s: %v (log %s)", mnt, err, logPath)
			}
			return nil
		case <-time.After(45 * time.Second):
			cmd.Process.Kill()
			<-done
			syscall.Unmount(mnt, syscall.MNT_DETACH)
			return fmt.Errorf("meshfs mount %s did not stop within 45s of SIGTERM; killed", mnt)
		}
	}
	select {
	case <-mounted:
		return unmount, nil
	case err := <-done:
		done <- err
		b, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("meshfs mount exited (%v): %s", err, bytes.TrimSpace(b))
	case <-time.After(60 * time.Second):
		unmount()
		return nil, errors.New("meshfs mount not mounted within 60s")
	case <-ctx.Done():
		unmount()
		return nil, ctx.Err()
	}
}
