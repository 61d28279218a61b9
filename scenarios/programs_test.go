package scenarios

// Real programs on a mount: git, tar, the Go toolchain, sqlite3 and an
// editor's save. Each uses the file system the way it does on a local disk
// (renames over existing files, fsync, hard links, mmap, byte-range locks,
// read-modify-write of pages), and each checks its result with its own tools
// (git fsck, PRAGMA integrity_check) and against the same work done on local
// disk, so a failure means what a user of that program would see.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// programTimeout bounds one run of a program: a hung mount fails the test
// with the program's output instead of stalling the suite.
const programTimeout = 2 * time.Minute

// needProgram fails the test if name is not installed. Failing, not
// skipping: a suite that skips when a package is missing passes without
// testing anything.
func needProgram(t *testing.T, name, debianPackage string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (Debian package %s): %v", name, debianPackage, err)
	}
	return path
}

// runProgram runs name with args in dir, with env added to this process's
// environment and stdin on its standard input, and returns its standard
// output and standard error. It fails the test with the command line and
// both outputs if the program exits non-zero or outlives programTimeout.
func runProgram(t *testing.T, dir string, env []string, stdin string, name string, args ...string) (stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), programTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	// Later entries win: env overrides the inherited values.
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	// A background child holding the pipes (git's auto-gc) must not make
	// Wait hang once the program itself has exited.
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	if err != nil {
		t.Fatalf("%s %s (in %s) failed after %v: %v\nstdout:\n%s\nstderr:\n%s",
			name, strings.Join(args, " "), dir, time.Since(start).Round(time.Millisecond), err,
			clip(out.String()), clip(errOut.String()))
	}
	return out.String(), errOut.String()
}

// clip keeps a program's output short enough to read in a test log.
func clip(s string) string {
	const max = 4000
	if len(s) > max {
		return s[:max/2] + "\n…\n" + s[len(s)-max/2:]
	}
	return s
}

func writeFileOrFail(t *testing.T, path string, data []byte, perm os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatalf("create the directory of %s: %v", path, err)
	}
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	// WriteFile's perm is filtered by the umask; the tests want it exact.
	if err := os.Chmod(path, perm); err != nil {
		t.Fatalf("chmod %s: %v", path, err)
	}
}

// programMesh is the mesh the programs run on: one mesh for all of them,
// each program in its own directory, so the suite pays for starting a mesh
// and a second mount once.
type programMesh struct {
	mount     string // of 'meshfs up'
	other     string // a second mount of the same mesh, in another process
	blockSize int
}

// TestPrograms runs git, tar, the Go toolchain and sqlite3 on a mount.
func TestPrograms(t *testing.T) {
	m := startMesh(t, 3)
	pm := programMesh{mount: m.Mount(), other: mountAgain(t, m), blockSize: m.State.BlockSize}
	t.Run("git", func(t *testing.T) { testGitOnMount(t, pm) })
	t.Run("tar", func(t *testing.T) { testTarOnMount(t, pm) })
	t.Run("go build", func(t *testing.T) { testGoBuildOnMount(t, pm) })
	t.Run("sqlite3", func(t *testing.T) { testSQLiteOnMount(t, pm) })
}

// --- git ---------------------------------------------------------------

// gitEnvironment isolates git from the machine's configuration, and turns
// off the automatic gc that would otherwise run detached, racing the test.
func gitEnvironment(t *testing.T) []string {
	t.Helper()
	home := t.TempDir()
	config := "[user]\n\tname = Mesh Tester\n\temail = tester@meshfs.invalid\n" +
		"[gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n[advice]\n\tdetachedHead = false\n"
	writeFileOrFail(t, filepath.Join(home, ".gitconfig"), []byte(config), 0o644)
	return []string{"HOME=" + home, "XDG_CONFIG_HOME=" + home, "GIT_CONFIG_NOSYSTEM=1",
		"GIT_TERMINAL_PROMPT=0", "LC_ALL=C", "TZ=UTC"}
}

// gitHistoryAssets is the binary content of the test repository, made once
// so that the history built on local disk and on the mount is the same.
type gitHistoryAssets struct {
	logo, logoV2, big []byte
}

// gitHistoryCommits is how many commits buildGitHistory makes.
const gitHistoryCommits = 6

