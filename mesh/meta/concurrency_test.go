package meta

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Two stores (two mounts) on one bucket, 16 goroutines racing to make the
// same 20 names, as files or directories: each name is made exactly once.
func TestConcurrentCreateSameNames(t *testing.T) {
	ctx := ctxT(t)
	bucket := newBucket()
	stores := []*Store{openTestStore(t, bucket), openTestStore(t, bucket)}
	const workers, nNames = 16, 20

	type result struct {
		name string
		attr Attr
		err  error
	}
	results := make(chan result, workers*nNames)
	var wg sync.WaitGroup
	for w := range workers {
		s := stores[w%2]
		wg.Go(func() {
			for i := range nNames {
				name := fmt.Sprintf("n%02d", (i+w)%nNames) // start at different names
				var a Attr
				var err error
				if (i+w)%2 == 0 {
					a, err = s.Create(ctx, RootIno, name, 0o644, 0, 0)
				} else {
					a, err = s.Mkdir(ctx, RootIno, name, 0o755, 0, 0)
				}
				results <- result{name, a, err}
			}
		})
	}
	wg.Wait()
	close(results)

	won := map[string]Attr{}
	dirs := 0
	for r := range results {
		switch {
		case r.err == nil:
			if prev, dup := won[r.name]; dup {
				t.Fatalf("%s made twice: %d and %d", r.name, prev.Ino, r.attr.Ino)
			}
			won[r.name] = r.attr
			if r.attr.IsDir() {
				dirs++
			}
		case errors.Is(r.err, syscall.EEXIST):
		default:
			t.Fatalf("%s: %v", r.name, r.err)
		}
	}
	if len(won) != nNames {
		t.Fatalf("%d names made, want %d", len(won), nNames)
	}
	ents := must[[]DirEntry](t)(stores[1].ReadDir(ctx, RootIno))
	if len(ents) != nNames {
		t.Fatalf("root lists %d entries, want %d: %q", len(ents), nNames, names(ents))
	}
	for _, e := range ents {
		if w := won[e.Name]; w.Ino != e.Ino || w.Mode&syscall.S_IFMT != e.Mode {
			t.Fatalf("entry %+v, but the winner was %+v", e, w)
		}
	}
	if root := must[Attr](t)(stores[0].GetAttr(ctx, RootIno)); root.Nlink != uint32(2+dirs) {
		t.Fatalf("root nlink = %d, want %d (2 + %d directories)", root.Nlink, 2+dirs, dirs)
	}
}

