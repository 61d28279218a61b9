package persist

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestKillChild is the child half of TestDurableAcrossSIGKILL: it puts random
// blocks into $PERSIST_DIR and prints each id once Put has returned, until it
// is killed. Run directly it does nothing.
func TestKillChild(t *testing.T) {
	if os.Getenv("PERSIST_CHILD") != "1" {
		t.Skip("child process of TestDurableAcrossSIGKILL")
	}
	s, err := Open(os.Getenv("PERSIST_DIR"), testOpts())
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(2)
	}
	// A bound in case the parent dies without killing us.
	deadline := time.Now().Add(2 * time.Minute)
	// Several writers, so the kill can land in a shared batch commit.
	out := make(chan BlockID)
	for range 4 {
		go func() {
			for time.Now().Before(deadline) {
				data := make([]byte, 64<<10)
				rand.Read(data)
				id := Sum(data)
				if err := s.Put(context.Background(), id, data); err != nil {
					fmt.Fprintln(os.Stderr, "child put:", err)
					os.Exit(2)
				}
				out <- id
			}
			os.Exit(3)
		}()
	}
	for id := range out {
		// Unbuffered: once the line is written the parent may count on it.
		fmt.Fprintln(os.Stdout, id)
	}
}

func TestDurableAcrossSIGKILL(t *testing.T) {
	if os.Getenv("PERSIST_CHILD") == "1" {
		t.Skip("in the child")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$")
	cmd.Env = append(os.Environ(), "PERSIST_CHILD=1", "PERSIST_DIR="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})

	const want = 20
	var acked []BlockID
	sc := bufio.NewScanner(stdout)
	for len(acked) < want && sc.Scan() {
		id, err := ParseBlockID(sc.Text())
		if err != nil {
			continue // not an id line, e.g. test framework output
		}
		acked = append(acked, id)
	}
	if len(acked) < want {
		t.Fatalf("child acknowledged only %d blocks before its output ended: %v", len(acked), sc.Err())
	}
	// Kill mid-flight: the other writers are still inside Put.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}

	s := openTest(t, dir)
	ctx := context.Background()
	for _, id := range acked {
		if _, err := s.Get(ctx, id); err != nil {
			t.Errorf("acknowledged block lost after SIGKILL: %v", err)
		}
	}
	if blocks, _ := s.Stats(); blocks < want {
		t.Errorf("Stats blocks = %d after reopen, want >= %d", blocks, want)
	}
	t.Logf("%d acknowledged blocks survived SIGKILL", len(acked))
}
