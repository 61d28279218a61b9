package posixdiff

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCouldHold(t *testing.T) {
	states := [][]byte{[]byte("abc"), []byte("abcXY"), []byte("aZ")}
	tests := []struct {
		data string
		ok   bool
	}{
		{"abc", true},
		{"abcXY", true},
		{"aZ", true},
		{"aZc", true},        // a mix of states, size of the first
		{"aZcXY", true},      // the later size with an earlier byte
		{"a\x00c", true},     // a hole where data was
		{"abcX", false},      // a size it never had
		{"abQ", false},       // a byte it never held there
		{"", false},          // never empty since its last fsync
		{"abcXY\x00", false}, // longer than ever
	}
	for _, tc := range tests {
		why := couldHold([]byte(tc.data), states)
		if (why == "") != tc.ok {
			t.Errorf("couldHold(%q) = %q, want ok=%v", tc.data, why, tc.ok)
		}
	}
}

// fakeCrasher stands in for a mount that dies: it reports a lost mount
// and does harm to the tree under test, so the check must catch it, or
// none.
type fakeCrasher struct {
	dir      string // the Tree.Dir of the side under test
	harm     func(t *testing.T, root string)
	t        *testing.T
	mountKep bool // report the mount as alive (a node crash)
}

func (f *fakeCrasher) Crash(ctx context.Context, n int) (Crash, error) {
	roots, err := filepath.Glob(filepath.Join(f.dir, "run*"))
	if err != nil || len(roots) != 1 {
		f.t.Fatalf("the run directory under %s: %v %v", f.dir, roots, err)
	}
	if f.harm != nil {
		f.harm(f.t, roots[0])
	}
	return Crash{What: "fake", MountLost: !f.mountKep}, nil
}

// regularFiles lists the non-empty regular files under root.
func regularFiles(root string) []string {
	var out []string
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() && info.Size() > 0 {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// TestCrashMode runs the crash mode on two local directories, with a fake
// crash that leaves everything (every state is one the local file system
// has) or does harm a real crash must never do; the harm must be caught.
func TestCrashMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the sequences chown to other users")
	}
	first := true // for the harm done at the first crash only
	tests := []struct {
		name      string
		harm      func(t *testing.T, root string)
		mountKept bool
		exclude   []Kind
		want      string // in the mismatch; "" for none
	}{
		{name: "nothing lost"},
		{
			// With no fsync, every file's durable state is the empty one
			// it was created with: losing every write at the first crash
			// is allowed, and the run goes on from what is left.
			name:    "unsynced writes lost",
			exclude: []Kind{KindFsync},
			harm: func(t *testing.T, root string) {
				if !first {
					return
				}
				first = false
				for _, p := range regularFiles(root) {
					if err := os.Truncate(p, 0); err != nil {
						t.Fatal(err)
					}
				}
			},
		},
		{name: "nothing lost, node crash", mountKept: true},
		{
			name: "every file emptied",
			harm: func(t *testing.T, root string) {
				for _, p := range regularFiles(root) {
					if err := os.Truncate(p, 0); err != nil {
						t.Fatal(err)
					}
				}
			},
			want: "size",
		},
		{
			name: "a byte flipped",
			harm: func(t *testing.T, root string) {
				for _, p := range regularFiles(root) {
					data, err := os.ReadFile(p)
					if err != nil {
						t.Fatal(err)
					}
					data[len(data)/2] ^= 0x5a
					if err := overwrite(p, data); err != nil {
						t.Fatal(err)
					}
				}
			},
			want: "after crash",
		},
		{
			name: "a name lost",
			harm: func(t *testing.T, root string) {
				entries, _ := os.ReadDir(root)
				if len(entries) > 0 {
					os.RemoveAll(filepath.Join(root, entries[0].Name()))
				}
			},
			want: "after crash",
		},
		{
			name: "mode changed, node crash",
			harm: func(t *testing.T, root string) {
				if ps := regularFiles(root); len(ps) > 0 {
					unix.Chmod(ps[0], 0o123)
				}
			},
			mountKept: true,
			want:      "mode",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
			for _, d := range []string{a, b} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			f := &fakeCrasher{dir: a, harm: tc.harm, t: t, mountKep: tc.mountKept}
			r, err := NewRunner(Config{Under: Tree{"a", a}, Reference: Tree{"b", b}, Crasher: f, CrashEvery: 60, CrashSeed: 5})
			if err != nil {
				t.Fatal(err)
			}
			ops := Generate(11, 3000, GenConfig{BlockSize: 4096, Exclude: tc.exclude})
			mm, err := r.Run(context.Background(), ops, 0)
			if err != nil {
				t.Fatal(err)
			}
			st := r.CrashStats()
			t.Logf("%s", st)
			if tc.want == "" {
				if mm != nil {
					t.Fatalf("a crash that lost nothing was reported: %s", mm)
				}
				if st.Crashes < 30 {
					t.Fatalf("only %d crashes in 3000 ops at one per 60", st.Crashes)
				}
				if !tc.mountKept && (st.ExactFiles == 0 || st.LooseFiles == 0) {
					t.Fatalf("the checks covered too little: %s", st)
				}
				if tc.harm != nil && st.LostFiles == 0 {
					t.Fatalf("no file came back older than the local one: the allowed loss was not exercised (%s)", st)
				}
				return
			}
			if mm == nil {
				t.Fatalf("harm done by the crash was not found (%s)", st)
			}
			if mm.Where != AtCrash || !strings.Contains(mm.String(), tc.want) {
				t.Fatalf("found, but not as a crash check naming %q: %s", tc.want, mm)
			}
			t.Logf("found: %s", mm)
		})
	}
}
