package meta

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func TestRootExists(t *testing.T) {
	ctx := ctxT(t)
	bucket := newBucket()
	s := openTestStore(t, bucket)
	root := must[Attr](t)(s.GetAttr(ctx, RootIno))
	if root.Ino != RootIno || root.Mode != syscall.S_IFDIR|0o755 || root.Nlink != 2 || root.Uid != 0 || root.Gid != 0 || !root.IsDir() {
		t.Fatalf("root = %+v", root)
	}
	if root.Mtime == 0 || root.Ctime == 0 || root.Atime == 0 {
		t.Fatalf("root times unset: %+v", root)
	}
	// A second store on the bucket binds to it and keeps the root.
	s2 := openTestStore(t, bucket)
	if again := must[Attr](t)(s2.GetAttr(ctx, RootIno)); again != root {
		t.Fatalf("root changed by a second Open: %+v, was %+v", again, root)
	}
	if ents := must[[]DirEntry](t)(s.ReadDir(ctx, RootIno)); len(ents) != 0 {
		t.Fatalf("fresh root lists %v", ents)
	}
}

func TestCreateLookupGetAttr(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	before := must[Attr](t)(s.GetAttr(ctx, RootIno))
	a := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644|syscall.S_IFDIR /* type bits are ignored */, 1000, 100))
	if a.Ino < 2 || a.Mode != syscall.S_IFREG|0o644 || a.Uid != 1000 || a.Gid != 100 || a.Nlink != 1 || a.Size != 0 || a.IsDir() {
		t.Fatalf("created %+v", a)
	}
	if a.Mtime == 0 || a.Ctime != a.Mtime || a.Atime != a.Mtime {
		t.Fatalf("times of a new file: %+v", a)
	}
	if got := must[Attr](t)(s.Lookup(ctx, RootIno, "f")); got != a {
		t.Fatalf("lookup = %+v, want %+v", got, a)
	}
	if got := must[Attr](t)(s.GetAttr(ctx, a.Ino)); got != a {
		t.Fatalf("getattr = %+v, want %+v", got, a)
	}
	root := must[Attr](t)(s.GetAttr(ctx, RootIno))
	if root.Mtime < a.Mtime || root.Ctime < a.Mtime || root.Mtime <= before.Mtime || root.Nlink != 2 {
		t.Fatalf("parent after create: %+v (before %+v)", root, before)
	}
	d := must[Attr](t)(s.Mkdir(ctx, RootIno, "d", 0o700, 5, 6))
	if d.Mode != syscall.S_IFDIR|0o700 || d.Nlink != 2 || !d.IsDir() {
		t.Fatalf("mkdir = %+v", d)
	}
	if root := must[Attr](t)(s.GetAttr(ctx, RootIno)); root.Nlink != 3 {
		t.Fatalf("root nlink after mkdir = %d, want 3", root.Nlink)
	}
	l := must[Attr](t)(s.Symlink(ctx, d.Ino, "l", "../f", 5, 6))
	if l.Mode != syscall.S_IFLNK|0o777 || l.Target != "../f" || l.Size != 4 || l.Nlink != 1 {
		t.Fatalf("symlink = %+v", l)
	}
	if got := must[Attr](t)(s.Lookup(ctx, d.Ino, "l")); got.Target != "../f" {
		t.Fatalf("lookup symlink = %+v", got)
	}
	_, err := s.Symlink(ctx, d.Ino, "empty", "", 0, 0)
	wantErrno(t, err, syscall.ENOENT)

	ents := must[[]DirEntry](t)(s.ReadDir(ctx, RootIno))
	want := []DirEntry{{Name: "d", Ino: d.Ino, Mode: syscall.S_IFDIR}, {Name: "f", Ino: a.Ino, Mode: syscall.S_IFREG}}
	if !slices.Equal(ents, want) {
		t.Fatalf("readdir = %+v, want %+v", ents, want)
	}
}