// buildGitHistory makes a repository at repo with a fixed history: files in
// nested directories, edits, a rename, deletes, a file larger than a block,
// and a repack. Author and committer dates are fixed, so the same history
// built anywhere has the same commit hashes.
func buildGitHistory(t *testing.T, repo string, env []string, assets gitHistoryAssets) {
	t.Helper()
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatalf("create %s: %v", repo, err)
	}
	commitNo := 0
	git := func(args ...string) {
		t.Helper()
		runProgram(t, repo, env, "", "git", args...)
	}
	commit := func(message string, extra ...string) {
		t.Helper()
		commitNo++
		date := fmt.Sprintf("2024-01-%02dT12:00:00Z", commitNo)
		runProgram(t, repo, slices.Concat(env, []string{"GIT_AUTHOR_DATE=" + date, "GIT_COMMITTER_DATE=" + date}), "",
			"git", append([]string{"commit", "-q", "-m", message}, extra...)...)
	}
	file := func(name, content string, perm os.FileMode) {
		t.Helper()
		writeFileOrFail(t, filepath.Join(repo, name), []byte(content), perm)
	}

	git("init", "-q", "-b", "main")
	file("README.md", "# meshfs test repository\n", 0o644)
	file("src/main.c", "#include \"lib/util.h\"\nint main(void) { return util(); }\n", 0o644)
	file("src/lib/util.c", "int util(void) { return 0; }\n", 0o644)
	file("src/lib/util.h", "int util(void);\n", 0o644)
	file("docs/guide.md", "How to use it.\n", 0o644)
	file("scripts/build.sh", "#!/bin/sh\ncc -o app src/*.c src/lib/*.c\n", 0o755)
	writeFileOrFail(t, filepath.Join(repo, "assets/logo.bin"), assets.logo, 0o644)
	git("add", "-A")
	commit("initial tree")

	file("src/main.c", "#include \"lib/util.h\"\n#include <stdio.h>\nint main(void) { puts(\"hi\"); return util(); }\n", 0o644)
	file("docs/api.md", "The API.\n", 0o644)
	writeFileOrFail(t, filepath.Join(repo, "assets/logo.bin"), assets.logoV2, 0o644)
	git("add", "-A")
	commit("edit main, add api docs, new logo")

	git("mv", "src/lib/util.c", "src/util.c")
	git("mv", "docs/guide.md", "docs/manual.md")
	commit("rename util.c and the guide")

	git("rm", "-q", "scripts/build.sh", "src/lib/util.h")
	file("src/main.c", "#include <stdio.h>\nint util(void);\nint main(void) { puts(\"hi\"); return util(); }\n", 0o644)
	git("add", "-A")
	commit("delete the build script and the header")

	writeFileOrFail(t, filepath.Join(repo, "assets/big.bin"), assets.big, 0o644)
	git("add", "-A")
	commit("add a file larger than a block")

	// gc packs the loose objects: temporary packs renamed into place,
	// fsynced, loose objects and their directories deleted.
	git("gc", "-q")

	file("README.md", "# meshfs test repository\n\nAfter gc.\n", 0o644)
	commit("edit after gc", "-a")
}

// checkGitRepository runs git fsck --full and checks that it reports
// nothing but dangling objects, and that the work tree matches HEAD.
func checkGitRepository(t *testing.T, repo string, env []string) {
	t.Helper()
	stdout, stderr := runProgram(t, repo, env, "", "git", "fsck", "--full", "--no-progress")
	for _, line := range strings.Split(strings.TrimSpace(stdout+"\n"+stderr), "\n") {
		if line != "" && !strings.HasPrefix(line, "dangling ") {
			t.Errorf("git fsck --full in %s reports: %s", repo, line)
		}
	}
	if status, _ := runProgram(t, repo, env, "", "git", "status", "--porcelain"); status != "" {
		t.Errorf("git status in %s is not clean:\n%s", repo, status)
	}
}

func gitOutput(t *testing.T, repo string, env []string, args ...string) string {
	t.Helper()
	out, _ := runProgram(t, repo, env, "", "git", args...)
	return strings.TrimSpace(out)
}

