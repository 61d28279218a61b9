package chaos

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"github.com/meshfs/meshfs/persist"
	bolt "go.etcd.io/bbolt"
)

// bitrotBlocks and bitrotNodes are bitrot's --rot and --rot-nodes.
var bitrotBlocks, bitrotNodes int

// Bitrot: flip a byte on disk in stored blocks of some nodes, under load.
// Each node is stopped for the moment it takes (bbolt holds its file
// locked), its blocks.db is changed in place at the block's bytes, as a
// failing disk would, and the node is started again. Reads stay correct
// (a read skips a copy whose hash is wrong and reports it), and the scrub
// (a 10 s period here) finds and replaces every rotten copy.
var Bitrot = Scenario{
	Name:     "bitrot",
	Summary:  "flip bytes in stored blocks on disk under load; reads stay correct, scrub repairs every one",
	Defaults: Defaults{Nodes: 4, Size: 16 << 20, Duration: 15 * time.Second},
	Flags: func(fs *flag.FlagSet) {
		fs.IntVar(&bitrotBlocks, "rot", 6, "blocks to rot on each of the --rot-nodes nodes")
		fs.IntVar(&bitrotNodes, "rot-nodes", 2, "nodes whose blocks rot")
	},
	Run: runBitrot,
}

func runBitrot(ctx context.Context, e *Env) error {
	if bitrotNodes > e.Nodes {
		return fmt.Errorf("--rot-nodes %d: the mesh has %d nodes", bitrotNodes, e.Nodes)
	}
	if err := e.Up(ctx, "--scrub-period", "10s"); err != nil {
		return err
	}
	if err := e.WriteDataSet(ctx); err != nil {
		return err
	}
	start := time.Now()
	w := e.StartWorkload(ctx, WorkloadOptions{Readers: 2, Writers: 1})
	known := e.Files.Blocks()
	rotted := map[int][]persist.BlockID{}
	total := 0
	var names []string
	for _, i := range e.Rand.Perm(e.Nodes)[:bitrotNodes] {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		n := e.Node(i)
		// Rot blocks of the data set, which the readers read.
		var ids []persist.BlockID
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := e.Client().List(lctx, n.HTTP, func(id persist.BlockID, size int) error {
			if known[id] && size > 0 {
				ids = append(ids, id)
			}
			return nil
		})
		cancel()
		if err != nil {
			return fmt.Errorf("list the blocks of %s: %w", n.Name, err)
		}
		e.Rand.Shuffle(len(ids), func(a, b int) { ids[a], ids[b] = ids[b], ids[a] })
		ids = ids[:min(bitrotBlocks, len(ids))]
		if err := e.Terminate(i); err != nil {
			return err
		}
		if err := rotOnDisk(filepath.Join(n.Data, "blocks.db"), ids, e.Rand.Uint64()); err != nil {
			return fmt.Errorf("rot %s: %w", n.Name, err)
		}
		e.Logf("flipped a byte in %d blocks on %s's disk", len(ids), n.Name)
		if err := e.Restart(ctx, i); err != nil {
			return err
		}
		rotted[i] = ids
		total += len(ids)
		names = append(names, n.Name)
	}
	e.Note("rotted", total)
	e.Note("rot_nodes", strings.Join(names, ","))
	rotEnd := time.Now()
	// The rotted nodes restarted after the rot, so the mesh's corrupt and
	// repaired counters count these copies only.
	var st Status
	found := waitStatus(ctx, e, e.HealTimeout, func(s Status) bool {
		st = s
		return s.Scrub.Corrupt >= int64(total) && s.Scrub.Repaired >= int64(total)
	})
	e.Note("found", st.Scrub.Corrupt)
	e.Note("found_by_scrub", st.Scrub.ByPass)
	e.Note("found_by_write", st.Scrub.ByWrite)
	e.Note("found_by_drop", st.Scrub.ByDrop)
	e.Note("repaired", st.Scrub.Repaired)
	if found {
		heal := time.Since(rotEnd).Seconds()
		e.mu.Lock()
		e.result.Heal = heal
		e.mu.Unlock()
		e.Logf("%d rotten copies found (%d by scrub passes, %d reported by readers, %d replaced by writes, %d dropped as surplus) and %d repaired %.1fs after the rot",
			st.Scrub.Corrupt, st.Scrub.ByPass, st.Scrub.Corrupt-st.Scrub.ByPass-st.Scrub.ByWrite-st.Scrub.ByDrop, st.Scrub.ByWrite, st.Scrub.ByDrop, st.Scrub.Repaired, heal)
	} else {
		e.Fail("%v after the rot, %d of %d rotten copies found and %d repaired", e.HealTimeout, st.Scrub.Corrupt, total, st.Scrub.Repaired)
	}
	if st.Scrub.Corrupt > int64(total) {
		e.Logf("note: %d corrupt copies counted for %d rotted", st.Scrub.Corrupt, total)
	}
	// Every copy that rotted now reads back whole from its node.
	bad := 0
	for i, ids := range rotted {
		for _, id := range ids {
			gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := e.Client().Get(gctx, e.Node(i).HTTP, id)
			cancel()
			if err != nil {
				bad++
				e.Logf("%s block %s after the scrub: %v", e.Node(i).Name, id, err)
			}
		}
	}
	if bad > 0 {
		e.Fail("%d rotted copies still unreadable after the scrub", bad)
	}
	Sleep(ctx, time.Until(start.Add(e.Duration)))
	e.Finish(ctx, FinishOptions{Workload: w})
	return nil
}

// rotOnDisk flips one bit of each block in ids, in place in the bbolt
// file at path (whose node must be stopped), at an offset drawn from seed.
// bbolt itself is used only to find where each block's bytes are.
func rotOnDisk(path string, ids []persist.BlockID, seed uint64) error {
	type spot struct{ off, n int64 }
	var spots []spot
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return err
	}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("blocks"))
		if b == nil {
			return fmt.Errorf("%s has no blocks bucket", path)
		}
		base := db.Info().Data
		for _, id := range ids {
			v := b.Get(id[:])
			if len(v) == 0 {
				return fmt.Errorf("block %s is not in %s", id, path)
			}
			spots = append(spots, spot{int64(uintptr(unsafe.Pointer(&v[0])) - base), int64(len(v))})
		}
		return nil
	})
	db.Close()
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for i, s := range spots {
		x := seed + uint64(i)*0x9e3779b97f4a7c15
		off := s.off + int64(x%uint64(s.n))
		var c [1]byte
		if _, err := f.ReadAt(c[:], off); err != nil {
			return err
		}
		c[0] ^= 1 << (x >> 61)
		if _, err := f.WriteAt(c[:], off); err != nil {
			return err
		}
	}
	return f.Sync()
}