func TestExistsAndMissing(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	f := must[Attr](t)(s.Create(ctx, RootIno, "x", 0o644, 0, 0))
	must[Attr](t)(s.Mkdir(ctx, RootIno, "dir", 0o755, 0, 0))

	_, err := s.Create(ctx, RootIno, "x", 0o644, 0, 0)
	wantErrno(t, err, syscall.EEXIST)
	_, err = s.Mkdir(ctx, RootIno, "x", 0o755, 0, 0)
	wantErrno(t, err, syscall.EEXIST)
	_, err = s.Mkdir(ctx, RootIno, "dir", 0o755, 0, 0)
	wantErrno(t, err, syscall.EEXIST)
	_, err = s.Symlink(ctx, RootIno, "dir", "t", 0, 0)
	wantErrno(t, err, syscall.EEXIST)

	_, err = s.GetAttr(ctx, 999999)
	wantErrno(t, err, syscall.ENOENT)
	_, err = s.Lookup(ctx, RootIno, "nope")
	wantErrno(t, err, syscall.ENOENT)
	_, err = s.Lookup(ctx, 999999, "nope")
	wantErrno(t, err, syscall.ENOENT)
	_, err = s.Lookup(ctx, f.Ino, "nope")
	wantErrno(t, err, syscall.ENOTDIR)
	_, err = s.Create(ctx, 999999, "y", 0o644, 0, 0)
	wantErrno(t, err, syscall.ENOENT)
	_, err = s.Create(ctx, f.Ino, "y", 0o644, 0, 0)
	wantErrno(t, err, syscall.ENOTDIR)
	_, err = s.Mkdir(ctx, f.Ino, "y", 0o755, 0, 0)
	wantErrno(t, err, syscall.ENOTDIR)
	_, err = s.ReadDir(ctx, f.Ino)
	wantErrno(t, err, syscall.ENOTDIR)
	_, err = s.ReadDir(ctx, 999999)
	wantErrno(t, err, syscall.ENOENT)
	_, err = s.Unlink(ctx, RootIno, "nope")
	wantErrno(t, err, syscall.ENOENT)
	wantErrno(t, errOf(s.Rmdir(ctx, RootIno, "nope")), syscall.ENOENT)
	_, _, err = s.Rename(ctx, RootIno, "nope", RootIno, "other", 0)
	wantErrno(t, err, syscall.ENOENT)
	_, err = s.SetAttr(ctx, 999999, SetAttrIn{})
	wantErrno(t, err, syscall.ENOENT)
}

func TestNameRules(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	long := strings.Repeat("n", MaxNameLen)
	a := must[Attr](t)(s.Create(ctx, RootIno, long, 0o644, 0, 0))
	if got := must[Attr](t)(s.Lookup(ctx, RootIno, long)); got.Ino != a.Ino {
		t.Fatalf("lookup of a %d-byte name = %+v", MaxNameLen, got)
	}
	_, err := s.Create(ctx, RootIno, long+"n", 0o644, 0, 0)
	wantErrno(t, err, syscall.ENAMETOOLONG)
	_, err = s.Mkdir(ctx, RootIno, long+"n", 0o755, 0, 0)
	wantErrno(t, err, syscall.ENAMETOOLONG)
	_, err = s.Lookup(ctx, RootIno, long+"n")
	wantErrno(t, err, syscall.ENAMETOOLONG)
	// Multi-byte characters count in bytes.
	_, err = s.Create(ctx, RootIno, strings.Repeat("ü", 128), 0o644, 0, 0)
	wantErrno(t, err, syscall.ENAMETOOLONG)
	for _, bad := range []string{"", ".", "..", "a/b", "/", "nul\x00"} {
		_, err = s.Create(ctx, RootIno, bad, 0o644, 0, 0)
		wantErrno(t, err, syscall.EINVAL)
		_, err = s.Mkdir(ctx, RootIno, bad, 0o755, 0, 0)
		wantErrno(t, err, syscall.EINVAL)
		_, err = s.Link(ctx, a.Ino, RootIno, bad)
		wantErrno(t, err, syscall.EINVAL)
		_, _, err = s.Rename(ctx, RootIno, long, RootIno, bad, 0)
		wantErrno(t, err, syscall.EINVAL)
	}
}

func TestOddNames(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	odd := []string{"a b", "ü", ".hidden", "a.b.c", "*", ">", "A", "a", "-", "_", "=", "~x", "日本語", "tab\there", "\xff\xfe", "..."}
	inos := map[string]Ino{}
	for _, n := range odd {
		inos[n] = must[Attr](t)(s.Create(ctx, RootIno, n, 0o644, 0, 0)).Ino
	}
	for _, n := range odd {
		if got := must[Attr](t)(s.Lookup(ctx, RootIno, n)); got.Ino != inos[n] {
			t.Fatalf("lookup %q = %d, want %d", n, got.Ino, inos[n])
		}
	}
	ents := must[[]DirEntry](t)(s.ReadDir(ctx, RootIno))
	want := slices.Clone(odd)
	sort.Strings(want)
	if got := names(ents); got != strings.Join(want, ",") {
		t.Fatalf("readdir = %q, want %q", got, want)
	}
	for _, e := range ents {
		if e.Ino != inos[e.Name] || e.Mode != syscall.S_IFREG {
			t.Fatalf("entry %+v, want ino %d", e, inos[e.Name])
		}
	}
	// Case matters: "A" and "a" are two files; unlinking one keeps the other.
	must[Attr](t)(s.Unlink(ctx, RootIno, "A"))
	must[Attr](t)(s.Lookup(ctx, RootIno, "a"))
	// Wildcard-looking names are names, not patterns.
	must[Attr](t)(s.Unlink(ctx, RootIno, ">"))
	must[Attr](t)(s.Lookup(ctx, RootIno, "*"))
}