// testGitOnMount builds a history on the mount and checks it is the very
// history git builds on local disk, that git fsck finds nothing wrong, that
// clones (from this mount and from another) have the same tree, and that a
// commit made on the other mount shows here.
func testGitOnMount(t *testing.T, pm programMesh) {
	needProgram(t, "git", "git")
	env := gitEnvironment(t)
	bs := pm.blockSize
	assets := gitHistoryAssets{
		logo:   randomBytes(t, 300<<10),
		logoV2: randomBytes(t, 200<<10),
		big:    randomBytes(t, bs+12345),
	}

	local := filepath.Join(t.TempDir(), "repo")
	buildGitHistory(t, local, env, assets)
	onMount := filepath.Join(pm.mount, "repo")
	buildGitHistory(t, onMount, env, assets)

	checkGitRepository(t, onMount, env)
	wantLog := gitOutput(t, local, env, "log", "--format=%H %T %s")
	gotLog := gitOutput(t, onMount, env, "log", "--format=%H %T %s")
	if gotLog != wantLog {
		t.Fatalf("history on the mount differs from the same history on local disk:\nmount:\n%s\nlocal disk:\n%s", gotLog, wantLog)
	}
	if n := len(strings.Split(gotLog, "\n")); n != gitHistoryCommits {
		t.Fatalf("git log on the mount lists %d commits, want %d:\n%s", n, gitHistoryCommits, gotLog)
	}
	wantTree := gitOutput(t, local, env, "rev-parse", "HEAD^{tree}")
	if got := fileSum(t, filepath.Join(onMount, "assets/big.bin")); got != sha256.Sum256(assets.big) {
		t.Errorf("assets/big.bin in the work tree on the mount: sha256 %x, want %x", got[:8], sha256.Sum256(assets.big))
	}

	// A clone from the mount copies its objects (another file system: no
	// hard links).
	clone := filepath.Join(t.TempDir(), "clone")
	runProgram(t, "/", env, "", "git", "clone", "-q", onMount, clone)
	checkGitRepository(t, clone, env)
	if got := gitOutput(t, clone, env, "rev-parse", "HEAD^{tree}"); got != wantTree {
		t.Errorf("tree of a clone of the mount: %s, want %s", got, wantTree)
	}

	// Another mount reads the repository the first one wrote; --no-local
	// clones through git upload-pack, which maps the packs.
	other := filepath.Join(pm.other, "repo")
	checkGitRepository(t, other, env)
	if got := gitOutput(t, other, env, "log", "--format=%H %T %s"); got != wantLog {
		t.Fatalf("history read on a second mount:\n%s\nwant:\n%s", got, wantLog)
	}
	clone2 := filepath.Join(t.TempDir(), "clone2")
	runProgram(t, "/", env, "", "git", "clone", "-q", "--no-local", other, clone2)
	if got := gitOutput(t, clone2, env, "rev-parse", "HEAD^{tree}"); got != wantTree {
		t.Errorf("tree of a clone of the second mount: %s, want %s", got, wantTree)
	}

	// A commit on the second mount rewrites the index, a ref and the
	// reflog (each by rename over); the first mount sees all of it.
	writeFileOrFail(t, filepath.Join(other, "docs/api.md"), []byte("The API, edited on another mount.\n"), 0o644)
	runProgram(t, other, env, "", "git", "commit", "-q", "-a", "-m", "edit on the second mount")
	wantHead := gitOutput(t, other, env, "rev-parse", "HEAD")
	if got := gitOutput(t, onMount, env, "rev-parse", "HEAD"); got != wantHead {
		t.Errorf("HEAD on the first mount after a commit on the second: %s, want %s", got, wantHead)
	}
	if n := len(strings.Split(gitOutput(t, onMount, env, "log", "--format=%H"), "\n")); n != gitHistoryCommits+1 {
		t.Errorf("git log on the first mount lists %d commits after a commit on the second, want %d", n, gitHistoryCommits+1)
	}
	checkGitRepository(t, onMount, env)
}

// --- tar ---------------------------------------------------------------

// treeEntry is what tar must carry over for one path of a tree.
type treeEntry struct {
	kind     string // "file", "dir" or "symlink"
	perm     fs.FileMode
	uid, gid uint32
	size     int64
	sum      [32]byte // of a file's content
	target   string   // of a symlink
	mtime    int64    // Unix seconds: the archive format keeps no more
	nlink    uint64   // of a file
	links    string   // of a file with several names: all of them, sorted
}

func (e treeEntry) String() string {
	switch e.kind {
	case "symlink":
		return fmt.Sprintf("symlink -> %q, owner %d:%d, mtime %d", e.target, e.uid, e.gid, e.mtime)
	case "dir":
		return fmt.Sprintf("dir %v, owner %d:%d, mtime %d", e.perm, e.uid, e.gid, e.mtime)
	}
	return fmt.Sprintf("file %v, owner %d:%d, %d bytes, sha256 %x, mtime %d, nlink %d, names [%s]",
		e.perm, e.uid, e.gid, e.size, e.sum[:6], e.mtime, e.nlink, e.links)
}

