package scenarios

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestMetadataGrowsFromOneNode starts a mesh of one node, whose metadata
// has one replica and a witness for a quorum; restarts that node; adds two
// nodes, after which the metadata has three replicas and no witness; then
// kills the first node, and the metadata (names only: blocks have one
// copy in this mesh) is all there and writable.
func TestMetadataGrowsFromOneNode(t *testing.T) {
	m := startMesh(t, 1, "--replicas", "1")
	md := status(t, m).Metadata
	if md.Replicas != 1 || !md.Witness || md.Leader != "node1" {
		t.Fatalf("one node: metadata %+v; want 1 replica on node1 and a witness", md)
	}
	mnt := m.Mount()
	mkNames := func(prefix string, n int) {
		t.Helper()
		for i := range n {
			p := filepath.Join(mnt, fmt.Sprintf("%s%d", prefix, i))
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(p, "empty"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkNames := func(dir, prefix string, n int) {
		t.Helper()
		for i := range n {
			st, err := os.Stat(filepath.Join(dir, fmt.Sprintf("%s%d", prefix, i), "empty"))
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("%s%d/empty: %v", prefix, i, err)
			}
		}
	}
	mkNames("a", 20)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Kill(0); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	eventuallyOK(t, "mkdir after the lone node restarted", mkdirOnce(filepath.Join(mnt, "after-restart")))
	checkNames(mnt, "a", 20)

	if err := m.AddNode(ctx, "node2"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	md = status(t, m).Metadata
	if md.Replicas != 1 || !md.Witness || md.Servers != 2 {
		t.Fatalf("two nodes: metadata %+v; want 1 replica, 2 servers and the witness", md)
	}
	if err := m.AddNode(ctx, "node3"); err != nil {
		t.Fatal(err)
	}
	waitMetaReplicas(t, m, 3)
	mkNames("b", 20)

	if err := m.Kill(0); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	eventuallyOK(t, "mkdir after the first node died", mkdirOnce(filepath.Join(mnt, "after-kill")))
	t.Logf("metadata writable %v after the first node was killed", time.Since(t0).Round(time.Millisecond))
	checkNames(mnt, "a", 20)
	checkNames(mnt, "b", 20)
	other := mountAgain(t, m)
	checkNames(other, "a", 20)
	checkNames(other, "b", 20)
}

// mkdirOnce makes a directory; retried, an EEXIST means an earlier try
// that reported a failure did commit.
func mkdirOnce(path string) func() error {
	return func() error {
		if err := os.Mkdir(path, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		return nil
	}
}

// eventuallyOK retries op for up to 30 s.
func eventuallyOK(t *testing.T, what string, op func() error) {
	t.Helper()
	t0 := time.Now()
	for {
		err := op()
		if err == nil {
			return
		}
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("%s: %v (for 30 s)", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
