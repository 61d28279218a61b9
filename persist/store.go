// Package persist keeps a node's blocks on local disk in a bbolt file.
//
// A block is named by the SHA-256 of its content. Put refuses data whose hash
// is not its name, Get re-verifies the hash and reports a mismatch as
// ErrCorrupt instead of returning the bytes, and a Put is durable (fsync'd)
// when it returns, so a node killed with SIGKILL reopens with every
// acknowledged block. The store also records which cluster and block size the
// data dir belongs to, so a dir is never mixed into another cluster.
//
// Every block also carries the time of its last Put, which a garbage
// collector compares with a grace period (see PutTimes and DeleteIfOlder) so
// that it never deletes a block that a write in progress has just uploaded
// but not yet committed to the metadata.
//
// persist imports nothing of meshfs.
package persist

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// Sentinel errors callers branch on. Errors returned by Store wrap them.
var (
	ErrNotFound       = errors.New("block not found")
	ErrCorrupt        = errors.New("block corrupt: content does not match its hash")
	ErrHashMismatch   = errors.New("block content does not match the given id")
	ErrInUse          = errors.New("data dir is in use by another process")
	ErrWrongCluster   = errors.New("data dir belongs to another cluster")
	ErrWrongBlockSize = errors.New("data dir was created with another block size")
	ErrTooLarge       = errors.New("block larger than the cluster block size")
)

// BlockID is the SHA-256 of a block's content.
type BlockID [32]byte

// Sum returns the id of data.
func Sum(data []byte) BlockID { return sha256.Sum256(data) }