// treeManifest describes every path under root (root itself excluded).
// Hard links show as the set of names sharing an inode, so two trees
// compare equal only if the same names are links of one file.
func treeManifest(t *testing.T, root string) map[string]treeEntry {
	t.Helper()
	manifest := map[string]treeEntry{}
	namesOfInode := map[uint64][]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == root {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			return fmt.Errorf("lstat %s: %w", path, err)
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := treeEntry{
			perm: info.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky),
			uid:  st.Uid, gid: st.Gid, mtime: st.Mtim.Sec,
		}
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			e.kind, e.perm = "symlink", 0 // a symlink's mode means nothing
			if e.target, err = os.Readlink(path); err != nil {
				return err
			}
		case info.IsDir():
			e.kind = "dir"
		case info.Mode().IsRegular():
			e.kind, e.size, e.nlink = "file", st.Size, uint64(st.Nlink)
			e.sum = fileSum(t, path)
			namesOfInode[st.Ino] = append(namesOfInode[st.Ino], rel)
		default:
			return fmt.Errorf("%s: unexpected file type %v", path, info.Mode().Type())
		}
		manifest[rel] = e
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	for _, names := range namesOfInode {
		if len(names) < 2 {
			continue
		}
		sort.Strings(names)
		for _, name := range names {
			e := manifest[name]
			e.links = strings.Join(names, ", ")
			manifest[name] = e
		}
	}
	return manifest
}

// compareTrees reports every path whose entry differs between want and got.
func compareTrees(t *testing.T, what string, want, got map[string]treeEntry) {
	t.Helper()
	var diffs []string
	for path, w := range want {
		g, ok := got[path]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: missing (want %v)", path, w))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s:\n\t  got %v\n\twant %v", path, g, w))
		}
	}
	for path, g := range got {
		if _, ok := want[path]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: unexpected %v", path, g))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		t.Errorf("%s: %d of %d paths differ:\n%s", what, len(diffs), len(want), strings.Join(diffs, "\n"))
	}
}

