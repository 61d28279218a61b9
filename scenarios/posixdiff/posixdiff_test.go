package posixdiff

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestGenerateIsDeterministic(t *testing.T) {
	cfg := GenConfig{BlockSize: 4096}
	a, b := Generate(7, 5000, cfg), Generate(7, 5000, cfg)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two sequences from seed 7 differ")
	}
	if reflect.DeepEqual(a[:100], Generate(8, 100, cfg)) {
		t.Fatal("seeds 7 and 8 give the same sequence")
	}
	// A prefix of a longer sequence is the shorter sequence.
	if !reflect.DeepEqual(a[:1000], Generate(7, 1000, cfg)) {
		t.Fatal("the first 1000 of 5000 ops differ from 1000 ops")
	}
}

func TestGenerateCoversEveryKind(t *testing.T) {
	seen := map[Kind]int{}
	for _, op := range Generate(1, 20000, GenConfig{}) {
		seen[op.Kind]++
		if strings.HasPrefix(op.Path, "/") || strings.Contains(op.Path, "..") {
			t.Fatalf("%s: path leaves the root", op)
		}
	}
	for k := range numKinds {
		if seen[k] == 0 {
			t.Errorf("no %s in 20000 ops", k)
		}
	}
}

func TestGenerateExcludes(t *testing.T) {
	ex, err := ParseKinds("chown, utimens")
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range Generate(3, 5000, GenConfig{Exclude: ex}) {
		if op.Kind == KindChown || op.Kind == KindUtimens {
			t.Fatalf("excluded kind generated: %s", op)
		}
	}
	if _, err := ParseKinds("chown,bogus"); err == nil {
		t.Fatal("ParseKinds accepted an unknown name")
	}
}

func TestPayload(t *testing.T) {
	tests := []struct {
		seed uint64
		n    int
	}{{0, 0}, {1, 1}, {2, 7}, {3, 8}, {4, 9}, {5, 70000}}
	for _, tc := range tests {
		p := payload(tc.seed, tc.n)
		if len(p) != tc.n {
			t.Fatalf("payload(%d, %d) has %d bytes", tc.seed, tc.n, len(p))
		}
		for i, c := range p {
			if c == 0 {
				t.Fatalf("payload(%d, %d)[%d] is zero: written data would look like a hole", tc.seed, tc.n, i)
			}
		}
		if string(p) != string(payload(tc.seed, tc.n)) {
			t.Fatalf("payload(%d, %d) is not deterministic", tc.seed, tc.n)
		}
	}
}

func TestStatStringNormalises(t *testing.T) {
	tests := []struct {
		name string
		a, b unix.Stat_t
		same bool
	}{
		{"inode, device, blocks, blksize and times are ignored",
			unix.Stat_t{Mode: unix.S_IFREG | 0o644, Nlink: 1, Size: 10, Ino: 1, Dev: 1, Blocks: 8, Blksize: 4096, Mtim: unix.Timespec{Sec: 1}},
			unix.Stat_t{Mode: unix.S_IFREG | 0o644, Nlink: 1, Size: 10, Ino: 2, Dev: 2, Blocks: 0, Blksize: 65536, Mtim: unix.Timespec{Sec: 2}},
			true},
		{"a directory's size is ignored",
			unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Nlink: 2, Size: 4096},
			unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Nlink: 2, Size: 0},
			true},
		{"a file's size is compared",
			unix.Stat_t{Mode: unix.S_IFREG | 0o644, Nlink: 1, Size: 4096},
			unix.Stat_t{Mode: unix.S_IFREG | 0o644, Nlink: 1, Size: 0},
			false},
		{"special mode bits are compared",
			unix.Stat_t{Mode: unix.S_IFREG | 0o4755, Nlink: 1},
			unix.Stat_t{Mode: unix.S_IFREG | 0o755, Nlink: 1},
			false},
		{"link counts are compared",
			unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Nlink: 3},
			unix.Stat_t{Mode: unix.S_IFDIR | 0o755, Nlink: 2},
			false},
		{"owners are compared",
			unix.Stat_t{Mode: unix.S_IFREG, Nlink: 1, Gid: 1000},
			unix.Stat_t{Mode: unix.S_IFREG, Nlink: 1, Gid: 0},
			false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := statString(&tc.a) == statString(&tc.b); got != tc.same {
				t.Fatalf("%q vs %q: same=%v, want %v", statString(&tc.a), statString(&tc.b), got, tc.same)
			}
		})
	}
}

