package lazyfs

// The stores meshfs nodes keep on the mount: bbolt (blocks) and JetStream's
// file store (metadata), each written by a process that is SIGKILLed, then
// the power is cut and they must find everything they reported durable.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

const (
	childEnv    = "LAZYFS_TEST_CHILD"     // what the child does and its arguments, space-separated
	childDirEnv = "LAZYFS_TEST_CHILD_DIR" // the directory on the mount the child works in
)

// runChild is a process using the mount. Whatever maps a file on the mount
// runs here, never in the test process: a page fault there would wait for
// the FUSE server while holding the address-space lock that the server's
// Go runtime may need to grow its heap, and the process would hang.
func runChild(args []string, dir string) int {
	var err error
	switch args[0] {
	case "bolt-commit":
		err = boltCommitChild(dir)
	case "bolt-nosync":
		err = boltNoSyncChild(dir)
	case "bolt-check":
		var committed int
		var exact bool
		if _, err = fmt.Sscan(strings.Join(args[1:], " "), &committed, &exact); err == nil {
			err = boltCheckChild(dir, committed, exact)
		}
	case "mmap":
		err = mmapChild(dir, args[1])
	case "nats":
		err = natsChild(dir)
	default:
		err = errors.New("unknown child")
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "child %q in %s: %v\n", args, dir, err)
		return 1
	}
	return 0
}

// child returns the command that runs this test binary as runChild.
func child(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+strings.Join(args, " "), childDirEnv+"="+dir)
	return cmd
}

// runChildUntil runs a child until it has printed want lines, SIGKILLs it,
// and returns every line it printed.
func runChildUntil(t *testing.T, dir string, want int, args ...string) []string {
	t.Helper()
	cmd := child(context.Background(), dir, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var lines []string
	reached, eof := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(eof)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			n := len(lines)
			mu.Unlock()
			if n == want {
				close(reached)
			}
		}
	}()
	select {
	case <-reached:
	case <-eof:
	case <-time.After(2 * time.Minute):
	}
	cmd.Process.Kill()
	<-eof // the child is dead once its stdout is closed
	cmd.Wait()
	if len(lines) < want {
		t.Fatalf("child %q printed %d of %d lines before it stopped; stderr:\n%s", args, len(lines), want, stderr.String())
	}
	return lines
}

// runChildToEnd runs a child to its exit and returns its output.
func runChildToEnd(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := child(ctx, dir, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child %q: %v; stdout:\n%s\nstderr:\n%s", args, err, out, stderr.String())
	}
	return out
}

func mmapChild(dir, name string) error {
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(m)
	return err
}

var boltBucket = []byte("blocks")

func boltKey(i int) []byte { return fmt.Appendf(nil, "k%06d", i) }

// boltValue is up to 40 KiB, so the file grows (ftruncate, fsync, remap).
func boltValue(i int) []byte {
	return bytes.Repeat(fmt.Appendf(nil, "value %d;", i), 1+(i*7919)%4000)
}

// boltDeletes reports whether transaction i deletes a key, and which one:
// freed pages get reused.
func boltDeletes(i int) (int, bool) { return i - 2, i >= 2 && (i-2)%5 == 3 }

// boltUnsyncedPrefix starts the keys that bolt-nosync commits without sync.
const boltUnsyncedPrefix = "u"

func openBolt(dir string) (*bolt.DB, error) {
	// The options of meshfs's block store (persist).
	return bolt.Open(filepath.Join(dir, "blocks.db"), 0o600, &bolt.Options{
		Timeout: 2 * time.Second, FreelistType: bolt.FreelistMapType, NoFreelistSync: true,
	})
}

// commitBolt commits transaction i: it puts key i and may delete another.
func commitBolt(db *bolt.DB, i int) error {
	return db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(boltBucket)
		if err != nil {
			return err
		}
		if j, ok := boltDeletes(i); ok {
			if err := b.Delete(boltKey(j)); err != nil {
				return err
			}
		}
		return b.Put(boltKey(i), boltValue(i))
	})
}