// makeTarSourceTree builds, on local disk, a tree with what an archive
// carries: files of sizes around the block size, empty files and
// directories, modes with special bits, other owners, symlinks of every
// kind, hard links across directories, long and non-ASCII names, and old
// modification times.
func makeTarSourceTree(t *testing.T, root string, blockSize int) {
	t.Helper()
	sizes := map[string]int{
		"empty": 0, "one": 1, "page-1": 4095, "page": 4096, "odd": 65537,
		"block-1": blockSize - 1, "block": blockSize, "block+1": blockSize + 1,
		"two-blocks-and-a-bit": 2*blockSize + 777,
	}
	for name, size := range sizes {
		writeFileOrFail(t, filepath.Join(root, "data", name), randomBytes(t, size), 0o644)
	}
	files := []struct {
		path string
		size int
		perm fs.FileMode
	}{
		{"a/b/c/d/e/deep.txt", 100, 0o644},
		{"a/secret", 200, 0o600},
		{"a/b/tool", 3000, 0o755},
		{"a/b/readonly", 50, 0o444},
		{"a/b/setuid-tool", 1000, 0o755 | fs.ModeSetuid},
		{"a/b/setgid-tool", 1000, 0o750 | fs.ModeSetgid},
		{"names/with space.txt", 10, 0o644},
		{"names/ünïcødé-名前.txt", 10, 0o644},
		{"names/" + strings.Repeat("long-name-", 20) + ".txt", 10, 0o644},
	}
	for _, f := range files {
		writeFileOrFail(t, filepath.Join(root, f.path), randomBytes(t, f.size), f.perm)
	}
	mustDo := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	p := func(rel string) string { return filepath.Join(root, rel) }
	mustDo("mkdir", os.MkdirAll(p("empty-dir"), 0o755))
	mustDo("mkdir", os.MkdirAll(p("private-dir/inner"), 0o700))
	mustDo("mkdir", os.MkdirAll(p("shared-tmp"), 0o755))
	mustDo("chmod", os.Chmod(p("shared-tmp"), 0o777|fs.ModeSticky))
	mustDo("mkdir", os.MkdirAll(p("sealed"), 0o755))
	writeFileOrFail(t, p("sealed/inside"), []byte("in a read-only directory\n"), 0o644)
	mustDo("chmod", os.Chmod(p("sealed"), 0o555))

	mustDo("symlink", os.Symlink("data/block", p("link-to-file")))
	mustDo("symlink", os.Symlink("a/b", p("link-to-dir")))
	mustDo("symlink", os.Symlink("../../data/one", p("a/b/link-up")))
	mustDo("symlink", os.Symlink("/etc/hostname", p("link-absolute")))
	mustDo("symlink", os.Symlink("does/not/exist", p("link-dangling")))

	mustDo("link", os.Link(p("data/odd"), p("a/odd-hardlink")))
	mustDo("link", os.Link(p("data/odd"), p("a/b/c/odd-hardlink-2")))
	mustDo("link", os.Link(p("data/two-blocks-and-a-bit"), p("names/big-hardlink")))
	mustDo("link", os.Link(p("data/empty"), p("empty-hardlink")))

	mustDo("chown", os.Lchown(p("a/secret"), 1000, 1000))
	mustDo("chown", os.Lchown(p("private-dir"), 1234, 5678))
	mustDo("chown", os.Lchown(p("link-to-dir"), 4321, 4321))

	// Old times, set last and deepest first: creating a name changes its
	// directory's mtime.
	var paths []string
	mustDo("walk "+root, filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err == nil && path != root {
			paths = append(paths, path)
		}
		return err
	}))
	sort.Sort(sort.Reverse(sort.StringSlice(paths)))
	for i, path := range paths {
		when := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC).Add(time.Duration(i) * time.Hour)
		ts := []unix.Timespec{unix.NsecToTimespec(when.UnixNano()), unix.NsecToTimespec(when.UnixNano())}
		// No following: a symlink's own time, not its target's.
		mustDo("set times of "+path, unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// testTarOnMount unpacks an archive onto the mount, archives the result
// from the mount onto the mount, and unpacks that on local disk: every
// path keeps its content, mode, owner, mtime, symlink target and hard-link
// identity, on the mount, on a second mount, and after the round trip.
func testTarOnMount(t *testing.T, pm programMesh) {
	needProgram(t, "tar", "tar")
	if os.Geteuid() != 0 {
		// Only root gives files away (the source tree has other owners)
		// and has tar restore owners and set-id bits.
		t.Fatalf("the tar test runs as root, like the mounts; euid is %d", os.Geteuid())
	}
	work := t.TempDir()
	source := filepath.Join(work, "source")
	makeTarSourceTree(t, source, pm.blockSize)
	want := treeManifest(t, source)

	archive := filepath.Join(work, "source.tar")
	runProgram(t, "/", nil, "", "tar", "-C", source, "-cf", archive, ".")
	unpacked := filepath.Join(pm.mount, "unpacked")
	if err := os.Mkdir(unpacked, 0o755); err != nil {
		t.Fatal(err)
	}
	// -p and, as root, ownership: tar restores modes and owners.
	runProgram(t, "/", nil, "", "tar", "-C", unpacked, "-xpf", archive)
	compareTrees(t, "tree unpacked onto the mount", want, treeManifest(t, unpacked))
	compareTrees(t, "the same tree read on a second mount", want,
		treeManifest(t, filepath.Join(pm.other, "unpacked")))

	roundTrip := filepath.Join(pm.mount, "round-trip.tar")
	runProgram(t, "/", nil, "", "tar", "-C", unpacked, "-cf", roundTrip, ".")
	back := filepath.Join(work, "back")
	if err := os.Mkdir(back, 0o755); err != nil {
		t.Fatal(err)
	}
	runProgram(t, "/", nil, "", "tar", "-C", back, "-xpf", roundTrip)
	compareTrees(t, "tree archived on the mount and unpacked on local disk", want, treeManifest(t, back))
}

// --- go build ----------------------------------------------------------

// writeGoModule writes a two-package module whose program prints
// "<greeting>, MESH". It uses nothing of the standard library but the
// runtime (println writes to standard error): a build with an empty cache
// then compiles about 20 packages, not the 100 that fmt would pull in,
// which keeps a cold build with the cache on the mount to seconds.
func writeGoModule(t *testing.T, dir, greeting string) {
	t.Helper()
	writeFileOrFail(t, filepath.Join(dir, "go.mod"), []byte("module example.com/hello\n\ngo 1.26\n"), 0o644)
	writeFileOrFail(t, filepath.Join(dir, "main.go"), []byte(`package main

import "example.com/hello/greet"

func main() { println(greet.Greeting("mesh")) }
`), 0o644)
	writeFileOrFail(t, filepath.Join(dir, "greet", "greet.go"), []byte(`package greet

// Greeting greets name, shouting.
func Greeting(name string) string {
	loud := []byte(name)
	for i, c := range loud {
		if 'a' <= c && c <= 'z' {
			loud[i] = c - 'a' + 'A'
		}
	}
	return "`+greeting+`, " + string(loud)
}
`), 0o644)
}

// goToolEnvironment keeps the go command off the network and away from the
// machine's configuration, with its build cache, GOPATH and work
// directory (GOTMPDIR) where the test says.
func goToolEnvironment(t *testing.T, cache, gopath, tmp string) []string {
	t.Helper()
	for _, d := range []string{cache, gopath, tmp} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("create %s: %v", d, err)
		}
	}
	return []string{
		"GOCACHE=" + cache, "GOPATH=" + gopath, "GOMODCACHE=" + filepath.Join(gopath, "pkg", "mod"), "GOTMPDIR=" + tmp,
		"GOTOOLCHAIN=local", "GOPROXY=off", "GOFLAGS=", "GOWORK=off", "GOENV=off", "CGO_ENABLED=0",
	}
}