func TestDiffer(t *testing.T) {
	tests := []struct {
		a, b Result
		want string
	}{
		{Result{}, Result{}, ""},
		{Result{Errno: unix.ENOENT}, Result{}, "errno"},
		{Result{Value: "n=1"}, Result{Value: "n=2"}, "value"},
		{Result{Data: []byte{1}}, Result{Data: []byte{2}}, "data"},
		{Result{Times: []string{"x mtime not updated"}}, Result{}, "timestamps"},
		{Result{Note: "clock values"}, Result{Note: "other clock values"}, ""},
	}
	for _, tc := range tests {
		if got := Differ(tc.a, tc.b); got != tc.want {
			t.Errorf("Differ(%v, %v) = %q, want %q", tc.a, tc.b, got, tc.want)
		}
		if tc.a.Equal(tc.b) != (tc.want == "") {
			t.Errorf("Equal(%v, %v) disagrees with Differ", tc.a, tc.b)
		}
	}
}

func TestDiffSnapshots(t *testing.T) {
	e := func(p, text string) Entry { return Entry{Path: p, Text: text} }
	tests := []struct {
		name      string
		a, b      []Entry
		path, key string
	}{
		{"same", []Entry{e(".", "root"), e("a", "file size=1")}, []Entry{e(".", "root"), e("a", "file size=1")}, "", ""},
		{"missing in b", []Entry{e(".", "root"), e("a", "file")}, []Entry{e(".", "root")}, "a", "missing"},
		{"missing in a", []Entry{e(".", "root")}, []Entry{e(".", "root"), e("b", "file")}, "b", "missing"},
		{"size", []Entry{e("a", "file mode=0644 size=1 sha256=aa")}, []Entry{e("a", "file mode=0644 size=2 sha256=bb")}, "a", "size"},
		{"xattr", []Entry{e("a", "dir xattr:user.a=1")}, []Entry{e("a", "dir")}, "a", "xattr:user.a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := DiffSnapshots(tc.a, tc.b)
			switch {
			case d == nil && tc.path != "":
				t.Fatalf("no difference, want %s in %s", tc.key, tc.path)
			case d != nil && (d.Path != tc.path || d.Field != tc.key):
				t.Fatalf("difference %s in %s, want %s in %s", d.Field, d.Path, tc.key, tc.path)
			}
		})
	}
}