func TestReadDirSortedManyEntries(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	d := must[Attr](t)(s.Mkdir(ctx, RootIno, "big", 0o755, 0, 0))
	const n = 2000
	want := make([]string, n)
	for i := range want {
		want[i] = fmt.Sprintf("file-%x", i*7919) // not made in sorted order
	}
	// Made in big batches: through Create one by one this would take seconds
	// (every create is an atomic batch that a single-replica file stream
	// stages on disk).
	inos := map[string]Ino{}
	for lo := 0; lo < n; lo += 400 {
		ok(t, s.run(ctx, func(t *tx) error {
			for _, name := range want[lo : lo+400] {
				ino, err := s.newIno(ctx)
				if err != nil {
					return err
				}
				inos[name] = ino
				t.fresh(inodeKey(ino)).inode = &inodeRec{Ino: ino, Mode: syscall.S_IFREG | 0o644, Nlink: 1}
				t.fresh(direntKey(d.Ino, name)).dent = &direntRec{Ino: ino, Mode: syscall.S_IFREG}
			}
			return nil
		}))
	}
	// And a few through Create, to be sure the two agree.
	for _, name := range []string{"zz", "A", "file-0-extra"} {
		inos[name] = must[Attr](t)(s.Create(ctx, d.Ino, name, 0o644, 0, 0)).Ino
		want = append(want, name)
	}
	ents := must[[]DirEntry](t)(s.ReadDir(ctx, d.Ino))
	sort.Strings(want)
	if len(ents) != len(want) {
		t.Fatalf("readdir: %d entries, want %d", len(ents), len(want))
	}
	for i, e := range ents {
		if e.Name != want[i] || e.Ino != inos[e.Name] || e.Mode != syscall.S_IFREG {
			t.Fatalf("entry %d = %+v, want %q (ino %d)", i, e, want[i], inos[want[i]])
		}
	}
}

// Many goroutines of one store create in one directory: all land, every
// inode number is distinct.
func TestConcurrentCreatesInOneDir(t *testing.T) {
	ctx := ctxT(t)
	bucket := newBucket()
	stores := []*Store{openTestStore(t, bucket), openTestStore(t, bucket)}
	d := must[Attr](t)(stores[0].Mkdir(ctx, RootIno, "d", 0o755, 0, 0))
	const workers, each = 8, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		s := stores[w%2]
		wg.Go(func() {
			for i := range each {
				if _, err := s.Create(ctx, d.Ino, fmt.Sprintf("w%d-%d", w, i), 0o644, 0, 0); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ents := must[[]DirEntry](t)(stores[0].ReadDir(ctx, d.Ino))
	if len(ents) != workers*each {
		t.Fatalf("readdir: %d entries, want %d", len(ents), workers*each)
	}
	seen := map[Ino]bool{}
	for _, e := range ents {
		if seen[e.Ino] {
			t.Fatalf("inode %d handed out twice", e.Ino)
		}
		seen[e.Ino] = true
	}
}

func TestUnlinkKeepsInodeUntilReclaim(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{0: ref("a", testBlockSize), 1: ref("b", 10)}, testBlockSize+10, 77))
	ok(t, s.SetXattr(ctx, f.Ino, "user.k", []byte("v"), 0))

	// Reclaim of a linked inode does nothing.
	ok(t, s.Reclaim(ctx, f.Ino))
	must[Attr](t)(s.GetAttr(ctx, f.Ino))

	u := must[Attr](t)(s.Unlink(ctx, RootIno, "f"))
	if u.Ino != f.Ino || u.Nlink != 0 || u.Ctime < f.Ctime {
		t.Fatalf("unlink returned %+v", u)
	}
	_, err := s.Lookup(ctx, RootIno, "f")
	wantErrno(t, err, syscall.ENOENT)
	// Open handles keep working: attributes, blocks and writes are there.
	if a := must[Attr](t)(s.GetAttr(ctx, f.Ino)); a.Nlink != 0 || a.Size != testBlockSize+10 {
		t.Fatalf("unlinked inode: %+v", a)
	}
	if b := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 10)); len(b) != 2 {
		t.Fatalf("blocks of an unlinked file: %v", b)
	}
	must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{2: ref("c", 1)}, 2*testBlockSize+1, 78))
	// Linking an unlinked inode back is refused.
	_, err = s.Link(ctx, f.Ino, RootIno, "again")
	wantErrno(t, err, syscall.ENOENT)

	ok(t, s.Reclaim(ctx, f.Ino))
	_, err = s.GetAttr(ctx, f.Ino)
	wantErrno(t, err, syscall.ENOENT)
	for c := range int64(3) {
		v, err := s.get(ctx, chunkKey(f.Ino, c))
		ok(t, err)
		if v.found {
			t.Fatalf("chunk %d of a reclaimed inode survives", c)
		}
	}
	// Reclaim of a gone inode is a no-op.
	ok(t, s.Reclaim(ctx, f.Ino))
	ok(t, s.Reclaim(ctx, 999999))
}