// testGoBuildOnMount builds a module on the mount, runs the binary from the
// mount, edits and rebuilds it, and builds it from a second mount: first
// with the build cache on local disk, then with the build cache and GOPATH
// on the mount, where the cache's hundreds of files, each written to a
// temporary name and renamed into place, run through meshfs.
func testGoBuildOnMount(t *testing.T, pm programMesh) {
	goTool := needProgram(t, "go", "golang-go, or the toolchain from go.dev")

	// build builds the module in src and checks what the program prints.
	build := func(t *testing.T, src string, env []string, greeting string) {
		t.Helper()
		start := time.Now()
		runProgram(t, src, env, "", goTool, "build", "-o", "hello", ".")
		t.Logf("go build in %s: %v", src, time.Since(start).Round(time.Millisecond))
		want := greeting + ", MESH\n"
		if _, got := runProgram(t, src, nil, "", filepath.Join(src, "hello")); got != want {
			t.Errorf("program built in %s prints %q, want %q", src, got, want)
		}
	}
	// buildEditBuild builds the module in dir of the first mount, edits it
	// and builds again (the edit must be compiled, not served from the
	// cache), then builds the same sources through the second mount.
	buildEditBuild := func(t *testing.T, dir string, env, otherEnv []string) {
		src := filepath.Join(pm.mount, dir)
		writeGoModule(t, src, "hello")
		build(t, src, env, "hello")
		writeGoModule(t, src, "goodbye")
		build(t, src, env, "goodbye")
		build(t, filepath.Join(pm.other, dir), otherEnv, "goodbye")
	}

	t.Run("cache on local disk", func(t *testing.T) {
		// The user's own cache, warm with the standard library: what a
		// developer's build of sources on a mount uses.
		cache, _ := runProgram(t, "/", nil, "", goTool, "env", "GOCACHE")
		local := t.TempDir()
		env := goToolEnvironment(t, strings.TrimSpace(cache), filepath.Join(local, "gopath"), filepath.Join(local, "tmp"))
		buildEditBuild(t, "hello-local-cache", env, env)
	})
	t.Run("cache on the mount", func(t *testing.T) {
		// The work directory stays local: the compiler's scratch files
		// would double the files written, and the time, for little more
		// than the cache's writes already cover.
		tmp := t.TempDir()
		onMount := func(mount string) []string {
			tools := filepath.Join(mount, "go-tools")
			return goToolEnvironment(t, filepath.Join(tools, "cache"), filepath.Join(tools, "gopath"), tmp)
		}
		// The second mount's build finds the runtime in what the first
		// mount cached.
		buildEditBuild(t, "hello-cache-on-mount", onMount(pm.mount), onMount(pm.other))
	})
}

// --- sqlite3 -----------------------------------------------------------

// sqliteInsertScript sets the journal mode, creates a table with an index
// and inserts transactions*rowsPerTransaction rows of 400 random bytes, one
// transaction at a time (each commit is a journal write, fsyncs and a
// journal delete or a WAL append).
func sqliteInsertScript(journalMode string, transactions, rowsPerTransaction int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "PRAGMA journal_mode=%s;\n", journalMode)
	b.WriteString("CREATE TABLE item(id INTEGER PRIMARY KEY, batch INTEGER NOT NULL, payload BLOB NOT NULL);\n")
	b.WriteString("CREATE INDEX item_batch ON item(batch);\n")
	for k := 0; k < transactions; k++ {
		fmt.Fprintf(&b, "BEGIN;\nWITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM n WHERE x < %d)\n"+
			"INSERT INTO item(batch, payload) SELECT %d, randomblob(400) FROM n;\nCOMMIT;\n", rowsPerTransaction, k)
	}
	return b.String()
}

