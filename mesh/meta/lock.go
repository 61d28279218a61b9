package meta

import (
	"context"
	"slices"
)

// lockStripes is the number of inode locks of a store.
const lockStripes = 256

// inoLocks serialises, within one store, the operations that write the same
// inode (a directory's creates, a file's writes). Correctness does not rest
// on them (every commit checks its expectations, and other stores are not
// covered), but without them goroutines of one mount that change one
// directory would mostly collide and redo each other's work: a rejected
// batch costs as much as a stored one.
type inoLocks struct {
	stripes [lockStripes]chan struct{}
}

func newInoLocks() *inoLocks {
	l := &inoLocks{}
	for i := range l.stripes {
		l.stripes[i] = make(chan struct{}, 1)
	}
	return l
}

// lock takes the locks of inos (in a fixed order, so that two callers never
// wait on each other) and returns the function that releases them. It gives
// up when ctx ends.
func (l *inoLocks) lock(ctx context.Context, inos ...Ino) (unlock func(), err error) {
	idx := make([]int, 0, len(inos))
	for _, ino := range inos {
		idx = append(idx, int(ino%lockStripes))
	}
	slices.Sort(idx)
	idx = slices.Compact(idx)
	held := 0
	unlock = func() {
		for _, i := range idx[:held] {
			<-l.stripes[i]
		}
	}
	for _, i := range idx {
		select {
		case l.stripes[i] <- struct{}{}:
			held++
		case <-ctx.Done():
			unlock()
			return nil, ctx.Err()
		}
	}
	return unlock, nil
}