// String is the lowercase hex form used in URLs, logs and keys.
func (id BlockID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is the zero value (no block).
func (id BlockID) IsZero() bool { return id == BlockID{} }

// ParseBlockID parses the 64-character hex form.
func ParseBlockID(s string) (BlockID, error) {
	var id BlockID
	if len(s) != 64 {
		return id, fmt.Errorf("parse block id %q: want 64 hex characters", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("parse block id %q: %w", s, err)
	}
	return id, nil
}

// Options say which cluster a data dir belongs to.
type Options struct {
	// ClusterID names the cluster. The first Open of a dir records it; later
	// Opens with another ClusterID fail with ErrWrongCluster.
	ClusterID string
	// BlockSize is the cluster's block size in bytes, recorded like ClusterID
	// (ErrWrongBlockSize on mismatch). Put refuses larger blocks.
	BlockSize int
	// LockTimeout is how long Open waits for another process's lock on the
	// dir before failing with ErrInUse. Zero means 1 s.
	LockTimeout time.Duration
}

// Store is the block store of one data dir. It is safe for concurrent use.
type Store struct {
	dir string
	db  *bolt.DB
	// rf is a second, read-only handle on the bbolt file. Get reads large
	// values through it with pread instead of copying them out of the mmap:
	// on a cold page cache, copying from the mmap takes one synchronous
	// page fault per readahead window, and a goroutine stuck in faults
	// cannot be preempted, so the GC spins waiting for it. A pread is one
	// syscall that reads the whole value with large I/Os.
	rf *os.File
	// blockSize is the limit Put enforces: the size given to Open, or the
	// recorded one when Open was given 0. Zero means no limit.
	blockSize int

	// The counts live in memory because recomputing them would walk every
	// block; they are derived at Open and adjusted after each commit.
	blocks atomic.Int64
	bytes  atomic.Int64
	// replacedMu guards replaced: the blocks whose corrupt copy a Put
	// replaced, not yet taken by TakeCorruptReplaced.
	replacedMu sync.Mutex
	replaced   []BlockID

	// now is the clock put times are taken from; tests replace it to step
	// past putTimeRefresh without sleeping.
	now func() time.Time
}

// Bucket names and the file name, fixed because they are the on-disk format.
var (
	bucketBlocks   = []byte("blocks")
	bucketIdentity = []byte("identity")
	// bucketPutTimes maps a block id to the time of its last Put, in unix
	// nanoseconds, 8 bytes big-endian. It is a bucket of its own, not a
	// prefix of the block value, so that reading or refreshing a time never
	// touches the block's (multi-MiB) pages.
	bucketPutTimes = []byte("put_times")
)

const (
	dbFileName         = "blocks.db"
	defaultLockTimeout = time.Second
	// batchDelay is how long a Put waits for others to share its commit.
	// bbolt's 10 ms default is long next to the commit of a 4 MiB block;
	// uploads of one file arrive back to back and still coalesce within a
	// couple of milliseconds.
	batchDelay = 2 * time.Millisecond
	// preadMin is the value size from which Get reads through rf rather
	// than the mmap; small values are cheaper to copy.
	preadMin = 64 << 10
	// listBatch bounds how many ids List collects in one read transaction:
	// a read tx held open across slow callbacks would stop bbolt from
	// remapping the file as it grows, stalling every writer.
	listBatch = 1024
	// putTimeRefresh is how stale a block's put time may get before a Put of
	// the block already stored rewrites it. Rewriting on every such Put
	// would turn the cheap read-only answer to replicas' re-sends into a
	// commit and fsync; the price is that a put time may lag the real last
	// Put by up to this much, which is why a collector's grace period must
	// be much longer (see DeleteIfOlder).
	putTimeRefresh = time.Minute
	// backfillBatch bounds the put times that Open writes in one transaction
	// for blocks stored before put times existed.
	backfillBatch = 16 << 10
)

// Open opens (creating if needed) the store in dir (the file dir/blocks.db).
func Open(dir string, opts Options) (*Store, error) {
	if opts.BlockSize < 0 {
		return nil, fmt.Errorf("open data dir %s: negative block size %d", dir, opts.BlockSize)
	}
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = defaultLockTimeout
	}
	// 0700: the dir holds users' file contents.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open data dir %s: %w", dir, err)
	}
	db, err := bolt.Open(filepath.Join(dir, dbFileName), 0o600, &bolt.Options{
		Timeout: timeout,
		// The map freelist allocates the long page runs of multi-MiB values
		// in O(1) instead of scanning an array.
		FreelistType: bolt.FreelistMapType,
		// Not writing the freelist saves a write per commit that grows with
		// the file; bbolt rebuilds it by scanning on open, which is cheap next
		// to a commit of a 4 MiB block.
		NoFreelistSync: true,
	})
	if errors.Is(err, bolt.ErrTimeout) {
		// The flock is held, almost surely by another meshfs node on the
		// same dir; say so rather than bbolt's bare "timeout".
		return nil, fmt.Errorf("open data dir %s: %w", dir, ErrInUse)
	}
	if err != nil {
		return nil, fmt.Errorf("open data dir %s: %w", dir, err)
	}
	db.MaxBatchDelay = batchDelay
	rf, err := os.Open(db.Path())
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open data dir %s: %w", dir, err)
	}
	s := &Store{dir: dir, db: db, rf: rf, now: time.Now}
	if err := s.init(opts); err != nil {
		rf.Close()
		db.Close()
		return nil, fmt.Errorf("open data dir %s: %w", dir, err)
	}
	return s, nil
}

// init creates the buckets, checks or records the dir's identity, counts
// the stored blocks and gives every block that has no put time one.
func (s *Store) init(opts Options) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketBlocks, bucketPutTimes} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		ib, err := tx.CreateBucketIfNotExists(bucketIdentity)
		if err != nil {
			return fmt.Errorf("create bucket %s: %w", bucketIdentity, err)
		}
		bs, err := checkIdentity(ib, opts)
		if err != nil {
			return err
		}
		s.blockSize = bs
		return nil
	})
	if err != nil {
		return err
	}
	var untimed [][]byte
	err = s.db.View(func(tx *bolt.Tx) error {
		var n, size int64
		times := tx.Bucket(bucketPutTimes)
		c := tx.Bucket(bucketBlocks).Cursor()
		// Only lengths are read, so the walk touches each block's first page
		// and never its content.
		for k, v := c.First(); k != nil; k, v = c.Next() {
			n++
			size += int64(len(v))
			if _, ok := decodePutTime(times.Get(k)); !ok {
				untimed = append(untimed, bytes.Clone(k))
			}
		}
		s.blocks.Store(n)
		s.bytes.Store(size)
		return nil
	})
	if err != nil {
		return err
	}
	return s.backfillPutTimes(untimed)
}