// testSQLiteOnMount has sqlite3 insert 10,000 rows in 100 transactions
// into a database on the mount, with the default rollback journal and with
// a write-ahead log, and checks the database with PRAGMA integrity_check
// on this mount and on a second one.
func testSQLiteOnMount(t *testing.T, pm programMesh) {
	sqlite := needProgram(t, "sqlite3", "sqlite3")
	const transactions, rowsPerTransaction = 100, 100
	check := "PRAGMA integrity_check;\nSELECT count(*), count(DISTINCT batch), sum(length(payload)) FROM item;\n"
	wantCheck := fmt.Sprintf("ok\n%d|%d|%d\n", transactions*rowsPerTransaction, transactions, transactions*rowsPerTransaction*400)
	for _, journalMode := range []string{"delete", "wal"} {
		t.Run("journal_mode="+journalMode, func(t *testing.T) {
			dir := filepath.Join(pm.mount, "sqlite-"+journalMode)
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			db := filepath.Join(dir, "items.db")
			start := time.Now()
			out, _ := runProgram(t, dir, nil, sqliteInsertScript(journalMode, transactions, rowsPerTransaction), sqlite, "-bail", db)
			t.Logf("%d transactions of %d rows: %v", transactions, rowsPerTransaction, time.Since(start).Round(time.Millisecond))
			if strings.TrimSpace(out) != journalMode {
				t.Fatalf("PRAGMA journal_mode=%s answered %q", journalMode, out)
			}
			if got, _ := runProgram(t, dir, nil, check, sqlite, "-bail", db); got != wantCheck {
				t.Errorf("check on the mount that wrote the database:\n%s\nwant:\n%s", got, wantCheck)
			}
			// The last connection's close removes the journal (or
			// checkpoints and removes the WAL): one left behind would be
			// rolled back or replayed by the next reader.
			if names, err := os.ReadDir(dir); err != nil || len(names) != 1 {
				var listing []string
				for _, n := range names {
					listing = append(listing, n.Name())
				}
				t.Errorf("files beside the database after sqlite3 exited: %v (err %v), want only items.db", listing, err)
			}
			otherDir := filepath.Join(pm.other, "sqlite-"+journalMode)
			if got, _ := runProgram(t, otherDir, nil, check, sqlite, "-bail", filepath.Join(otherDir, "items.db")); got != wantCheck {
				t.Errorf("check on a second mount:\n%s\nwant:\n%s", got, wantCheck)
			}
		})
	}
}

// --- editor save -------------------------------------------------------

// savedVersions records the SHA-256 of every version an editor saved, so a
// reader can tell a whole version from anything else.
type savedVersions struct {
	mu     sync.Mutex
	bySum  map[[32]byte]int
	latest int
}

func (s *savedVersions) add(content []byte, version int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bySum[sha256.Sum256(content)] = version
	s.latest = version
}

func (s *savedVersions) lookup(content []byte) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.bySum[sha256.Sum256(content)]
	return v, ok
}

func (s *savedVersions) last() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest
}

// editorVersion is version v of the edited file: a header naming the
// version, then bytes drawn from a generator seeded with v. Sizes differ
// between versions (1 MiB plus up to a block), so a size of one version
// with content of another is caught too.
func editorVersion(v, blockSize int) []byte {
	header := fmt.Sprintf("editor-save version %d\n", v)
	content := make([]byte, 1<<20+(v*7919)%blockSize)
	copy(content, header)
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(v))
	rand.NewChaCha8(seed).Read(content[len(header):])
	return content
}

// describeRead says what a read that is no saved version looks like.
func describeRead(b []byte) string {
	if len(b) == 0 {
		return "empty"
	}
	line, _, _ := bytes.Cut(b[:min(len(b), 64)], []byte("\n"))
	zeros := 0
	for _, c := range b {
		if c == 0 {
			zeros++
		}
	}
	return fmt.Sprintf("%d bytes starting %q, %d zero bytes: not any saved version (a mix, a stale size or a hole)", len(b), line, zeros)
}

// saveLikeAnEditor replaces path with content the way editors do: write a
// temporary file beside it, fsync it, rename it over the original, fsync
// the directory. A reader sees the old file or the new one, never a part.
func saveLikeAnEditor(path string, content []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if _, err := f.Write(content); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s over %s: %w", tmp, path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("open directory of %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync directory of %s: %w", path, err)
	}
	return nil
}

// editorReader reads the saved file in a loop on another mount and keeps
// account of what it saw.
type editorReader struct {
	path  string
	saved *savedVersions
	start time.Time

	reads        int
	timesSeen    map[int]int // version -> reads that returned it
	lastVersion  int
	badReads     int
	wentBackward int      // reads that returned an older version than the one before
	failures     []string // the first few bad reads

	// The current and the longest run of consecutive bad reads: one bad
	// read is a race with one save, a long run a cache that stays wrong.
	streak, longest                 int
	streakStart, longestStart       time.Time
	streakSavesBefore, longestSaves int // versions saved when the run started; saved during the longest
	longestDuration                 time.Duration
}

func newEditorReader(path string, saved *savedVersions) *editorReader {
	return &editorReader{path: path, saved: saved, start: time.Now(), timesSeen: map[int]int{}}
}

// readOnce reads the file once and checks it is a whole saved version,
// not older than the last one read.
func (r *editorReader) readOnce() {
	b, err := os.ReadFile(r.path)
	if errors.Is(err, fs.ErrNotExist) && r.lastVersion == 0 && r.badReads == 0 {
		time.Sleep(time.Millisecond) // not saved yet
		return
	}
	r.reads++
	switch {
	case err != nil:
		r.fail("%v", err)
		return
	}
	v, ok := r.saved.lookup(b)
	if !ok {
		r.fail("%s", describeRead(b))
		return
	}
	if v < r.lastVersion {
		r.wentBackward++
		r.fail("version %d after version %d", v, r.lastVersion)
	} else {
		r.streak = 0
	}
	r.timesSeen[v]++
	r.lastVersion = v
}

