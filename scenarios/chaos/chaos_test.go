package chaos

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshfs/meshfs/persist"
)

// These tests need no mesh: they check the parts every scenario's verdict
// rests on.

func TestParseSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"12345", 12345, true}, {"64KiB", 64 << 10, true}, {"16MiB", 16 << 20, true},
		{"1GiB", 1 << 30, true}, {"1.5MiB", 3 << 19, true}, {"8M", 8 << 20, true}, {"100B", 100, true},
		{"", 0, false}, {"-1", 0, false}, {"MiB", 0, false}, {"12 parsecs", 0, false},
	} {
		got, err := ParseSize(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestDataSetSizes(t *testing.T) {
	const bs = 1 << 20
	for _, total := range []int64{0, 1, 5000, 3 * bs, 16 << 20, 100 << 20} {
		sizes := DataSetSizes(42, total, bs)
		var sum int64
		for _, n := range sizes {
			if n < 0 || n > 6*bs {
				t.Errorf("total %d: size %d out of range", total, n)
			}
			sum += n
		}
		if sum != total {
			t.Errorf("total %d: sizes sum to %d", total, sum)
		}
		if sizes[0] != 0 {
			t.Errorf("total %d: the first file is %d bytes, want the empty file", total, sizes[0])
		}
	}
	// The edges come first when there is room for them.
	sizes := DataSetSizes(42, 16<<20, bs)
	for i, want := range []int64{0, 1, 4095, bs - 1, bs, bs + 1, 3*bs + 12345} {
		if sizes[i] != want {
			t.Errorf("size %d = %d, want %d", i, sizes[i], want)
		}
	}
	// Seeded: the same seed gives the same data set, another seed another.
	if a, b := DataSetSizes(7, 16<<20, bs), DataSetSizes(7, 16<<20, bs); !slices.Equal(a, b) {
		t.Error("the same seed gave two data sets")
	}
	if a, b := DataSetSizes(7, 16<<20, bs), DataSetSizes(8, 16<<20, bs); slices.Equal(a, b) {
		t.Error("two seeds gave the same data set")
	}
	if !bytes.Equal(content(7, 3, 1000), content(7, 3, 1000)) || bytes.Equal(content(7, 3, 1000), content(7, 4, 1000)) {
		t.Error("content is not a function of (seed, stream)")
	}
}

func TestDescribeBlocks(t *testing.T) {
	data := content(1, 1, 2*1000+1)
	f := describe("x", data, 1000)
	want := []persist.BlockID{persist.Sum(data[:1000]), persist.Sum(data[1000:2000]), persist.Sum(data[2000:])}
	if len(f.Blocks) != 3 || f.Blocks[0] != want[0] || f.Blocks[1] != want[1] || f.Blocks[2] != want[2] {
		t.Errorf("blocks of a 2001-byte file in 1000-byte blocks: %v, want %v", f.Blocks, want)
	}
	if f.Sum != sha256.Sum256(data) || f.Size != 2001 {
		t.Errorf("sum or size wrong: %+v", f)
	}
	if e := describe("empty", nil, 1000); len(e.Blocks) != 0 {
		t.Errorf("an empty file has blocks: %v", e.Blocks)
	}
}

func TestInventoryCopies(t *testing.T) {
	a, b, c := persist.Sum([]byte("a")), persist.Sum([]byte("b")), persist.Sum([]byte("c"))
	before := Inventory{Holders: map[persist.BlockID][]string{a: {"n1", "n2", "n3"}, b: {"n1", "n2"}}, Sizes: map[persist.BlockID]int{a: 10, b: 20}}
	want := map[persist.BlockID]bool{a: true, b: true, c: true}
	if blocks, under, lost := before.Copies(want, 3); blocks != 3 || under != 2 || lost != 1 {
		t.Errorf("Copies = %d blocks, %d under, %d lost; want 3, 2, 1", blocks, under, lost)
	}
	// b is copied to n4 and later dropped from n1; c appears on n1.
	mid := Inventory{Holders: map[persist.BlockID][]string{a: {"n1", "n2", "n3"}, b: {"n1", "n2", "n4"}}, Sizes: map[persist.BlockID]int{a: 10, b: 20}}
	after := Inventory{Holders: map[persist.BlockID][]string{a: {"n1", "n2", "n3"}, b: {"n2", "n4"}, c: {"n1"}}, Sizes: map[persist.BlockID]int{a: 10, b: 20, c: 5}}
	if copies, bytes := after.Added(before, want); copies != 2 || bytes != 25 {
		t.Errorf("Added = %d copies, %d bytes; want 2, 25", copies, bytes)
	}
	u := mid.Union(after)
	if copies, bytes := u.Added(before, map[persist.BlockID]bool{a: true, b: true}); copies != 1 || bytes != 20 {
		t.Errorf("Added over the union = %d copies, %d bytes; want 1, 20", copies, bytes)
	}
}

func TestSummaryLine(t *testing.T) {
	r := Result{Scenario: "kill-one", Files: 3, BytesVerified: 99, Heal: 8.25, Seed: 7, Nodes: 4, Extra: [][2]string{{"killed", "node3"}, {"disk", "tmpfs:40 MiB"}}}
	line := r.Line()
	if !strings.HasPrefix(line, "scenario=kill-one files=3 bytes_verified=99 lost=0 read_errors=0 heal_s=8.2") {
		t.Errorf("line %q does not start with the standard fields", line)
	}
	kv, ok := ParseLine(line)
	if !ok || kv["result"] != "pass" || kv["killed"] != "node3" || kv["disk"] != "tmpfs:40_MiB" {
		t.Errorf("ParseLine(%q) = %v, %v", line, kv, ok)
	}
	r.Failures = []string{"lost"}
	r.Heal = -1
	if kv, _ := ParseLine(r.Line()); kv["result"] != "fail" || kv["heal_s"] != "none" {
		t.Errorf("a failed run's line: %q", r.Line())
	}
	if _, ok := ParseLine("[ 1.0s] scenario=x"); ok {
		t.Error("a log line parsed as a summary")
	}
}

func TestMountsUnescape(t *testing.T) {
	if got := unescapeMount(`/tmp/a\040b/mnt`); got != "/tmp/a b/mnt" {
		t.Errorf("unescapeMount = %q", got)
	}
}

func TestScenariosListed(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range All {
		if s.Name == "" || s.Run == nil || s.Summary == "" || s.Defaults.Nodes < 1 || s.Defaults.Duration <= 0 {
			t.Errorf("scenario %+v is incomplete", s)
		}
		if seen[s.Name] {
			t.Errorf("two scenarios named %s", s.Name)
		}
		seen[s.Name] = true
		if Lookup(s.Name) != s {
			t.Errorf("Lookup(%q) does not find it", s.Name)
		}
	}
}

func TestRefusedCopies(t *testing.T) {
	log := `time=2026-11-24T16:26:46.154Z level=WARN msg="repair: node has no room for the copies it owns; the blocks keep their copies elsewhere" actor=repair node=node4 refused=3
time=2026-11-24T16:26:47.174Z level=WARN msg="repair: copy failed" actor=repair block=ab to=node4 err="refused=100"
time=2026-11-24T16:26:47.174Z level=WARN msg="repair: node has no room for the copies it owns; the blocks keep their copies elsewhere" actor=repair node=node40 refused=7
time=2026-11-24T16:26:49.188Z level=WARN msg="repair: node has no room for the copies it owns; the blocks keep their copies elsewhere" actor=repair node=node4 refused=8
`
	path := filepath.Join(t.TempDir(), "node.log")
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	if n := refusedCopies(path, "node4"); n != 11 {
		t.Errorf("refusedCopies(node4) = %d, want 3+8", n)
	}
}
