package fuse

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Users of TestOtherUsers. They need no passwd entries: the kernel checks
// numbers.
type testUser struct {
	name   string
	uid    uint32
	groups []uint32 // the first is the primary group
}

var (
	userRoot  = testUser{"root", 0, []uint32{0}}
	userAlice = testUser{"alice", 1001, []uint32{1001, 2000}}
	userBob   = testUser{"bob", 1002, []uint32{1002}}
)

// permStep is one shell command run as a user with the tree's root as its
// working directory, so that error messages name the same relative paths
// on both file systems.
type permStep struct {
	user testUser
	cmd  string
}

// TestOtherUsers runs the same commands, as root and as two other users,
// on a mount with AllowOther and on a local directory, and compares each
// command's exit status, output and error text, and at the end every
// file's mode, owner and group. The kernel checks permissions for the
// mount (default_permissions) as it does for the local file system: owner,
// group (also supplementary) and other bits, search permission on
// directories, sticky directories, chmod and chown rules, setuid bits
// dropped on a write by another user; and the mount passes a setgid
// directory's group (and, to directories, its setgid bit) on, as a local
// file system does.
func TestOtherUsers(t *testing.T) {
	tm := newTestMesh(t)
	_, mnt := tm.mount(func(o *Options) { o.AllowOther = true })
	local := filepath.Join(t.TempDir(), "local")
	if err := os.Mkdir(local, 0o755); err != nil {
		t.Fatal(err)
	}
	// Other users must be able to reach both trees: t.TempDir's
	// directories are 0700.
	for _, root := range []string{mnt, local} {
		for dir := filepath.Dir(root); dir != "/" && dir != os.TempDir(); dir = filepath.Dir(dir) {
			if err := os.Chmod(dir, 0o711); err != nil {
				t.Fatal(err)
			}
		}
	}

	steps := []permStep{
		{userRoot, "mkdir -m 0777 work && mkdir -m 0700 priv && echo secret > priv/f && chmod 0755 ."},
		// Owner, group (supplementary 2000 for alice) and other bits.
		{userAlice, "umask 022; echo alice > work/a && chmod 0640 work/a && chgrp 2000 work/a"},
		{userAlice, "cat work/a"},
		{userBob, "cat work/a"},
		{userBob, "echo bob >> work/a"},
		{userRoot, "echo root > work/g && chown 0:2000 work/g && chmod 0060 work/g"},
		{userAlice, "echo alice >> work/g && cat work/g"},
		{userBob, "cat work/g"},
		{userRoot, "cat work/g"},
		// Search permission.
		{userBob, "ls priv"},
		{userBob, "cat priv/f"},
		{userBob, "touch priv/new"},
		// chmod and chown rules.
		{userBob, "chmod 0777 work/a"},
		{userAlice, "chown 1002 work/a"},
		{userAlice, "chgrp 1002 work/a"},
		{userAlice, "chgrp 1001 work/a && chmod 0600 work/a"},
		{userRoot, "chown 1002:1002 work/a"},
		{userAlice, "cat work/a"},
		// Writing into a directory needs write and search on it.
		{userRoot, "mkdir -m 0755 work/ro"},
		{userBob, "touch work/ro/x"},
		{userBob, "mkdir work/ro/d"},
		{userRoot, "touch work/ro/x"},
		{userBob, "rm -f work/ro/x"},
		{userBob, "mv work/ro/x work/moved"},
		// Sticky directory: only the owner of a file (or of the
		// directory, or root) may remove or rename it.
		{userRoot, "mkdir -m 1777 work/sticky"},
		{userAlice, "echo a > work/sticky/f"},
		{userBob, "rm -f work/sticky/f"},
		{userBob, "mv work/sticky/f work/sticky/g"},
		{userBob, "echo b > work/sticky/b && mv work/sticky/b work/sticky/b2"},
		{userAlice, "mv work/sticky/f work/sticky/f2 && rm work/sticky/b2"},
		{userAlice, "rm work/sticky/f2"},
		// Setgid directory: new entries take its group; new directories
		// its setgid bit too.
		{userRoot, "mkdir -m 2777 work/sg && chgrp 3000 work/sg"},
		{userAlice, "umask 022; touch work/sg/f && mkdir work/sg/d && touch work/sg/d/f && ln -s f work/sg/l"},
		// A setuid file loses its setuid bit when another user writes it.
		{userRoot, "echo x > work/suid && chmod 04777 work/suid"},
		{userBob, "echo y >> work/suid"},
		// Removing another user's file from a world-writable directory
		// (not sticky) is allowed.
		{userBob, "rm -f work/a"},
	}
	for i, st := range steps {
		want := runAs(t, local, st)
		got := runAs(t, mnt, st)
		t.Logf("step %d as %s: %s -> %s", i, st.user.name, st.cmd, want)
		if got != want {
			t.Errorf("step %d as %s: %s\nmeshfs: %s\nlocal:  %s", i, st.user.name, st.cmd, got, want)
		}
	}
	wantTree, gotTree := permTree(t, local), permTree(t, mnt)
	if gotTree != wantTree {
		t.Errorf("trees differ\nmeshfs:\n%s\nlocal:\n%s", gotTree, wantTree)
	}
	// The test would prove little if every command had failed, or none.
	if !strings.Contains(wantTree, "sg/d dir 2755 1001:3000") || !strings.Contains(wantTree, "suid file 0777") {
		t.Errorf("the local tree lacks what the steps should have made:\n%s", wantTree)
	}
}

// runAs runs st in root as its user and describes the outcome.
func runAs(t *testing.T, root string, st permStep) string {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", st.cmd)
	cmd.Dir = root
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{
		Uid: st.user.uid, Gid: st.user.groups[0], Groups: st.user.groups,
	}}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %q: %v", st.cmd, err)
	}
	return fmt.Sprintf("exit %d: %q", code, strings.TrimSpace(out.String()))
}

// permTree lists every path under root with its type, mode, owner and group.
func permTree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(root, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		st := fi.Sys().(*syscall.Stat_t)
		kind := "file"
		switch {
		case fi.IsDir():
			kind = "dir"
		case fi.Mode()&os.ModeSymlink != 0:
			kind = "symlink"
		}
		mode := st.Mode & 0o7777
		if kind == "symlink" {
			mode = 0 // Linux shows 0777 for every symlink; nothing to compare
		}
		if strings.HasPrefix(rel, "work/") {
			rel = strings.TrimPrefix(rel, "work/")
		}
		fmt.Fprintf(&b, "%s %s %04o %d:%d\n", rel, kind, mode, st.Uid, st.Gid)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