func (r *editorReader) fail(format string, args ...any) {
	now := time.Now()
	r.badReads++
	if r.streak == 0 {
		r.streakStart, r.streakSavesBefore = now, r.saved.last()
	}
	r.streak++
	if r.streak > r.longest {
		r.longest, r.longestStart = r.streak, r.streakStart
		r.longestDuration = now.Sub(r.streakStart)
		r.longestSaves = r.saved.last() - r.streakSavesBefore
	}
	if len(r.failures) < 12 {
		r.failures = append(r.failures, fmt.Sprintf("read %d at %v (after version %d): %s",
			r.reads, now.Sub(r.start).Round(time.Millisecond), r.lastVersion, fmt.Sprintf(format, args...)))
	}
}

// mountLogProblems returns the warnings and errors a mount logged.
func mountLogProblems(mountpoint string) string {
	b, err := os.ReadFile(mountpoint + ".mount.log")
	if err != nil {
		return fmt.Sprintf("(no mount log: %v)", err)
	}
	var lines []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			lines = append(lines, line)
		}
	}
	if len(lines) == 0 {
		return "(no warnings or errors)"
	}
	return clip(strings.Join(lines, "\n"))
}

// TestProgramEditorSave saves a file over and over on one mount, editor
// style, while another mount reads it in a loop: every read there must be
// one whole saved version, never an error, and versions never go back.
func TestProgramEditorSave(t *testing.T) {
	// A small block size makes each version several blocks, so a read
	// mixing blocks of two versions is possible, and caught.
	const blockSize = 256 << 10
	m := startMesh(t, 3, "--block-size", strconv.Itoa(blockSize))
	if m.State.BlockSize != blockSize {
		t.Fatalf("mesh block size %d, want %d", m.State.BlockSize, blockSize)
	}
	writerPath := filepath.Join(m.Mount(), "notes", "draft.txt")
	if err := os.Mkdir(filepath.Dir(writerPath), 0o755); err != nil {
		t.Fatal(err)
	}
	readerMount := mountAgain(t, m)

	saved := &savedVersions{bySum: map[[32]byte]int{}}
	const saveFor, minSaves = 6 * time.Second, 5
	writerDone := make(chan error, 1)
	go func() {
		start := time.Now()
		for v := 1; v <= minSaves || time.Since(start) < saveFor; v++ {
			content := editorVersion(v, blockSize)
			saved.add(content, v)
			if err := saveLikeAnEditor(writerPath, content); err != nil {
				writerDone <- fmt.Errorf("save version %d: %w", v, err)
				return
			}
		}
		writerDone <- nil
	}()

	reader := newEditorReader(filepath.Join(readerMount, "notes", "draft.txt"), saved)
	var writerErr error
	for writing := true; writing; {
		select {
		case writerErr = <-writerDone:
			writing = false
		default:
		}
		reader.readOnce()
	}
	if writerErr != nil {
		t.Errorf("writer on the first mount: %v", writerErr)
	}
	// Once saves stop, the reader gets the last one: the change feed
	// invalidates the other mount's cached name within milliseconds.
	final := saved.last()
	for deadline := time.Now().Add(5 * time.Second); reader.lastVersion != final && time.Now().Before(deadline); {
		reader.readOnce()
		time.Sleep(10 * time.Millisecond)
	}

	t.Logf("%d versions saved in %v; %d reads on the other mount saw %d distinct versions; %d bad reads",
		final, saveFor, reader.reads, len(reader.timesSeen), reader.badReads)
	if reader.badReads > 0 {
		t.Errorf("%d of %d reads on the other mount were not a whole saved version (%d went backward); "+
			"the longest run of bad reads: %d reads over %v from %v, while %d versions were saved; the first bad reads:\n%s\n"+
			"warnings and errors of the reading mount:\n%s",
			reader.badReads, reader.reads, reader.wentBackward,
			reader.longest, reader.longestDuration.Round(time.Millisecond), reader.longestStart.Sub(reader.start).Round(time.Millisecond),
			reader.longestSaves, strings.Join(reader.failures, "\n"), mountLogProblems(readerMount))
	}
	if len(reader.timesSeen) < 2 {
		t.Errorf("the reader saw %d distinct versions of %d saved: it did not watch the saves happen", len(reader.timesSeen), final)
	}
	if reader.lastVersion != final {
		t.Errorf("5 s after the last save the other mount still reads version %d, want %d", reader.lastVersion, final)
	}
}