func TestLink(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	d := must[Attr](t)(s.Mkdir(ctx, RootIno, "d", 0o755, 0, 0))
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	l := must[Attr](t)(s.Link(ctx, f.Ino, d.Ino, "g"))
	if l.Ino != f.Ino || l.Nlink != 2 {
		t.Fatalf("link returned %+v", l)
	}
	if a := must[Attr](t)(s.Lookup(ctx, d.Ino, "g")); a.Ino != f.Ino || a.Nlink != 2 {
		t.Fatalf("lookup of the new link: %+v", a)
	}
	if a := must[Attr](t)(s.GetAttr(ctx, d.Ino)); a.Nlink != 2 {
		t.Fatalf("a file link changed the dir's nlink: %+v", a)
	}
	_, err := s.Link(ctx, f.Ino, d.Ino, "g")
	wantErrno(t, err, syscall.EEXIST)
	_, err = s.Link(ctx, d.Ino, RootIno, "dlink")
	wantErrno(t, err, syscall.EPERM)
	_, err = s.Link(ctx, 999999, RootIno, "x")
	wantErrno(t, err, syscall.ENOENT)
	_, err = s.Link(ctx, f.Ino, f.Ino, "x")
	wantErrno(t, err, syscall.ENOTDIR)

	if u := must[Attr](t)(s.Unlink(ctx, RootIno, "f")); u.Nlink != 1 {
		t.Fatalf("unlink of one of two names: %+v", u)
	}
	if a := must[Attr](t)(s.Lookup(ctx, d.Ino, "g")); a.Nlink != 1 {
		t.Fatalf("remaining name: %+v", a)
	}
	if u := must[Attr](t)(s.Unlink(ctx, d.Ino, "g")); u.Nlink != 0 {
		t.Fatalf("unlink of the last name: %+v", u)
	}
}

func TestRmdir(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	d := must[Attr](t)(s.Mkdir(ctx, RootIno, "d", 0o755, 0, 0))
	sub := must[Attr](t)(s.Mkdir(ctx, d.Ino, "sub", 0o755, 0, 0))
	must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	if a := must[Attr](t)(s.GetAttr(ctx, d.Ino)); a.Nlink != 3 {
		t.Fatalf("dir with a subdir: nlink %d, want 3", a.Nlink)
	}

	wantErrno(t, errOf(s.Rmdir(ctx, RootIno, "d")), syscall.ENOTEMPTY)
	wantErrno(t, errOf(s.Rmdir(ctx, RootIno, "f")), syscall.ENOTDIR)
	_, err := s.Unlink(ctx, RootIno, "d")
	wantErrno(t, err, syscall.EISDIR)

	// The removed directory's inode stays, at nlink 0 and empty, for
	// handles open on it, and takes no new entries, until it is
	// reclaimed.
	gone := must[Attr](t)(s.Rmdir(ctx, d.Ino, "sub"))
	if gone.Ino != sub.Ino || gone.Nlink != 0 {
		t.Fatalf("rmdir returned %+v, want inode %d at nlink 0", gone, sub.Ino)
	}
	if a := must[Attr](t)(s.GetAttr(ctx, sub.Ino)); a.Nlink != 0 || a.Ctime < sub.Ctime {
		t.Fatalf("removed dir before reclaim: %+v", a)
	}
	if ents := must[[]DirEntry](t)(s.ReadDir(ctx, sub.Ino)); len(ents) != 0 {
		t.Fatalf("removed dir lists %q", names(ents))
	}
	_, err = s.Mkdir(ctx, sub.Ino, "x", 0o755, 0, 0)
	wantErrno(t, err, syscall.ENOENT)
	_, err = s.Create(ctx, sub.Ino, "x", 0o644, 0, 0)
	wantErrno(t, err, syscall.ENOENT)
	must[Attr](t)(s.Create(ctx, RootIno, "mv", 0o644, 0, 0))
	_, _, err = s.Rename(ctx, RootIno, "mv", sub.Ino, "mv", 0)
	wantErrno(t, err, syscall.ENOENT)
	must[Attr](t)(s.Unlink(ctx, RootIno, "mv"))
	ok(t, s.Reclaim(ctx, sub.Ino))
	_, err = s.GetAttr(ctx, sub.Ino)
	wantErrno(t, err, syscall.ENOENT)
	if a := must[Attr](t)(s.GetAttr(ctx, d.Ino)); a.Nlink != 2 {
		t.Fatalf("dir after rmdir of its subdir: nlink %d, want 2", a.Nlink)
	}
	// A file in it also makes it non-empty; removing the file empties it.
	must[Attr](t)(s.Create(ctx, d.Ino, "x", 0o644, 0, 0))
	wantErrno(t, errOf(s.Rmdir(ctx, RootIno, "d")), syscall.ENOTEMPTY)
	must[Attr](t)(s.Unlink(ctx, d.Ino, "x"))
	ok(t, errOf(s.Rmdir(ctx, RootIno, "d")))
	if a := must[Attr](t)(s.GetAttr(ctx, RootIno)); a.Nlink != 2 {
		t.Fatalf("root after rmdir: nlink %d, want 2", a.Nlink)
	}
	if ents := must[[]DirEntry](t)(s.ReadDir(ctx, RootIno)); names(ents) != "f" {
		t.Fatalf("root lists %q", names(ents))
	}
	// A removed directory can be made again, as a new inode.
	d2 := must[Attr](t)(s.Mkdir(ctx, RootIno, "d", 0o755, 0, 0))
	if d2.Ino == d.Ino {
		t.Fatal("inode number reused")
	}
}

