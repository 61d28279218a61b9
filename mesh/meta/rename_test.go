package meta

import (
	"syscall"
	"testing"
)

func TestRenameFileOverFile(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	a := must[Attr](t)(s.Create(ctx, RootIno, "a", 0o644, 0, 0))
	b := must[Attr](t)(s.Create(ctx, RootIno, "b", 0o644, 0, 0))
	replaced, ok, err := s.Rename(ctx, RootIno, "a", RootIno, "b", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || replaced.Ino != b.Ino || replaced.Nlink != 0 {
		t.Fatalf("replaced = %+v, %v; want inode %d with nlink 0", replaced, ok, b.Ino)
	}
	if got := must[Attr](t)(s.Lookup(ctx, RootIno, "b")); got.Ino != a.Ino {
		t.Fatalf("b now = %d, want %d", got.Ino, a.Ino)
	}
	_, err = s.Lookup(ctx, RootIno, "a")
	wantErrno(t, err, syscall.ENOENT)
	// The replaced inode stays until Reclaim.
	if got := must[Attr](t)(s.GetAttr(ctx, b.Ino)); got.Nlink != 0 {
		t.Fatalf("replaced inode: %+v", got)
	}
	if err := s.Reclaim(ctx, b.Ino); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetAttr(ctx, b.Ino)
	wantErrno(t, err, syscall.ENOENT)
	if ents := must[[]DirEntry](t)(s.ReadDir(ctx, RootIno)); names(ents) != "b" {
		t.Fatalf("root lists %q", names(ents))
	}

	// A replaced file with another name keeps that name.
	c := must[Attr](t)(s.Create(ctx, RootIno, "c", 0o644, 0, 0))
	must[Attr](t)(s.Link(ctx, c.Ino, RootIno, "c2"))
	replaced, ok, err = s.Rename(ctx, RootIno, "b", RootIno, "c", 0)
	if err != nil || !ok || replaced.Ino != c.Ino || replaced.Nlink != 1 {
		t.Fatalf("rename over a file with two links: %+v %v %v", replaced, ok, err)
	}
}

func TestRenameSameInodeIsNoop(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	a := must[Attr](t)(s.Create(ctx, RootIno, "a", 0o644, 0, 0))
	must[Attr](t)(s.Link(ctx, a.Ino, RootIno, "b"))
	for _, to := range []string{"a", "b"} {
		replaced, ok, err := s.Rename(ctx, RootIno, "a", RootIno, to, 0)
		if err != nil || ok || replaced != (Attr{}) {
			t.Fatalf("rename a -> %s: %+v %v %v", to, replaced, ok, err)
		}
	}
	if ents := must[[]DirEntry](t)(s.ReadDir(ctx, RootIno)); names(ents) != "a,b" {
		t.Fatalf("root lists %q", names(ents))
	}
	if got := must[Attr](t)(s.GetAttr(ctx, a.Ino)); got.Nlink != 2 {
		t.Fatalf("nlink = %d, want 2", got.Nlink)
	}
	// As on Linux, RENAME_NOREPLACE fails on an existing target even if it is
	// the same file.
	_, _, err := s.Rename(ctx, RootIno, "a", RootIno, "b", renameNoReplace)
	wantErrno(t, err, syscall.EEXIST)
}

func TestRenameDirectories(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	p1 := must[Attr](t)(s.Mkdir(ctx, RootIno, "p1", 0o755, 0, 0))
	p2 := must[Attr](t)(s.Mkdir(ctx, RootIno, "p2", 0o755, 0, 0))
	d := must[Attr](t)(s.Mkdir(ctx, p1.Ino, "d", 0o755, 0, 0))
	must[Attr](t)(s.Create(ctx, d.Ino, "inside", 0o644, 0, 0))
	empty := must[Attr](t)(s.Mkdir(ctx, p2.Ino, "empty", 0o755, 0, 0))
	full := must[Attr](t)(s.Mkdir(ctx, p2.Ino, "full", 0o755, 0, 0))
	must[Attr](t)(s.Create(ctx, full.Ino, "x", 0o644, 0, 0))
	must[Attr](t)(s.Create(ctx, p2.Ino, "file", 0o644, 0, 0))

	nlink := func(ino Ino) uint32 { return must[Attr](t)(s.GetAttr(ctx, ino)).Nlink }

	// Dir over a non-empty dir, dir over a file, file over a dir.
	_, _, err := s.Rename(ctx, p1.Ino, "d", p2.Ino, "full", 0)
	wantErrno(t, err, syscall.ENOTEMPTY)
	_, _, err = s.Rename(ctx, p1.Ino, "d", p2.Ino, "file", 0)
	wantErrno(t, err, syscall.ENOTDIR)
	_, _, err = s.Rename(ctx, p2.Ino, "file", p2.Ino, "empty", 0)
	wantErrno(t, err, syscall.EISDIR)
	_, _, err = s.Rename(ctx, p1.Ino, "d", p2.Ino, "empty", renameNoReplace)
	wantErrno(t, err, syscall.EEXIST)
	_, _, err = s.Rename(ctx, p1.Ino, "d", p2.Ino, "new", 1<<1) // RENAME_EXCHANGE
	wantErrno(t, err, syscall.EINVAL)

	// Into its own subtree, or onto itself as parent.
	_, _, err = s.Rename(ctx, RootIno, "p1", d.Ino, "p1", 0)
	wantErrno(t, err, syscall.EINVAL)
	_, _, err = s.Rename(ctx, RootIno, "p1", p1.Ino, "self", 0)
	wantErrno(t, err, syscall.EINVAL)
	deep := must[Attr](t)(s.Mkdir(ctx, d.Ino, "deep", 0o755, 0, 0))
	_, _, err = s.Rename(ctx, RootIno, "p1", deep.Ino, "p1", 0)
	wantErrno(t, err, syscall.EINVAL)
	ok(t, errOf(s.Rmdir(ctx, d.Ino, "deep")))

	// A failed rename changed nothing.
	if nlink(p1.Ino) != 3 || nlink(p2.Ino) != 4 {
		t.Fatalf("nlinks after failed renames: p1 %d p2 %d", nlink(p1.Ino), nlink(p2.Ino))
	}

	// Dir over an empty dir, across parents: the empty dir goes, parents' nlink follow.
	replaced, replacedOK, err := s.Rename(ctx, p1.Ino, "d", p2.Ino, "empty", 0)
	if err != nil {
		t.Fatal(err)
	}
	if !replacedOK || replaced.Ino != empty.Ino || replaced.Nlink != 0 {
		t.Fatalf("replaced = %+v %v", replaced, replacedOK)
	}
	if a := must[Attr](t)(s.GetAttr(ctx, empty.Ino)); a.Nlink != 0 {
		t.Fatalf("replaced dir before reclaim: nlink %d", a.Nlink)
	}
	ok(t, s.Reclaim(ctx, empty.Ino))
	_, err = s.GetAttr(ctx, empty.Ino)
	wantErrno(t, err, syscall.ENOENT)
	if got := must[Attr](t)(s.Lookup(ctx, p2.Ino, "empty")); got.Ino != d.Ino {
		t.Fatalf("p2/empty = %d, want %d", got.Ino, d.Ino)
	}
	must[Attr](t)(s.Lookup(ctx, d.Ino, "inside"))
	if nlink(p1.Ino) != 2 || nlink(p2.Ino) != 4 {
		t.Fatalf("nlinks after replacing: p1 %d (want 2) p2 %d (want 4)", nlink(p1.Ino), nlink(p2.Ino))
	}

	// A plain move of a dir across parents.
	if _, _, err := s.Rename(ctx, p2.Ino, "empty", p1.Ino, "back", 0); err != nil {
		t.Fatal(err)
	}
	if nlink(p1.Ino) != 3 || nlink(p2.Ino) != 3 {
		t.Fatalf("nlinks after a move: p1 %d (want 3) p2 %d (want 3)", nlink(p1.Ino), nlink(p2.Ino))
	}
	// The moved dir's parent pointer follows: moving p1 under it is refused.
	_, _, err = s.Rename(ctx, RootIno, "p1", d.Ino, "loop", 0)
	wantErrno(t, err, syscall.EINVAL)
	// ...and moving p2 under it is fine.
	if _, _, err := s.Rename(ctx, RootIno, "p2", d.Ino, "p2", 0); err != nil {
		t.Fatal(err)
	}
	if nlink(RootIno) != 3 || nlink(d.Ino) != 3 {
		t.Fatalf("nlinks: root %d (want 3) d %d (want 3)", nlink(RootIno), nlink(d.Ino))
	}
	// Within one directory, a dir's rename changes no link count.
	if _, _, err := s.Rename(ctx, d.Ino, "p2", d.Ino, "p2b", 0); err != nil {
		t.Fatal(err)
	}
	if nlink(d.Ino) != 3 {
		t.Fatalf("d nlink = %d after a rename within it", nlink(d.Ino))
	}
}

func TestRenameFilesAcrossDirectories(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	src := must[Attr](t)(s.Mkdir(ctx, RootIno, "src", 0o755, 0, 0))
	dst := must[Attr](t)(s.Mkdir(ctx, RootIno, "dst", 0o755, 0, 0))
	f := must[Attr](t)(s.Create(ctx, src.Ino, "f", 0o644, 0, 0))
	must[Attr](t)(s.Create(ctx, dst.Ino, "taken", 0o644, 0, 0))

	_, _, err := s.Rename(ctx, src.Ino, "f", dst.Ino, "taken", renameNoReplace)
	wantErrno(t, err, syscall.EEXIST)
	_, _, err = s.Rename(ctx, src.Ino, "f", 999999, "x", 0)
	wantErrno(t, err, syscall.ENOENT)
	_, _, err = s.Rename(ctx, src.Ino, "f", f.Ino, "x", 0)
	wantErrno(t, err, syscall.ENOTDIR)

	replaced, ok, err := s.Rename(ctx, src.Ino, "f", dst.Ino, "g", renameNoReplace)
	if err != nil || ok {
		t.Fatalf("rename: %+v %v %v", replaced, ok, err)
	}
	if got := must[Attr](t)(s.Lookup(ctx, dst.Ino, "g")); got.Ino != f.Ino || got.Nlink != 1 || got.Ctime <= f.Ctime {
		t.Fatalf("dst/g = %+v", got)
	}
	if ents := must[[]DirEntry](t)(s.ReadDir(ctx, src.Ino)); len(ents) != 0 {
		t.Fatalf("src lists %q", names(ents))
	}
	for _, ino := range []Ino{src.Ino, dst.Ino} {
		a := must[Attr](t)(s.GetAttr(ctx, ino))
		if a.Nlink != 2 || a.Mtime <= f.Ctime {
			t.Fatalf("parent %d after the move: %+v", ino, a)
		}
	}
	if a := must[Attr](t)(s.GetAttr(ctx, RootIno)); a.Nlink != 4 {
		t.Fatalf("root nlink = %d, want 4", a.Nlink)
	}
}