// boltCommitChild commits transactions for ever, printing the number of
// each once bbolt has committed (and fdatasync'd) it. Meanwhile another
// file is written and never synced, so that the SIGKILL, and the cut, come
// in the middle of unsynced writes.
func boltCommitChild(dir string) error {
	db, err := openBolt(dir)
	if err != nil {
		return err
	}
	scratch, err := os.Create(filepath.Join(dir, "scratch"))
	if err != nil {
		return err
	}
	// Runs until the SIGKILL ends the process.
	go func() {
		chunk := bytes.Repeat([]byte("unsynced"), 8192)
		for i := 0; ; i++ {
			if _, err := scratch.WriteAt(chunk, int64(i%64*len(chunk))); err != nil {
				fmt.Fprintln(os.Stderr, "scratch:", err)
				return
			}
		}
	}()
	for i := 0; ; i++ {
		if err := commitBolt(db, i); err != nil {
			return err
		}
		fmt.Println(i)
	}
}

// boltNoSyncChild commits 60 transactions, prints the SHA-256 of the file
// they left, then commits more with NoSync and scribbles over the meta
// pages through another handle, prints "ready", and waits for its SIGKILL.
func boltNoSyncChild(dir string) error {
	db, err := openBolt(dir)
	if err != nil {
		return err
	}
	for i := range 60 {
		if err := commitBolt(db, i); err != nil {
			return err
		}
	}
	synced, err := os.ReadFile(db.Path())
	if err != nil {
		return err
	}
	fmt.Printf("%x\n", sha256.Sum256(synced))
	db.NoSync = true
	for i := range 10 {
		err := db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(boltBucket).Put(fmt.Appendf(nil, "%s%d", boltUnsyncedPrefix, i), []byte("unsynced"))
		})
		if err != nil {
			return err
		}
	}
	scribbler, err := os.OpenFile(db.Path(), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if _, err := scribbler.WriteAt(bytes.Repeat([]byte{0xde, 0xad}, 4096), 0); err != nil {
		return err
	}
	if fi, err := scribbler.Stat(); err != nil || fi.Size() != int64(len(synced)) {
		return fmt.Errorf("the unsynced commits grew the file (%d bytes to %v, %v), which bbolt syncs; make them smaller", len(synced), fi.Size(), err)
	}
	fmt.Println("ready")
	select {}
}