func TestSetAttr(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 1, 2))
	mode, uid, gid, at, mt := uint32(0o4711|syscall.S_IFDIR), uint32(7), uint32(8), int64(111), int64(222)
	a := must[Attr](t)(s.SetAttr(ctx, f.Ino, SetAttrIn{Mode: &mode, Uid: &uid, Gid: &gid, Atime: &at, Mtime: &mt}))
	if a.Mode != syscall.S_IFREG|0o4711 || a.Uid != 7 || a.Gid != 8 || a.Atime != 111 || a.Mtime != 222 || a.Ctime <= f.Ctime {
		t.Fatalf("setattr = %+v", a)
	}
	if got := must[Attr](t)(s.GetAttr(ctx, f.Ino)); got != a {
		t.Fatalf("getattr = %+v, want %+v", got, a)
	}
	// Nothing set: only ctime moves.
	b := must[Attr](t)(s.SetAttr(ctx, f.Ino, SetAttrIn{}))
	if b.Mode != a.Mode || b.Mtime != a.Mtime || b.Ctime < a.Ctime {
		t.Fatalf("empty setattr = %+v", b)
	}
	d := must[Attr](t)(s.Mkdir(ctx, RootIno, "d", 0o755, 0, 0))
	size := uint64(1)
	_, err := s.SetAttr(ctx, d.Ino, SetAttrIn{Size: &size})
	wantErrno(t, err, syscall.EISDIR)
	l := must[Attr](t)(s.Symlink(ctx, RootIno, "l", "f", 0, 0))
	_, err = s.SetAttr(ctx, l.Ino, SetAttrIn{Size: &size})
	wantErrno(t, err, syscall.EINVAL)
}