// backfillPutTimes records now as the put time of blocks that have none:
// blocks stored before put times existed. Nobody knows when they were really
// put, and a collector must not take them for old, so they count as put at
// the moment the store is opened; from then on they age like any other.
func (s *Store) backfillPutTimes(ids [][]byte) error {
	if len(ids) == 0 {
		return nil
	}
	val := encodePutTime(s.now())
	for len(ids) > 0 {
		n := min(len(ids), backfillBatch)
		err := s.db.Update(func(tx *bolt.Tx) error {
			times := tx.Bucket(bucketPutTimes)
			for _, k := range ids[:n] {
				if err := times.Put(k, val); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record put times of %d blocks stored without one: %w", len(ids), err)
		}
		ids = ids[n:]
	}
	return nil
}

// encodePutTime is the stored form of a put time.
func encodePutTime(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), uint64(t.UnixNano()))
}

// decodePutTime reads a stored put time; ok is false when v is missing or
// malformed.
func decodePutTime(v []byte) (t time.Time, ok bool) {
	if len(v) != 8 {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))), true
}

// putTime returns the put time stored for key in times. A block without one
// (which Open backfills, so only a damaged file has it) reads as put just
// now: a missing time must never make a block look old to a collector.
func (s *Store) putTime(times *bolt.Bucket, key []byte) time.Time {
	if t, ok := decodePutTime(times.Get(key)); ok {
		return t
	}
	return s.now()
}

// putTimeStale reports whether the put time stored in times for id is
// missing or more than putTimeRefresh older than now, so a Put must rewrite it.
func putTimeStale(times *bolt.Bucket, id BlockID, now time.Time) bool {
	t, ok := decodePutTime(times.Get(id[:]))
	return !ok || now.Sub(t) > putTimeRefresh
}

// Put stores data under id. It fails with ErrHashMismatch if Sum(data) != id
// and ErrTooLarge past the block size, and returns only once the block is on
// disk (concurrent Puts share one commit and fsync). Put keeps no reference to
// data once it returns, so the caller may reuse it.
//
// Put also records the time as the block's last put time, durably, before it
// returns: a new write may reuse a block that no file references any more
// (blocks are named by content), and the refreshed time is what keeps a
// collector from deleting it before the write commits. Putting a block that
// is already present is cheap: it only rewrites the put time when the stored
// one is more than a minute (putTimeRefresh) old, so the put time may be up
// to a minute older than the last Put.
//
// A stored copy whose bytes differ from data is corrupt (data was just
// verified against id): Put replaces it and records the block for
// TakeCorruptReplaced, so that rot healed by another node's write is not
// healed unseen.
func (s *Store) Put(ctx context.Context, id BlockID, data []byte) error {
	return s.put(ctx, id, data, true)
}

// Replace is Put for a caller that found the stored copy corrupt and
// accounts for it itself (the scrubber): a replacement is not recorded.
func (s *Store) Replace(ctx context.Context, id BlockID, data []byte) error {
	return s.put(ctx, id, data, false)
}

// TakeCorruptReplaced returns the blocks whose corrupt copy a Put replaced
// since the last call, and forgets them.
func (s *Store) TakeCorruptReplaced() []BlockID {
	s.replacedMu.Lock()
	defer s.replacedMu.Unlock()
	ids := s.replaced
	s.replaced = nil
	return ids
}