// boltCheckChild opens the database and checks its consistency and that
// it holds what transactions 0 to committed-1 left. Unless exact,
// transaction committed may have committed too, unreported. It prints a
// line per problem and fails if there is any.
func boltCheckChild(dir string, committed int, exact bool) error {
	db, err := openBolt(dir)
	if err != nil {
		return err
	}
	defer db.Close()
	problems := 0
	problem := func(format string, args ...any) {
		problems++
		fmt.Printf(format+"\n", args...)
	}
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			problem("bbolt check: %v", err)
		}
		b := tx.Bucket(boltBucket)
		if b == nil {
			return errors.New("no bucket")
		}
		deleted := map[int]bool{}
		for i := range committed {
			if j, ok := boltDeletes(i); ok {
				deleted[j] = true
			}
		}
		maybeDeleted, ok := boltDeletes(committed)
		if !ok || exact {
			maybeDeleted = -1
		}
		for i := range committed {
			got := b.Get(boltKey(i))
			switch {
			case deleted[i]:
				if got != nil {
					problem("key %d, deleted by a committed transaction, is back", i)
				}
			case got == nil && i == maybeDeleted:
			case !bytes.Equal(got, boltValue(i)):
				problem("key %d, committed: got %d bytes, want %d", i, len(got), len(boltValue(i)))
			}
		}
		if got := b.Get(boltKey(committed)); got != nil && exact {
			problem("key %d, never committed, is there", committed)
		}
		for i := committed + 1; i < committed+10; i++ {
			if b.Get(boltKey(i)) != nil {
				problem("key %d, never committed, is there", i)
			}
		}
		c := b.Cursor()
		for k, _ := c.Seek([]byte(boltUnsyncedPrefix)); k != nil && bytes.HasPrefix(k, []byte(boltUnsyncedPrefix)); k, _ = c.Next() {
			problem("key %s, committed without sync, survived the cut", k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if problems > 0 {
		return fmt.Errorf("%d problems", problems)
	}
	return nil
}

// TestBoltKeepsCommittedTransactions: a process commits bbolt transactions
// (each ends with fdatasync) until SIGKILLed mid-transaction; after the cut
// the database opens and holds every transaction the process saw commit.
func TestBoltKeepsCommittedTransactions(t *testing.T) {
	l := newLab(t)
	dir := l.path("node")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	committed := len(runChildUntil(t, dir, 200, "bolt-commit"))
	st := l.restart()
	t.Logf("%d transactions committed before the SIGKILL; the cut dropped %d bytes; %+v", committed, st.DroppedBytes, st)
	if st.DroppedBytes == 0 {
		t.Error("the cut dropped nothing, but the child was writing a file it never synced")
	}
	l.wantContent("node/scratch", []byte{})
	runChildToEnd(t, dir, "bolt-check", strconv.Itoa(committed), "false")
}

// TestBoltUnsyncedCommitsVanish: commits made with NoSync and garbage
// written over the meta pages through another handle are all lost in the
// cut: the file is again as the last synced commit left it, and opens.
func TestBoltUnsyncedCommitsVanish(t *testing.T) {
	l := newLab(t)
	lines := runChildUntil(t, l.mnt, 2, "bolt-nosync")
	st := l.restart()
	if st.DroppedBytes < 8192 {
		t.Errorf("the cut dropped %d bytes, want at least the 8192 of garbage", st.DroppedBytes)
	}
	now, _ := l.content("blocks.db")
	if got := fmt.Sprintf("%x", sha256.Sum256(now)); got != lines[0] {
		t.Errorf("the database file after the cut (SHA-256 %s) is not the file as of its last synced commit (%s)", got, lines[0])
	}
	runChildToEnd(t, l.mnt, "bolt-check", "60", "true")
}

func natsPayload(i int) []byte {
	return bytes.Repeat(fmt.Appendf(nil, "message %d;", i), 1+(i*31)%700)
}

// startNATS starts a JetStream server with its file store in dir, synced
// on every write as the meshfs nodes run it.
func startNATS(dir string) (*server.Server, error) {
	s, err := server.NewServer(&server.Options{
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   dir,
		SyncAlways: true,
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		return nil, err
	}
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, errors.New("nats server not ready after 30s")
	}
	return s, nil
}

func natsChild(dir string) error {
	s, err := startNATS(dir)
	if err != nil {
		return err
	}
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx := context.Background()
	_, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Storage: jetstream.FileStorage})
	if err != nil {
		return err
	}
	for i := 0; ; i++ {
		ack, err := js.Publish(ctx, "s.m", natsPayload(i))
		if err != nil {
			return err
		}
		fmt.Printf("%d %d\n", ack.Sequence, i)
	}
}

// TestJetStreamKeepsAckedMessages: a process runs a JetStream server and
// publishes until SIGKILLed; after the cut a server on the same store
// starts and has every message that was acknowledged.
func TestJetStreamKeepsAckedMessages(t *testing.T) {
	l := newLab(t)
	dir := l.path("nats")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	acked := runChildUntil(t, dir, 300, "nats")
	st := l.restart()
	t.Logf("%d messages acknowledged before the SIGKILL; the cut dropped %d bytes; %+v", len(acked), st.DroppedBytes, st)
	s, err := startNATS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		s.Shutdown()
		s.WaitForShutdown()
	}()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := js.Stream(ctx, "S")
	if err != nil {
		t.Fatalf("stream after the cut: %v", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stream after the cut: %d messages, last sequence %d", info.State.Msgs, info.State.LastSeq)
	for _, line := range acked {
		var seq uint64
		var i int
		if _, err := fmt.Sscan(line, &seq, &i); err != nil {
			t.Fatalf("child line %q: %v", line, err)
		}
		msg, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Errorf("acknowledged message %d (seq %d): %v", i, seq, err)
			continue
		}
		if !bytes.Equal(msg.Data, natsPayload(i)) {
			t.Errorf("acknowledged message %d (seq %d): %d bytes, want %d", i, seq, len(msg.Data), len(natsPayload(i)))
		}
	}
}