func TestTruncateClampsAndDropsSlots(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	const bs = testBlockSize
	slots := map[int64]BlockRef{0: ref("0", bs), 1: ref("1", bs), 2: ref("2", bs), 3: ref("3", bs), 1500: ref("x", 100)}
	must[Attr](t)(s.CommitWrite(ctx, f.Ino, slots, 1500*bs+100, 5))

	setSize := func(n uint64) Attr {
		t.Helper()
		return must[Attr](t)(s.SetAttr(ctx, f.Ino, SetAttrIn{Size: &n}))
	}
	// Cut inside slot 1: slot 1 clamped to 10 bytes, slots 2, 3 and 1500 dropped
	// (1500 lives in a second chunk, which goes away).
	a := setSize(bs + 10)
	if a.Size != bs+10 || a.Mtime == 5 {
		t.Fatalf("after truncate: %+v", a)
	}
	got := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 1<<40))
	want := map[int64]BlockRef{0: ref("0", bs), 1: ref("1", 10)}
	if !mapsEqual(got, want) {
		t.Fatalf("blocks after truncate = %v, want %v", got, want)
	}
	if v, err := s.get(ctx, chunkKey(f.Ino, 1)); err != nil || v.found {
		t.Fatalf("chunk 1 after truncate: %+v %v", v, err)
	}
	// Growing leaves holes and keeps the clamp: bytes past the old end stay zeros.
	a = setSize(10 * bs)
	if a.Size != 10*bs {
		t.Fatalf("after extend: %+v", a)
	}
	got = must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 100))
	if !mapsEqual(got, want) {
		t.Fatalf("blocks after extend = %v, want %v", got, want)
	}
	// A cut on a slot boundary drops the slot past it and clamps nothing.
	setSize(bs)
	got = must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 100))
	if !mapsEqual(got, map[int64]BlockRef{0: ref("0", bs)}) {
		t.Fatalf("blocks after cut at a slot boundary = %v", got)
	}
	setSize(0)
	if got = must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 100)); len(got) != 0 {
		t.Fatalf("blocks of an empty file = %v", got)
	}
	if v, err := s.get(ctx, chunkKey(f.Ino, 0)); err != nil || v.found {
		t.Fatalf("chunk 0 of an empty file: %+v %v", v, err)
	}
}

func mapsEqual(a, b map[int64]BlockRef) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestCommitWrite(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	const bs = testBlockSize
	// Slots 5 and 2000 live in chunks 0 and 1: one atomic commit.
	// The commit records the write's time as mtime; ctime never goes back
	// (the file's creation is later than 12345 ns after 1970).
	a := must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{5: ref("five", bs), 2000: ref("2000", 7)}, 2000*bs+7, 12345))
	if a.Size != 2000*bs+7 || a.Mtime != 12345 || a.Ctime != f.Ctime || a.Stored != bs+7 {
		t.Fatalf("after commit: %+v", a)
	}
	later := f.Ctime + 1000
	if a := must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{}, 0, later)); a.Mtime != later || a.Ctime != later {
		t.Fatalf("after a commit later than the ctime: %+v, want mtime and ctime %d", a, later)
	}
	got := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 1<<40))
	if !mapsEqual(got, map[int64]BlockRef{5: ref("five", bs), 2000: ref("2000", 7)}) {
		t.Fatalf("blocks = %v", got)
	}
	// A range selects; holes are absent.
	if got := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 6, 1999)); len(got) != 0 {
		t.Fatalf("blocks [6,1999] = %v", got)
	}
	if got := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 2000, 2000)); len(got) != 1 {
		t.Fatalf("blocks [2000,2000] = %v", got)
	}
	// The size never shrinks; a zero ID punches a hole; Len is clamped to the end.
	a = must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{5: {}, 6: ref("six", bs), 2000: ref("new", bs)}, 10, 999))
	// Stored: slot 5 punched, slot 6 added, slot 2000 replaced and clamped.
	if a.Size != 2000*bs+7 || a.Mtime != 999 || a.Stored != bs+7 {
		t.Fatalf("after second commit: %+v", a)
	}
	got = must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 1<<40))
	if !mapsEqual(got, map[int64]BlockRef{6: ref("six", bs), 2000: ref("new", 7)}) {
		t.Fatalf("blocks = %v", got)
	}
	// Errors: past the size, bad slot, too long, not a file.
	_, err := s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{3000: ref("x", 1)}, 0, 1)
	wantErrno(t, err, syscall.EINVAL)
	_, err = s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{-1: ref("x", 1)}, 0, 1)
	wantErrno(t, err, syscall.EINVAL)
	_, err = s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{0: ref("x", bs+1)}, bs, 1)
	wantErrno(t, err, syscall.EINVAL)
	_, err = s.CommitWrite(ctx, RootIno, map[int64]BlockRef{0: ref("x", 1)}, 1, 1)
	wantErrno(t, err, syscall.EISDIR)
	_, err = s.Blocks(ctx, RootIno, 0, 1)
	wantErrno(t, err, syscall.EISDIR)
	_, err = s.CommitWrite(ctx, 999999, map[int64]BlockRef{0: ref("x", 1)}, 1, 1)
	wantErrno(t, err, syscall.ENOENT)
	// The failed commits changed nothing.
	if got := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 1<<40)); len(got) != 2 {
		t.Fatalf("blocks after failed commits = %v", got)
	}
}