func (s *Store) put(ctx context.Context, id BlockID, data []byte, record bool) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("put block %s: %w", id, err)
	}
	if s.blockSize > 0 && len(data) > s.blockSize {
		return fmt.Errorf("put block %s: %d bytes, block size %d: %w", id, len(data), s.blockSize, ErrTooLarge)
	}
	if Sum(data) != id {
		return fmt.Errorf("put block %s: %w", id, ErrHashMismatch)
	}

	// Replicas re-send blocks often; answering from a read tx skips the
	// batch delay and the fsync. A stored copy that differs is corrupt (data
	// was just verified), so it falls through and is rewritten.
	var fresh bool
	err := s.db.View(func(tx *bolt.Tx) error {
		if v, ok := lookup(tx.Bucket(bucketBlocks), id); ok && bytes.Equal(v, data) {
			fresh = !putTimeStale(tx.Bucket(bucketPutTimes), id, s.now())
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("put block %s: %w", id, err)
	}
	if fresh {
		return nil
	}

	var addBlocks, addBytes int64
	var replaced bool
	err = s.db.Batch(func(tx *bolt.Tx) error {
		// Batch may run this more than once; results only count from the
		// last run, so start clean.
		addBlocks, addBytes, replaced = 0, 0, false
		b, times := tx.Bucket(bucketBlocks), tx.Bucket(bucketPutTimes)
		// The time is taken inside the tx, as close to the commit as
		// possible, so that it is never earlier than need be.
		now := s.now()
		if old, ok := lookup(b, id); ok {
			if bytes.Equal(old, data) {
				// Only the time needs refreshing, unless a concurrent Put
				// of the same block already did.
				if !putTimeStale(times, id, now) {
					return nil
				}
				return times.Put(id[:], encodePutTime(now))
			}
			addBytes, replaced = int64(len(data)-len(old)), true
		} else {
			addBlocks, addBytes = 1, int64(len(data))
		}
		if err := b.Put(id[:], data); err != nil {
			return err
		}
		return times.Put(id[:], encodePutTime(now))
	})
	if err != nil {
		return fmt.Errorf("put block %s: %w", id, err)
	}
	s.blocks.Add(addBlocks)
	s.bytes.Add(addBytes)
	if replaced && record {
		s.replacedMu.Lock()
		s.replaced = append(s.replaced, id)
		s.replacedMu.Unlock()
	}
	return nil
}

// Touch refreshes the last put time of a stored block as a Put of its
// content would, without the content: a client that uploaded the block for
// a write it has not committed yet keeps it from the collector this way.
// It fails with ErrNotFound if the block is not here.
func (s *Store) Touch(ctx context.Context, id BlockID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("touch block %s: %w", id, err)
	}
	err := s.db.Batch(func(tx *bolt.Tx) error {
		if _, ok := lookup(tx.Bucket(bucketBlocks), id); !ok {
			return ErrNotFound
		}
		times, now := tx.Bucket(bucketPutTimes), s.now()
		if !putTimeStale(times, id, now) {
			return nil
		}
		return times.Put(id[:], encodePutTime(now))
	})
	if err != nil {
		return fmt.Errorf("touch block %s: %w", id, err)
	}
	return nil
}

// Get returns a copy of the block's content, ErrNotFound, or ErrCorrupt when
// the stored bytes no longer hash to id.
func (s *Store) Get(ctx context.Context, id BlockID) ([]byte, error) {
	data, err := s.load(ctx, id, nil)
	if err != nil {
		return nil, fmt.Errorf("get block %s: %w", id, err)
	}
	// Hash outside the tx so a read tx is not held for the hashing time,
	// which would delay remaps of a growing file.
	if Sum(data) != id {
		return nil, fmt.Errorf("get block %s: %w", id, ErrCorrupt)
	}
	return data, nil
}

// Load is Get without the hash check, reading into buf when it is large
// enough (and into a new slice otherwise); it returns the block's bytes
// or ErrNotFound. It is for callers that hash the bytes themselves anyway,
// such as a node serving a block to a client that verifies what it
// receives: hashing on both sides would double the CPU cost of a read.
func (s *Store) Load(ctx context.Context, id BlockID, buf []byte) ([]byte, error) {
	data, err := s.load(ctx, id, buf)
	if err != nil {
		return nil, fmt.Errorf("load block %s: %w", id, err)
	}
	return data, nil
}

