package scenarios

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshfs/meshfs/scenarios/harness"
	"golang.org/x/sys/unix"
)

// meshfsBin is built once by TestMain for every end-to-end test.
var meshfsBin string

func TestMain(m *testing.M) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		fmt.Println("SKIP end-to-end tests: /dev/fuse is missing on this machine (they need a real FUSE mount)")
		os.Exit(0)
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out, err := os.MkdirTemp("", "meshfs-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	meshfsBin, err = harness.Build(root, out)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(out)
	os.Exit(code)
}

// startMesh runs 'meshfs up' with n nodes in a fresh directory and stops it
// when the test ends.
func startMesh(t *testing.T, n int, extra ...string) *harness.Mesh {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := filepath.Join(t.TempDir(), "mesh")
	m, err := harness.Up(ctx, meshfsBin, dir, n, t.Logf, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Stop(); err != nil {
			t.Errorf("stop mesh: %v", err)
		}
	})
	return m
}

// mountAgain mounts the mesh a second time, in a new process: reads there
// cannot come from the first mount's page cache, only from the mesh.
func mountAgain(t *testing.T, m *harness.Mesh) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt2")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	unmount, err := m.MountAgain(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func randomBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func fileSum(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// writeFiles writes files of the sizes that cross block edges and returns
// their names and SHA-256 sums.
func writeFiles(t *testing.T, dir string, blockSize int, big int) map[string][32]byte {
	t.Helper()
	sizes := map[string]int{
		"empty": 0, "one": 1, "block-1": blockSize - 1, "block": blockSize,
		"block+1": blockSize + 1, "big": big,
	}
	sums := map[string][32]byte{}
	for name, size := range sizes {
		data := randomBytes(t, size)
		path := filepath.Join(dir, name)
		f, err := os.Create(path)
		if err != nil {
			t.Fatalf("create %s: %v", name, err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("fsync %s: %v", name, err)
		}
		if err := f.Close(); err != nil {
			t.Fatalf("close %s: %v", name, err)
		}
		sums[name] = sha256.Sum256(data)
	}
	return sums
}

func checkFiles(t *testing.T, dir string, sums map[string][32]byte) {
	t.Helper()
	for name, want := range sums {
		if got := fileSum(t, filepath.Join(dir, name)); got != want {
			t.Errorf("%s in %s: sha256 %x, want %x", name, dir, got[:8], want[:8])
		}
	}
}

func TestFilesRoundTrip(t *testing.T) {
	m := startMesh(t, 3)
	bs := m.State.BlockSize
	sums := writeFiles(t, m.Mount(), bs, 100<<20)
	checkFiles(t, m.Mount(), sums)
	checkFiles(t, mountAgain(t, m), sums)
	st, err := os.Stat(filepath.Join(m.Mount(), "block+1"))
	if err != nil || st.Size() != int64(bs+1) {
		t.Fatalf("stat block+1: size %v, err %v", st.Size(), err)
	}
}

func TestTreeOperations(t *testing.T) {
	m := startMesh(t, 3)
	mnt := m.Mount()
	p := func(s string) string { return filepath.Join(mnt, s) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(p("a/b/c"), 0o755))
	must(os.WriteFile(p("a/b/c/f"), []byte("first"), 0o644))
	must(os.WriteFile(p("a/g"), []byte("second"), 0o600))

	// rename over an existing file replaces it in one step
	must(os.Rename(p("a/g"), p("a/b/c/f")))
	if b, _ := os.ReadFile(p("a/b/c/f")); string(b) != "second" {
		t.Fatalf("after rename over: %q", b)
	}
	if _, err := os.Stat(p("a/g")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("source still there after rename: %v", err)
	}
	// a directory cannot move into its own subtree
	if err := os.Rename(p("a"), p("a/b/x")); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("rename into own subtree: %v, want EINVAL", err)
	}
	// rmdir of a non-empty directory
	if err := syscall.Rmdir(p("a/b")); err != syscall.ENOTEMPTY {
		t.Fatalf("rmdir non-empty: %v, want ENOTEMPTY", err)
	}
	// symlinks
	must(os.Symlink("b/c/f", p("a/link")))
	if target, err := os.Readlink(p("a/link")); err != nil || target != "b/c/f" {
		t.Fatalf("readlink: %q %v", target, err)
	}
	if b, err := os.ReadFile(p("a/link")); err != nil || string(b) != "second" {
		t.Fatalf("read through symlink: %q %v", b, err)
	}
	// hard links
	must(os.Link(p("a/b/c/f"), p("hard")))
	var st syscall.Stat_t
	must(syscall.Stat(p("hard"), &st))
	if st.Nlink != 2 {
		t.Fatalf("nlink after link = %d, want 2", st.Nlink)
	}
	must(os.Remove(p("a/b/c/f")))
	if b, err := os.ReadFile(p("hard")); err != nil || string(b) != "second" {
		t.Fatalf("hard link after unlinking the other name: %q %v", b, err)
	}
	// extended attributes
	must(unix.Setxattr(p("hard"), "user.color", []byte("blue"), 0))
	buf := make([]byte, 64)
	n, err := unix.Getxattr(p("hard"), "user.color", buf)
	if err != nil || string(buf[:n]) != "blue" {
		t.Fatalf("getxattr: %q %v", buf[:n], err)
	}
	n, err = unix.Listxattr(p("hard"), buf)
	if err != nil || !strings.Contains(string(buf[:n]), "user.color") {
		t.Fatalf("listxattr: %q %v", buf[:n], err)
	}
	must(unix.Removexattr(p("hard"), "user.color"))
	if _, err := unix.Getxattr(p("hard"), "user.color", buf); err != unix.ENODATA {
		t.Fatalf("getxattr after remove: %v, want ENODATA", err)
	}
	// chmod
	must(os.Chmod(p("hard"), 0o640))
	if fi, _ := os.Stat(p("hard")); fi.Mode().Perm() != 0o640 {
		t.Fatalf("mode after chmod: %v", fi.Mode())
	}
	// truncate down and up: the cut bytes come back as zeros
	data := randomBytes(t, m.State.BlockSize+1000)
	must(os.WriteFile(p("trunc"), data, 0o644))
	must(os.Truncate(p("trunc"), 100))
	must(os.Truncate(p("trunc"), 5000))
	want := append(append([]byte{}, data[:100]...), make([]byte, 4900)...)
	if got, _ := os.ReadFile(p("trunc")); !bytes.Equal(got, want) {
		t.Fatalf("truncate down then up: content differs (len %d)", len(got))
	}
	// a sparse write past the end leaves a hole that reads as zeros
	f, err := os.OpenFile(p("sparse"), os.O_CREATE|os.O_RDWR, 0o644)
	must(err)
	off := int64(2*m.State.BlockSize + 12345)
	_, err = f.WriteAt([]byte("tail"), off)
	must(err)
	must(f.Close())
	got, err := os.ReadFile(p("sparse"))
	must(err)
	if int64(len(got)) != off+4 || !bytes.Equal(got[off:], []byte("tail")) || !bytes.Equal(got[:off], make([]byte, off)) {
		t.Fatalf("sparse file: len %d, want %d, hole zero: %v", len(got), off+4, bytes.Equal(got[:off], make([]byte, off)))
	}
	// a name longer than 255 bytes
	if err := os.WriteFile(p(strings.Repeat("n", 256)), nil, 0o644); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Fatalf("create 256-byte name: %v, want ENAMETOOLONG", err)
	}
	// everything above is visible from another mount too
	other := mountAgain(t, m)
	if target, err := os.Readlink(filepath.Join(other, "a/link")); err != nil || target != "b/c/f" {
		t.Fatalf("other mount readlink: %q %v", target, err)
	}
	if got, _ := os.ReadFile(filepath.Join(other, "trunc")); !bytes.Equal(got, want) {
		t.Fatalf("other mount: truncated file differs")
	}
}

func TestCopyTreeOfThousandFiles(t *testing.T) {
	m := startMesh(t, 3)
	src := filepath.Join(t.TempDir(), "src")
	for i := 0; i < 1000; i++ {
		dir := filepath.Join(src, fmt.Sprintf("d%02d", i%20))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%04d", i)), randomBytes(t, 1+i*7%5000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dst := filepath.Join(m.Mount(), "copy")
	if out, err := exec.Command("cp", "-r", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -r: %v\n%s", err, out)
	}
	if out, err := exec.Command("diff", "-r", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("diff -r after cp -r: %v\n%s", err, out)
	}
	if out, err := exec.Command("diff", "-r", src, filepath.Join(mountAgain(t, m), "copy")).CombinedOutput(); err != nil {
		t.Fatalf("diff -r on a second mount: %v\n%s", err, out)
	}
}