// localRunner is a Runner over two directories of the same local file
// system, which must agree with itself on everything.
func localRunner(t *testing.T) *Runner {
	t.Helper()
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r, err := NewRunner(Config{Under: Tree{"a", a}, Reference: Tree{"b", b}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestLocalAgreesWithItself runs sequences on two directories of one local
// file system: any mismatch there is the exerciser's own nondeterminism
// (a timestamp rule the kernel does not keep, a clock value leaking into
// a result), which would show as a false meshfs bug.
func TestLocalAgreesWithItself(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the sequences chown to other users")
	}
	r := localRunner(t)
	n := 5000
	if testing.Short() {
		n = 1000
	}
	for _, seed := range []uint64{1, 2, 3} {
		ops := Generate(seed, n, GenConfig{BlockSize: 4096})
		mm, err := r.Run(context.Background(), ops, 100)
		if err != nil {
			t.Fatal(err)
		}
		if mm != nil {
			t.Fatalf("seed=%d: two local directories differ: %s", seed, mm)
		}
	}
}

// TestPlantedDifferenceIsFoundAndMinimised tampers with one side behind
// the sequence's back, with real system calls, and checks that the
// comparison catches it and Minimize shrinks the sequence to the few
// operations that show it.
func TestPlantedDifferenceIsFoundAndMinimised(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the sequences chown to other users")
	}
	tests := []struct {
		name   string
		tamper func(op Op, root string)
	}{
		{"a byte appended to f after every pwrite", func(op Op, root string) {
			// After each successful pwrite, one more byte at the end
			// of the file on the reference side only.
			if op.Kind != KindPwrite || op.Len == 0 {
				return
			}
			// The slot's path is not known here; write through any
			// regular file named f at the top.
			f, err := os.OpenFile(filepath.Join(root, "f"), os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				f.Write([]byte{'!'})
				f.Close()
			}
		}},
		{"an xattr removed behind setxattr's back", func(op Op, root string) {
			if op.Kind == KindSetxattr {
				unix.Lremovexattr(filepath.Join(root, op.Path), op.Name)
			}
		}},
		{"a directory's mode changed at rmdir", func(op Op, root string) {
			if op.Kind == KindRmdir {
				unix.Chmod(filepath.Join(root, parentOf(op.Path)), 0o700)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := localRunner(t)
			r.tamper = tc.tamper
			ops := Generate(11, 3000, GenConfig{BlockSize: 4096})
			mm, err := r.Run(context.Background(), ops, 50)
			if err != nil {
				t.Fatal(err)
			}
			if mm == nil {
				t.Fatal("the planted difference was not found")
			}
			shrunk, err := r.Minimize(context.Background(), ops, mm, 50, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s", Report(11, len(ops), mm, shrunk, err))
			if shrunk.Prefix > mm.Index+1 || len(shrunk.Ops) > shrunk.Prefix {
				t.Fatalf("prefix %d, minimal %d: longer than the %d ops that found it", shrunk.Prefix, len(shrunk.Ops), mm.Index+1)
			}
			if len(shrunk.Ops) > 8 {
				t.Errorf("minimal sequence has %d ops; a planted difference needs only a few", len(shrunk.Ops))
			}
		})
	}
}

// TestVanishedTreeIsAnError removes the tree under test in the middle of a
// run, as a mount that dies takes it away: the run ends with an error
// saying so, not with a mismatch to minimise.
func TestVanishedTreeIsAnError(t *testing.T) {
	r := localRunner(t)
	n := 0
	r.tamper = func(Op, string) {
		if n++; n == 20 {
			os.RemoveAll(r.cfg.Under.Dir)
		}
	}
	mm, err := r.Run(context.Background(), Generate(5, 500, GenConfig{BlockSize: 4096}), 50)
	if mm != nil || err == nil || !strings.Contains(err.Error(), "directory is gone") {
		t.Fatalf("Run = %v, %v; want an error saying the directory is gone", mm, err)
	}
}

func TestParseDeviations(t *testing.T) {
	got, err := ParseDeviations(" times-past-2262,, ")
	if err != nil || !reflect.DeepEqual(got, []string{"times-past-2262"}) {
		t.Fatalf("ParseDeviations = %v, %v", got, err)
	}
	if _, err := ParseDeviations("times-past-2262,rmdir-open"); err == nil {
		t.Fatal("ParseDeviations accepted an unknown name")
	}
}

// TestToleratedCallsAreNotMade checks that a tolerated deviation skips
// exactly the calls it names, on both sides alike, and leaves the others.
func TestToleratedCallsAreNotMade(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s := NewSide("local", dir, 2)
	s.tolerate = map[string]bool{"times-past-2262": true}
	far := unix.Timespec{Sec: 13000000000}
	tests := []struct {
		op      Op
		skipped bool
	}{
		{Op{Kind: KindSetxattr, Path: "f", Name: "user.ok", Len: 1}, false},
		{Op{Kind: KindUtimens, Path: "f", Atime: far, Mtime: unix.Timespec{Nsec: unix.UTIME_OMIT}}, true},
		{Op{Kind: KindUtimens, Path: "f", Atime: unix.Timespec{Sec: 1e9}, Mtime: unix.Timespec{Sec: 1e9}}, false},
	}
	for _, tc := range tests {
		r := s.Apply(tc.op)
		if skipped := strings.HasSuffix(r.Value, "not compared"); skipped != tc.skipped {
			t.Errorf("%s: %s; skipped=%v, want %v", tc.op, r, skipped, tc.skipped)
		}
	}
	names, err := userXattrs(filepath.Join(dir, "f"))
	if err != nil || !reflect.DeepEqual(names, []string{"user.ok"}) {
		t.Fatalf("xattrs %v, %v: want only user.ok, the skipped calls made nothing", names, err)
	}
}