// Concurrent renames of distinct files into one directory all land: no
// update of the shared parent is lost.
func TestConcurrentRenamesIntoOneDir(t *testing.T) {
	ctx := ctxT(t)
	bucket := newBucket()
	stores := []*Store{openTestStore(t, bucket), openTestStore(t, bucket)}
	s := stores[0]
	dst := must[Attr](t)(s.Mkdir(ctx, RootIno, "dst", 0o755, 0, 0))
	const n = 24
	var srcs []Attr
	for i := range n {
		// Half the files come from one shared directory, half from their own.
		parent := RootIno
		if i%2 == 1 {
			parent = must[Attr](t)(s.Mkdir(ctx, RootIno, fmt.Sprintf("src%d", i), 0o755, 0, 0)).Ino
		}
		f := must[Attr](t)(s.Create(ctx, parent, fmt.Sprintf("f%d", i), 0o644, 0, 0))
		srcs = append(srcs, Attr{Ino: parent, Size: uint64(f.Ino)})
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		st := stores[i%2]
		wg.Go(func() {
			if _, _, err := st.Rename(ctx, srcs[i].Ino, fmt.Sprintf("f%d", i), dst.Ino, fmt.Sprintf("g%d", i), 0); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	ents := must[[]DirEntry](t)(stores[1].ReadDir(ctx, dst.Ino))
	if len(ents) != n {
		t.Fatalf("dst lists %d entries, want %d: %q", len(ents), n, names(ents))
	}
	for i := range n {
		if got := must[Attr](t)(s.Lookup(ctx, dst.Ino, fmt.Sprintf("g%d", i))); uint64(got.Ino) != srcs[i].Size {
			t.Fatalf("g%d = %d, want %d", i, got.Ino, srcs[i].Size)
		}
		_, err := s.Lookup(ctx, srcs[i].Ino, fmt.Sprintf("f%d", i))
		wantErrno(t, err, syscall.ENOENT)
	}
}

// Concurrent creates and an rmdir of the same directory: either the rmdir
// wins (and the creates find no parent) or a create wins (and the rmdir
// finds the directory not empty). Never a removed directory with entries.
func TestConcurrentRmdirAndCreate(t *testing.T) {
	ctx := ctxT(t)
	bucket := newBucket()
	a, b := openTestStore(t, bucket), openTestStore(t, bucket)
	for round := range 10 {
		name := fmt.Sprintf("d%d", round)
		d := must[Attr](t)(a.Mkdir(ctx, RootIno, name, 0o755, 0, 0))
		var wg sync.WaitGroup
		var rmErr, crErr error
		wg.Go(func() { _, rmErr = a.Rmdir(ctx, RootIno, name) })
		wg.Go(func() { _, crErr = b.Create(ctx, d.Ino, "child", 0o644, 0, 0) })
		wg.Wait()
		switch {
		case rmErr == nil && errors.Is(crErr, syscall.ENOENT):
		case errors.Is(rmErr, syscall.ENOTEMPTY) && crErr == nil:
		default:
			t.Fatalf("round %d: rmdir %v, create %v", round, rmErr, crErr)
		}
	}
}

// Concurrent cross moves of two directories into each other: at most one
// succeeds, so no cycle forms.
func TestConcurrentCrossMovesMakeNoCycle(t *testing.T) {
	ctx := ctxT(t)
	bucket := newBucket()
	a, b := openTestStore(t, bucket), openTestStore(t, bucket)
	for round := range 10 {
		x := must[Attr](t)(a.Mkdir(ctx, RootIno, fmt.Sprintf("x%d", round), 0o755, 0, 0))
		y := must[Attr](t)(a.Mkdir(ctx, RootIno, fmt.Sprintf("y%d", round), 0o755, 0, 0))
		xs := must[Attr](t)(a.Mkdir(ctx, x.Ino, "sub", 0o755, 0, 0))
		ys := must[Attr](t)(a.Mkdir(ctx, y.Ino, "sub", 0o755, 0, 0))
		var wg sync.WaitGroup
		var e1, e2 error
		// x into y/sub, y into x/sub.
		wg.Go(func() { _, _, e1 = a.Rename(ctx, RootIno, fmt.Sprintf("x%d", round), ys.Ino, "x", 0) })
		wg.Go(func() { _, _, e2 = b.Rename(ctx, RootIno, fmt.Sprintf("y%d", round), xs.Ino, "y", 0) })
		wg.Wait()
		if e1 == nil && e2 == nil {
			t.Fatalf("round %d: both cross moves succeeded: a cycle", round)
		}
		for _, err := range []error{e1, e2} {
			if err != nil && !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}

// A batch with one broken expectation among three keys stores none of them.
func TestFailedBatchStoresNothing(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	keys := []string{"x.one", "x.two", "x.three"}
	ok(t, s.commit(ctx, []op{
		{key: keys[0], val: []byte("1")},
		{key: keys[1], val: []byte("2")},
		{key: keys[2], val: []byte("3")},
	}))
	var revs []uint64
	for _, k := range keys {
		v := must[rawVal](t)(s.get(ctx, k))
		if !v.found {
			t.Fatalf("%s not stored", k)
		}
		revs = append(revs, v.rev)
	}

	// Same batch again, but the middle key's expectation is stale; one key
	// is a delete.
	err := s.commit(ctx, []op{
		{key: keys[0], val: []byte("changed"), rev: revs[0]},
		{key: keys[1], val: []byte("changed"), rev: revs[1] - 1},
		{key: keys[2], del: true, rev: revs[2]},
	})
	if !errors.Is(err, errConflict) {
		t.Fatalf("commit with a stale expectation: %v, want a conflict", err)
	}
	for i, k := range keys {
		v := must[rawVal](t)(s.get(ctx, k))
		if !v.found || v.rev != revs[i] || string(v.val) != fmt.Sprint(i+1) {
			t.Fatalf("%s changed by a rejected batch: %+v", k, v)
		}
	}
	// "Must not exist" (0) on an existing key also rejects.
	err = s.commit(ctx, []op{{key: "x.new", val: []byte("n")}, {key: keys[0], val: []byte("c")}})
	if !errors.Is(err, errConflict) {
		t.Fatalf("commit expecting an existing key absent: %v", err)
	}
	if v := must[rawVal](t)(s.get(ctx, "x.new")); v.found || v.rev != 0 {
		t.Fatalf("x.new stored by a rejected batch: %+v", v)
	}

	// With right expectations all three change; the delete leaves its marker's
	// revision, which the next expectation must name.
	ok(t, s.commit(ctx, []op{
		{key: keys[0], val: []byte("changed"), rev: revs[0]},
		{key: keys[1], val: []byte("changed"), rev: revs[1]},
		{key: keys[2], del: true, rev: revs[2]},
	}))
	v := must[rawVal](t)(s.get(ctx, keys[2]))
	if v.found || v.rev <= revs[2] {
		t.Fatalf("deleted key reads %+v", v)
	}
	if err := s.commit(ctx, []op{{key: keys[2], val: []byte("x"), rev: 0}}); !errors.Is(err, errConflict) {
		t.Fatalf("recreate a deleted key expecting 0: %v", err)
	}
	ok(t, s.commit(ctx, []op{{key: keys[2], val: []byte("back"), rev: v.rev}}))
	if v := must[rawVal](t)(s.get(ctx, keys[0])); string(v.val) != "changed" {
		t.Fatalf("%s = %q", keys[0], v.val)
	}
}

// A batch whose acknowledgement is lost is sent again: the copy is rejected
// (as a duplicate, or for a single message by its expectation), and transmit
// recognises its own first copy and reports the success it was.
func TestResentBatchIsIdempotent(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	for _, ops := range [][]op{
		{{key: "y.a", val: []byte("a")}, {key: "y.b", val: []byte("b")}},
		{{key: "y.c", val: []byte("c")}},
	} {
		idBase := randomID()
		ok(t, s.transmit(ctx, ops, idBase, false))
		if err := s.send(ctx, ops, idBase); err == nil {
			t.Fatalf("a second copy of %v was stored", ops)
		}
		ok(t, s.transmit(ctx, ops, idBase, true))
		// A different operation with the same stale expectations still conflicts.
		if err := s.transmit(ctx, ops, randomID(), true); !errors.Is(err, errConflict) {
			t.Fatalf("stale resend of another operation: %v, want a conflict", err)
		}
	}
}

// Which failures a commit sends again. "In process" (10158) is what a
// resend gets while the stream is still storing its first copy, as after a
// leader change in a clustered stream; failing the commit there turned an
// fsync that went on to succeed into EIO.
func TestTransientErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"no stream leader", &apiError{Code: 503, ErrCode: 10008}, true},
		{"too many batches in flight", &apiError{Code: 429, ErrCode: errCodeBatchTooInflight}, true},
		{"incomplete batch", &apiError{Code: 400, ErrCode: errCodeBatchIncomplete}, true},
		{"first copy in process", fmt.Errorf("send: %w", &apiError{Code: 409, ErrCode: errCodeDupInProcess}), true},
		{"lost reply", nats.ErrTimeout, true},
		{"attempt deadline", context.DeadlineExceeded, true},
		{"reconnecting", nats.ErrConnectionReconnecting, true},
		{"scan's consumer closed", fmt.Errorf("scan i.: %w", errWatchClosed), true},
		{"consumer create, JetStream unavailable", fmt.Errorf("watch: %w", &nats.APIError{Code: 503, ErrorCode: 10008}), true},
		{"jetstream package, no leader", &jetstream.APIError{Code: 503, ErrorCode: 10008}, true},
		{"consumer create refused", &nats.APIError{Code: 400, ErrorCode: 10012}, false},
		{"conflict", fmt.Errorf("%w: wrong last sequence", errConflict), false},
		{"wrong last sequence", &apiError{Code: 400, ErrCode: errCodeWrongLastSeq}, false},
		{"message too large", &apiError{Code: 400, ErrCode: 10054}, false},
	} {
		if got := transient(tc.err); got != tc.want {
			t.Errorf("%s: transient(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

// A reader never sees half a write: Blocks over two chunks while another
// store rewrites both chunks in every commit.
func TestBlocksSeeWholeWrites(t *testing.T) {
	ctx := ctxT(t)
	bucket := newBucket()
	w, r := openTestStore(t, bucket), openTestStore(t, bucket)
	f := must[Attr](t)(w.Create(ctx, RootIno, "f", 0o644, 0, 0))
	const size = 2001 * testBlockSize
	write := func(i int) error {
		tag := ref(fmt.Sprint(i), testBlockSize)
		_, err := w.CommitWrite(ctx, f.Ino, map[int64]BlockRef{5: tag, 2000: tag}, size, int64(i))
		return err
	}
	ok(t, write(0))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if werr = write(i); werr != nil {
				return
			}
		}
	})
	for range 100 {
		b, err := r.Blocks(ctx, f.Ino, 0, 3000)
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		if b[5] != b[2000] || b[5].ID.IsZero() {
			close(stop)
			wg.Wait()
			t.Fatalf("torn read: slot 5 %v, slot 2000 %v", b[5].ID, b[2000].ID)
		}
	}
	close(stop)
	wg.Wait()
	ok(t, werr)
}
