package meta

import (
	"context"
	"fmt"
	"strconv"
	"sync"
)

// allocRange is how many inode numbers one store takes from the shared
// counter at a time, so that most creates do not touch (and contend on) it.
// Numbers a store took but did not use are lost when it closes; they are
// never reused.
const allocRange = 1024

// firstIno is the first number handed out; 1 is the root.
const firstIno = RootIno + 1

// allocator hands out inode numbers from a range taken from the alloc key.
type allocator struct {
	mu   sync.Mutex
	next Ino // next number to hand out
	end  Ino // end of the range taken (exclusive)
}

// newIno returns an inode number no one else has or will get.
func (s *Store) newIno(ctx context.Context) (Ino, error) {
	a := &s.alloc
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.next < a.end {
		a.next++
		return a.next - 1, nil
	}
	var lo Ino
	err := s.run(ctx, func(t *tx) error {
		e, err := t.load(allocKey)
		if err != nil {
			return err
		}
		lo = firstIno
		if e.found {
			n, err := strconv.ParseUint(string(e.val), 10, 64)
			if err != nil {
				return fmt.Errorf("decode %s %q: %w", allocKey, e.val, err)
			}
			lo = max(Ino(n), firstIno)
		}
		e.val = []byte(strconv.FormatUint(uint64(lo+allocRange), 10))
		t.put(e)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("allocate inode numbers: %w", err)
	}
	a.next, a.end = lo+1, lo+allocRange
	return lo, nil
}