func TestMultiBatchTruncateAndReclaim(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	s.maxBatch = 4 // inode + 3 chunks per batch
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	const bs = testBlockSize
	// One slot in each of 10 chunks, committed 3 chunks at a time.
	for c := int64(0); c < 10; c += 3 {
		slots := map[int64]BlockRef{}
		for i := c; i < min(c+3, 10); i++ {
			slots[i*slotsPerChunk+1] = ref(fmt.Sprint(i), bs)
		}
		must[Attr](t)(s.CommitWrite(ctx, f.Ino, slots, uint64(min(c+3, 10)*slotsPerChunk*bs), 1))
	}
	_, err := s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{1: ref("a", 1), 1025: ref("b", 1), 2049: ref("c", 1), 3073: ref("d", 1)}, 0, 1)
	wantErrno(t, err, syscall.EFBIG)

	// Truncate into chunk 1: needs chunks 1..9 rewritten, more than one batch.
	size := uint64(slotsPerChunk*bs + 2*bs - 5) // inside slot 1025
	a := must[Attr](t)(s.SetAttr(ctx, f.Ino, SetAttrIn{Size: &size}))
	if a.Size != size || a.Stored != 2*bs-5 {
		t.Fatalf("after truncate: size %d, stored %d; want %d, %d", a.Size, a.Stored, size, 2*bs-5)
	}
	got := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 1<<40))
	want := map[int64]BlockRef{1: ref("0", bs), slotsPerChunk + 1: ref("1", bs-5)}
	if !mapsEqual(got, want) {
		t.Fatalf("blocks after truncate = %v, want %v", got, want)
	}
	for c := int64(2); c < 10; c++ {
		if v, err := s.get(ctx, chunkKey(f.Ino, c)); err != nil || v.found {
			t.Fatalf("chunk %d after truncate: %+v %v", c, v, err)
		}
	}

	// Grow it again and reclaim: all chunks go, in several batches.
	slots := map[int64]BlockRef{}
	for i := int64(2); i < 5; i++ {
		slots[i*slotsPerChunk] = ref(fmt.Sprint(i), bs)
	}
	must[Attr](t)(s.CommitWrite(ctx, f.Ino, slots, 5*slotsPerChunk*bs, 1))
	must[Attr](t)(s.Unlink(ctx, RootIno, "f"))
	ok(t, s.Reclaim(ctx, f.Ino))
	_, err = s.GetAttr(ctx, f.Ino)
	wantErrno(t, err, syscall.ENOENT)
	for c := int64(0); c < 10; c++ {
		if v, err := s.get(ctx, chunkKey(f.Ino, c)); err != nil || v.found {
			t.Fatalf("chunk %d after reclaim: %+v %v", c, v, err)
		}
	}
}

// TestSparseBlockMapListsChunks: a block map whose size spans more chunk
// indices than chunkListThreshold is read, truncated and reclaimed through
// a listing of the chunks that exist, in several batches when they do not
// fit in one, and the result is the same as reading every index.
func TestSparseBlockMapListsChunks(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	s.maxBatch = 4 // inode + 3 chunks per batch
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	const bs = testBlockSize
	const stride = 3 * chunkListThreshold // chunk indices between two present chunks
	const present = 8
	want := map[int64]BlockRef{}
	for c := int64(0); c < present; c++ {
		slot := c*stride*slotsPerChunk + 7
		want[slot] = ref(fmt.Sprint(c), bs)
		must[Attr](t)(s.CommitWrite(ctx, f.Ino, map[int64]BlockRef{slot: want[slot]}, uint64(slot+1)*bs, 1))
	}
	a := must[Attr](t)(s.GetAttr(ctx, f.Ino))
	if a.Stored != present*bs {
		t.Fatalf("stored %d bytes, want %d", a.Stored, present*bs)
	}
	if got := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 1<<40)); !mapsEqual(got, want) {
		t.Fatalf("blocks = %v, want %v", got, want)
	}
	// A range between present chunks, wider than the threshold: empty.
	if got := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 8, stride*slotsPerChunk)); len(got) != 0 {
		t.Fatalf("blocks between the chunks = %v", got)
	}

	// Truncate into the second present chunk's slot: six chunks go, three
	// per batch, and the slot is clamped.
	size := uint64(stride*slotsPerChunk+7)*bs + 100
	a = must[Attr](t)(s.SetAttr(ctx, f.Ino, SetAttrIn{Size: &size}))
	if a.Size != size || a.Stored != bs+100 {
		t.Fatalf("after truncate: size %d, stored %d; want %d, %d", a.Size, a.Stored, size, bs+100)
	}
	got := must[map[int64]BlockRef](t)(s.Blocks(ctx, f.Ino, 0, 1<<40))
	second := int64(stride*slotsPerChunk + 7)
	if !mapsEqual(got, map[int64]BlockRef{7: ref("0", bs), second: ref("1", 100)}) {
		t.Fatalf("blocks after truncate = %v", got)
	}

	must[Attr](t)(s.Unlink(ctx, RootIno, "f"))
	ok(t, s.Reclaim(ctx, f.Ino))
	_, err := s.GetAttr(ctx, f.Ino)
	wantErrno(t, err, syscall.ENOENT)
	for c := int64(0); c < present; c++ {
		if v, err := s.get(ctx, chunkKey(f.Ino, c*stride)); err != nil || v.found {
			t.Fatalf("chunk %d after reclaim: %+v %v", c*stride, v, err)
		}
	}
}

