package fuse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh/meta"
)

// longCache gives a mount hour-long kernel cache timeouts, and the change
// feed when feed is set.
func longCache(feed bool) func(o *Options) {
	return func(o *Options) {
		o.EntryTimeout, o.AttrTimeout = time.Hour, time.Hour
		if feed {
			o.Feed = o.Meta.(*meta.Store)
		}
	}
}

// eventually polls check until it returns nil, for at most 5 s, and
// returns how long that took.
func eventually(t *testing.T, what string, check func() error) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		err := check()
		if err == nil {
			return time.Since(t0)
		}
		if time.Since(t0) > 5*time.Second {
			t.Fatalf("%s: not seen after 5 s (the kernel caches for an hour): %v", what, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func content(path, want string) func() error {
	return func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if string(b) != want {
			return errors.New("read " + string(b))
		}
		return nil
	}
}

func gone(path string) func() error {
	return func() error {
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			return errors.New("still there")
		}
		return nil
	}
}

// With hour-long kernel caches, a mount following the change feed sees each
// change another mount makes: new names, new content and size, new mode,
// renames and removals.
func TestOtherMountsChangesShowWithLongCaches(t *testing.T) {
	tm := newTestMesh(t)
	_, a := tm.mount(longCache(true))
	_, b := tm.mount(longCache(true))

	// b caches the names and attributes it looks at.
	if _, err := os.Stat(filepath.Join(b, "d")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat d before it exists: %v", err)
	}
	if err := os.Mkdir(filepath.Join(a, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(a, "d", "f"), []byte("one"))
	t.Logf("new file seen after %v", eventually(t, "new file", content(filepath.Join(b, "d", "f"), "one")))

	mustWrite(t, filepath.Join(a, "d", "f"), []byte("two two"))
	t.Logf("new content seen after %v", eventually(t, "rewritten file", content(filepath.Join(b, "d", "f"), "two two")))

	if err := os.Chmod(filepath.Join(a, "d", "f"), 0o600); err != nil {
		t.Fatal(err)
	}
	eventually(t, "chmod", func() error {
		st, err := os.Stat(filepath.Join(b, "d", "f"))
		if err != nil {
			return err
		}
		if st.Mode().Perm() != 0o600 {
			return errors.New("mode " + st.Mode().String())
		}
		return nil
	})

	if err := os.Rename(filepath.Join(a, "d", "f"), filepath.Join(a, "d", "g")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "rename: old name gone", gone(filepath.Join(b, "d", "f")))
	eventually(t, "rename: new name", content(filepath.Join(b, "d", "g"), "two two"))

	if err := os.Remove(filepath.Join(a, "d", "g")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "unlink", gone(filepath.Join(b, "d", "g")))
}

// The premise of the test above: without the feed, a mount with long caches
// keeps showing the old size to stat, so the test above would fail if the
// feed did nothing. (An open refreshes it: the kernel drops a file's cached
// pages at open, since meshfs does not ask it to keep them.)
func TestWithoutFeedLongCachesGoStale(t *testing.T) {
	tm := newTestMesh(t)
	_, a := tm.mount(longCache(true))
	_, b := tm.mount(longCache(false))
	mustWrite(t, filepath.Join(a, "f"), []byte("one"))
	if st, err := os.Stat(filepath.Join(b, "f")); err != nil || st.Size() != 3 {
		t.Fatalf("stat: %v", err)
	}
	mustWrite(t, filepath.Join(a, "f"), []byte("two two"))
	time.Sleep(500 * time.Millisecond)
	st, err := os.Stat(filepath.Join(b, "f"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 3 {
		t.Fatalf("without the feed b sees size %d at once; the kernel did not cache, so the feed test proves nothing", st.Size())
	}
}

// deafFeed delivers no changes, only the resets the test asks for: a feed
// that missed changes while it was cut off.
type deafFeed struct{ reset chan struct{} }

func (f deafFeed) Watch(ctx context.Context, fn func(meta.Change)) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.reset:
			fn(meta.Change{Kind: meta.ChangeReset})
		}
	}
}

// After a reset of the feed the mount drops what the kernel caches (names
// and attributes), rather than trusting it.
func TestFeedResetDropsKernelCaches(t *testing.T) {
	tm := newTestMesh(t)
	_, a := tm.mount(longCache(true))
	feed := deafFeed{reset: make(chan struct{})}
	_, b := tm.mount(func(o *Options) {
		o.EntryTimeout, o.AttrTimeout = time.Hour, time.Hour
		o.Feed = feed
	})
	if err := os.MkdirAll(filepath.Join(a, "d", "e"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(a, "d", "e", "f"), []byte("one"))
	if st, err := os.Stat(filepath.Join(b, "d", "e", "f")); err != nil || st.Size() != 3 {
		t.Fatalf("stat: %v", err)
	}
	mustWrite(t, filepath.Join(a, "d", "e", "f"), []byte("two two"))
	if err := os.Rename(filepath.Join(a, "d", "e"), filepath.Join(a, "d", "e2")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(b, "d", "e", "f")); err != nil {
		t.Fatalf("b forgot d/e/f before any reset (so its kernel does not cache, and this test proves nothing): %v", err)
	}
	feed.reset <- struct{}{}
	eventually(t, "old name after reset", gone(filepath.Join(b, "d", "e")))
	eventually(t, "new content after reset", func() error {
		st, err := os.Stat(filepath.Join(b, "d", "e2", "f"))
		if err != nil {
			return err
		}
		if st.Size() != 7 {
			return errors.New("stale size")
		}
		return nil
	})
}

// TestOpenFileRemovedByOtherMount: mount B holds a file open while mount A
// renames another file over it (an editor's save) and so removes its inode.
// B's handle goes on reading the content it opened, fstat shows it with no
// links, and opening the name on B gives the new file, even with the
// kernel caching the old name for an hour.
func TestOpenFileRemovedByOtherMount(t *testing.T) {
	t.Parallel()
	tm := newTestMesh(t)
	_, a := tm.mount(longCache(true))
	_, b := tm.mount(longCache(true))
	old, newer := randBytes(3*slot+100, 31), randBytes(2*slot+7, 32)
	mustWrite(t, filepath.Join(a, "f"), old)
	sameContent(t, "old content on B", mustRead(t, filepath.Join(b, "f")), old)

	f, err := os.Open(filepath.Join(b, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mustWrite(t, filepath.Join(a, "f.tmp"), newer)
	if err := os.Rename(filepath.Join(a, "f.tmp"), filepath.Join(a, "f")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new content through B's name", func() error {
		got, err := os.ReadFile(filepath.Join(b, "f"))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, newer) {
			return fmt.Errorf("read %d bytes, not the new %d", len(got), len(newer))
		}
		return nil
	})
	got, err := io.ReadAll(f)
	if err != nil {
		t.Fatalf("read through the handle opened before the rename: %v", err)
	}
	sameContent(t, "content through the handle opened before the rename", got, old)
	fi, err := f.Stat()
	if err != nil {
		t.Fatalf("fstat of the replaced file: %v", err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Nlink != 0 || fi.Size() != int64(len(old)) {
		t.Errorf("fstat of the replaced file: nlink %d, size %d; want 0, %d", st.Nlink, fi.Size(), len(old))
	}
}