func (s *Store) load(ctx context.Context, id BlockID, buf []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var data []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v, ok := lookup(tx.Bucket(bucketBlocks), id)
		if !ok {
			return ErrNotFound
		}
		// v points into the mmap and is only valid inside the tx.
		if cap(buf) >= len(v) {
			data = buf[:len(v)]
		} else {
			data = make([]byte, len(v))
		}
		if off, ok := s.fileOffset(tx, v); ok && len(v) >= preadMin {
			// The tx keeps the value's pages from being reused, and
			// bbolt writes through the file, so the file holds the same
			// bytes as the mmap. Asking for the whole range first lets
			// the kernel issue all of its reads at once.
			_ = unix.Fadvise(int(s.rf.Fd()), off, int64(len(v)), unix.FADV_WILLNEED)
			if _, err := s.rf.ReadAt(data, off); err != nil {
				return fmt.Errorf("read %d bytes at offset %d: %w", len(v), off, err)
			}
			return nil
		}
		copy(data, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return data, nil
}

// fileOffset returns where in the bbolt file the value v (from tx) lies, if
// it lies in the mmap of the tx's pages (it always does for a read tx; the
// check keeps a future bbolt that copies values from reading the wrong bytes).
func (s *Store) fileOffset(tx *bolt.Tx, v []byte) (int64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	base := s.db.Info().Data
	p := uintptr(unsafe.Pointer(&v[0]))
	if p < base {
		return 0, false
	}
	off := int64(p - base)
	if off+int64(len(v)) > tx.Size() {
		return 0, false
	}
	return off, true
}

// Has reports whether the block is stored, and its size.
func (s *Store) Has(ctx context.Context, id BlockID) (bool, int, error) {
	if err := ctx.Err(); err != nil {
		return false, 0, fmt.Errorf("has block %s: %w", id, err)
	}
	var found bool
	var size int
	err := s.db.View(func(tx *bolt.Tx) error {
		v, ok := lookup(tx.Bucket(bucketBlocks), id)
		found, size = ok, len(v)
		return nil
	})
	if err != nil {
		return false, 0, fmt.Errorf("has block %s: %w", id, err)
	}
	return found, size, nil
}

// Delete removes the block; deleting a missing block is not an error.
func (s *Store) Delete(ctx context.Context, id BlockID) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("delete block %s: %w", id, err)
	}
	var removed, size int64
	// Batch so that a garbage collector deleting many blocks at once shares
	// commits the way Puts do.
	err := s.db.Batch(func(tx *bolt.Tx) error {
		removed, size = 0, 0
		b := tx.Bucket(bucketBlocks)
		v, ok := lookup(b, id)
		if !ok {
			return nil
		}
		removed, size = 1, int64(len(v))
		return deleteBlock(tx, id)
	})
	if err != nil {
		return fmt.Errorf("delete block %s: %w", id, err)
	}
	s.blocks.Add(-removed)
	s.bytes.Add(-size)
	return nil
}

// DeleteIfOlder deletes the block only if its last put time is before cutoff,
// and reports whether it did; a missing block is not an error (false).
//
// It is the sweep of a garbage collector, which computes cutoff as now minus
// its grace period. The time is checked and the block deleted in one write
// transaction, so a Put that lands after the collector listed the block as
// old (a new write reusing its content) saves it. The grace period must be
// much longer than the minute by which Put lets a put time lag (use at least
// 10 minutes), and longer than any write takes from uploading its blocks to
// committing the metadata that references them.
func (s *Store) DeleteIfOlder(ctx context.Context, id BlockID, cutoff time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("delete block %s if put before %s: %w", id, cutoff, err)
	}
	var removed, size int64
	// Batch, as Delete does, so that a sweep of many blocks shares commits.
	err := s.db.Batch(func(tx *bolt.Tx) error {
		removed, size = 0, 0
		v, ok := lookup(tx.Bucket(bucketBlocks), id)
		if !ok || !s.putTime(tx.Bucket(bucketPutTimes), id[:]).Before(cutoff) {
			return nil
		}
		removed, size = 1, int64(len(v))
		return deleteBlock(tx, id)
	})
	if err != nil {
		return false, fmt.Errorf("delete block %s if put before %s: %w", id, cutoff, err)
	}
	s.blocks.Add(-removed)
	s.bytes.Add(-size)
	return removed == 1, nil
}

