package meta

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshfs/meshfs/mesh/natsd"
	"github.com/meshfs/meshfs/persist"
	"github.com/nats-io/nats.go"
)

const (
	testSecret    = "test-secret"
	testBlockSize = 4096
)

// testServer is the one embedded server the package's tests share; every
// test works in a bucket of its own.
var testServer struct {
	url     string
	buckets atomic.Int64
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "meta-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	srv, err := natsd.Start(natsd.Config{Name: "meta-test", Dir: dir, Secret: testSecret})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer srv.Shutdown()
	testServer.url = srv.ClientURL()
	return m.Run()
}

func connect(t testing.TB) *nats.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := natsd.Connect(ctx, []string{testServer.url}, testSecret, t.Name(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// newBucket names a fresh bucket for one test.
func newBucket() string {
	return fmt.Sprintf("t%d", testServer.buckets.Add(1))
}

// openTestStore opens a store on bucket over its own connection.
func openTestStore(t testing.TB, bucket string) *Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, connect(t), Options{Bucket: bucket, BlockSize: testBlockSize})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newStore(t testing.TB) *Store { return openTestStore(t, newBucket()) }

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantErrno(t testing.TB, err error, want syscall.Errno) {
	t.Helper()
	var got syscall.Errno
	if !errors.As(err, &got) || got != want {
		t.Fatalf("got error %v, want %v (%d)", err, want, want)
	}
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func ok(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ref(content string, n uint32) BlockRef {
	return BlockRef{ID: persist.Sum([]byte(content)), Len: n}
}

func names(ents []DirEntry) string {
	var b strings.Builder
	for i, e := range ents {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(e.Name)
	}
	return b.String()
}

// errOf keeps the error of a call that also returns attributes.
func errOf(_ Attr, err error) error { return err }