func TestXattrs(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	f := must[Attr](t)(s.Create(ctx, RootIno, "f", 0o644, 0, 0))
	if l := must[[]string](t)(s.ListXattr(ctx, f.Ino)); len(l) != 0 {
		t.Fatalf("fresh file lists xattrs %v", l)
	}
	_, err := s.GetXattr(ctx, f.Ino, "user.a")
	wantErrno(t, err, syscall.ENODATA)
	wantErrno(t, s.RemoveXattr(ctx, f.Ino, "user.a"), syscall.ENODATA)
	wantErrno(t, s.SetXattr(ctx, f.Ino, "user.a", []byte("x"), xattrReplace), syscall.ENODATA)

	ok(t, s.SetXattr(ctx, f.Ino, "user.b", []byte("two"), 0))
	ok(t, s.SetXattr(ctx, f.Ino, "user.a", []byte{0, 1, 2, 0xff}, xattrCreate))
	ok(t, s.SetXattr(ctx, f.Ino, "user.empty", nil, 0))
	wantErrno(t, s.SetXattr(ctx, f.Ino, "user.a", []byte("y"), xattrCreate), syscall.EEXIST)
	if v := must[[]byte](t)(s.GetXattr(ctx, f.Ino, "user.a")); string(v) != "\x00\x01\x02\xff" {
		t.Fatalf("user.a = %q", v)
	}
	if v := must[[]byte](t)(s.GetXattr(ctx, f.Ino, "user.empty")); v == nil || len(v) != 0 {
		t.Fatalf("user.empty = %#v, want empty non-nil", v)
	}
	ok(t, s.SetXattr(ctx, f.Ino, "user.a", []byte("replaced"), xattrReplace))
	if v := must[[]byte](t)(s.GetXattr(ctx, f.Ino, "user.a")); string(v) != "replaced" {
		t.Fatalf("user.a = %q", v)
	}
	if l := must[[]string](t)(s.ListXattr(ctx, f.Ino)); strings.Join(l, ",") != "user.a,user.b,user.empty" {
		t.Fatalf("list = %v", l)
	}
	ok(t, s.RemoveXattr(ctx, f.Ino, "user.b"))
	_, err = s.GetXattr(ctx, f.Ino, "user.b")
	wantErrno(t, err, syscall.ENODATA)
	if l := must[[]string](t)(s.ListXattr(ctx, f.Ino)); strings.Join(l, ",") != "user.a,user.empty" {
		t.Fatalf("list = %v", l)
	}
	// Xattrs survive attribute changes and belong to the inode.
	mode := uint32(0o600)
	must[Attr](t)(s.SetAttr(ctx, f.Ino, SetAttrIn{Mode: &mode}))
	must[Attr](t)(s.Link(ctx, f.Ino, RootIno, "g"))
	if v := must[[]byte](t)(s.GetXattr(ctx, must[Attr](t)(s.Lookup(ctx, RootIno, "g")).Ino, "user.a")); string(v) != "replaced" {
		t.Fatalf("user.a via link = %q", v)
	}
	// Directories have them too.
	ok(t, s.SetXattr(ctx, RootIno, "user.dir", []byte("1"), 0))
	// Bad names and sizes; a missing inode.
	wantErrno(t, s.SetXattr(ctx, f.Ino, "", []byte("x"), 0), syscall.ERANGE)
	wantErrno(t, s.SetXattr(ctx, f.Ino, strings.Repeat("x", 256), []byte("x"), 0), syscall.ERANGE)
	wantErrno(t, s.SetXattr(ctx, f.Ino, "user.big", make([]byte, 64<<10+1), 0), syscall.E2BIG)
	wantErrno(t, s.SetXattr(ctx, f.Ino, "user.x", nil, 4), syscall.EINVAL)
	wantErrno(t, s.SetXattr(ctx, 999999, "user.x", nil, 0), syscall.ENOENT)
	_, err = s.ListXattr(ctx, 999999)
	wantErrno(t, err, syscall.ENOENT)
	_, err = s.GetXattr(ctx, 999999, "user.x")
	wantErrno(t, err, syscall.ENOENT)
}