// deleteBlock removes a block and its put time in tx.
func deleteBlock(tx *bolt.Tx, id BlockID) error {
	if err := tx.Bucket(bucketBlocks).Delete(id[:]); err != nil {
		return err
	}
	return tx.Bucket(bucketPutTimes).Delete(id[:])
}

// List calls fn for every stored block in id order, stopping at fn's first error.
func (s *Store) List(ctx context.Context, fn func(id BlockID, size int) error) error {
	return s.walk(ctx, "list blocks", false, func(id BlockID, size int, _ time.Time) error { return fn(id, size) })
}

// PutTimes calls fn for every stored block in id order with its size and the
// time of its last Put (see Put for how far it may lag), stopping at fn's
// first error. A garbage collector lists candidates with it and deletes them
// with DeleteIfOlder, which checks the time again: a block may be put again
// after PutTimes reported it. Blocks stored before put times were recorded
// count as put when the store was first opened with put times.
func (s *Store) PutTimes(ctx context.Context, fn func(id BlockID, size int, lastPut time.Time) error) error {
	return s.walk(ctx, "list put times", true, fn)
}

// walk calls fn for every stored block in id order, with its put time when
// withTimes is set (the zero time otherwise). fn's error comes back as is;
// the store's own errors are wrapped with what.
func (s *Store) walk(ctx context.Context, what string, withTimes bool, fn func(id BlockID, size int, lastPut time.Time) error) error {
	type entry struct {
		id      BlockID
		size    int
		lastPut time.Time
	}
	batch := make([]entry, 0, listBatch)
	var after []byte // last key handed to fn; nil before the first batch
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		batch = batch[:0]
		err := s.db.View(func(tx *bolt.Tx) error {
			times := tx.Bucket(bucketPutTimes)
			c := tx.Bucket(bucketBlocks).Cursor()
			var k, v []byte
			if after == nil {
				k, v = c.First()
			} else {
				// Seek lands on after itself unless it was deleted meanwhile.
				k, v = c.Seek(after)
				if k != nil && bytes.Equal(k, after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(batch) < listBatch; k, v = c.Next() {
				var e entry
				if len(k) != len(e.id) {
					continue // not a block key; Put never writes one
				}
				copy(e.id[:], k)
				e.size = len(v)
				if withTimes {
					e.lastPut = s.putTime(times, k)
				}
				batch = append(batch, e)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		for _, e := range batch {
			if err := fn(e.id, e.size, e.lastPut); err != nil {
				return err
			}
		}
		if len(batch) < listBatch {
			return nil
		}
		last := batch[len(batch)-1].id
		after = last[:]
	}
}

// Stats returns the number of blocks and their total size in bytes.
func (s *Store) Stats() (blocks int64, bytes int64) {
	return s.blocks.Load(), s.bytes.Load()
}

// Close closes the bbolt file and releases the lock.
func (s *Store) Close() error {
	rerr := s.rf.Close()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close data dir %s: %w", s.dir, err)
	}
	if rerr != nil {
		return fmt.Errorf("close data dir %s: %w", s.dir, rerr)
	}
	return nil
}

// lookup finds id in b. It goes through a cursor rather than Bucket.Get
// because Get cannot tell a missing key from an empty value, and the empty
// block is a legitimate block.
func lookup(b *bolt.Bucket, id BlockID) ([]byte, bool) {
	k, v := b.Cursor().Seek(id[:])
	if k == nil || !bytes.Equal(k, id[:]) {
		return nil, false
	}
	return v, true
}
