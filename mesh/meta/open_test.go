package meta

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh/natsd"
	"github.com/nats-io/nats.go/jetstream"
)

// A bucket made without AllowAtomicPublish (by an older version, or by hand)
// gets it on Open.
func TestOpenEnablesAtomicPublishOnExistingBucket(t *testing.T) {
	ctx := ctxT(t)
	nc := connect(t)
	js, err := jetstream.New(nc)
	ok(t, err)
	bucket := newBucket()
	_, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket, History: 1, Storage: jetstream.FileStorage})
	ok(t, err)
	s := openTestStore(t, bucket)
	st, err := js.Stream(ctx, "KV_"+bucket)
	ok(t, err)
	if !st.CachedInfo().Config.AllowAtomicPublish {
		t.Fatal("Open left AllowAtomicPublish off")
	}
	must[Attr](t)(s.Mkdir(ctx, RootIno, "d", 0o755, 0, 0))

	_, err = Open(ctx, nc, Options{Bucket: bucket})
	if err == nil {
		t.Fatal("Open without a block size succeeded")
	}
}

// A call without a deadline of its own gets the store's OpTimeout, so a dead
// server makes calls fail instead of hang.
func TestCallsWithoutDeadlineTimeOut(t *testing.T) {
	srv, err := natsd.Start(natsd.Config{Name: "timeout-test", Dir: t.TempDir(), Secret: "k"})
	ok(t, err)
	defer srv.Shutdown()
	ctx := ctxT(t)
	nc, err := natsd.Connect(ctx, []string{srv.ClientURL()}, "k", t.Name(), nil)
	ok(t, err)
	defer nc.Close()
	s, err := Open(ctx, nc, Options{BlockSize: testBlockSize, OpTimeout: 500 * time.Millisecond})
	ok(t, err)
	defer s.Close()
	must[Attr](t)(s.Create(context.Background(), RootIno, "f", 0o644, 0, 0))

	srv.Shutdown()
	start := time.Now()
	if _, err := s.GetAttr(context.Background(), RootIno); err == nil {
		t.Fatal("GetAttr with the server down succeeded")
	}
	if _, err := s.Create(context.Background(), RootIno, "g", 0o644, 0, 0); err == nil {
		t.Fatal("Create with the server down succeeded")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("two calls took %v with a 500ms OpTimeout", d)
	}

	ok(t, s.Close())
	if _, err := s.GetAttr(context.Background(), RootIno); err == nil {
		t.Fatal("GetAttr on a closed store succeeded")
	}
}

// Scans (ReadDir, the emptiness check of Rmdir and Rename) leave no
// goroutines behind.
func TestScansLeaveNoGoroutines(t *testing.T) {
	ctx := ctxT(t)
	s := newStore(t)
	d := must[Attr](t)(s.Mkdir(ctx, RootIno, "d", 0o755, 0, 0))
	for i := range 5 {
		must[Attr](t)(s.Create(ctx, d.Ino, string(rune('a'+i)), 0o644, 0, 0))
	}
	must[[]DirEntry](t)(s.ReadDir(ctx, d.Ino)) // warm up the connection's machinery
	before := runtime.NumGoroutine()
	for range 20 {
		must[[]DirEntry](t)(s.ReadDir(ctx, d.Ino))
		if err := errOf(s.Rmdir(ctx, RootIno, "d")); err == nil {
			t.Fatal("rmdir of a non-empty dir succeeded")
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after scans, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestOpenMustExistCreatesNothing(t *testing.T) {
	nc := connect(t)
	_, err := Open(context.Background(), nc, Options{Bucket: "must_exist_test", BlockSize: 4096, MustExist: true})
	if !errors.Is(err, ErrNoFileSystem) {
		t.Fatalf("Open(MustExist) of a missing bucket: %v, want ErrNoFileSystem", err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.KeyValue(context.Background(), "must_exist_test"); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("Open(MustExist) created the bucket: %v", err)
	}
	if _, err := Open(context.Background(), nc, Options{Bucket: "must_exist_test", BlockSize: 4096}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), nc, Options{Bucket: "must_exist_test", BlockSize: 4096, MustExist: true}); err != nil {
		t.Fatalf("Open(MustExist) of an existing file system: %v", err)
	}
}
