package posixdiff

import (
	"math/rand/v2"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// GenConfig shapes the sequences a Generator makes.
type GenConfig struct {
	// BlockSize is the block size of the file system under test: offsets
	// and sizes cluster around its multiples, where a block-based file
	// system splits and merges data. Default 64 KiB.
	BlockSize int64
	// Slots is how many open handles a sequence juggles. Default 6.
	Slots int
	// Exclude lists kinds never generated.
	Exclude []Kind
}

func (c GenConfig) withDefaults() GenConfig {
	if c.BlockSize <= 0 {
		c.BlockSize = 64 << 10
	}
	if c.Slots <= 0 {
		c.Slots = 6
	}
	return c
}

// The namespace: directories are made only from dirNames, so that a path
// two or three levels deep has a fair chance of having all its parents;
// leaves come from all names, so files, directories and symlinks compete
// for the same names.
var (
	dirNames  = []string{"a", "b", "c"}
	leafNames = []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	fileNames = leafNames[len(dirNames):]
	xattrKeys = []string{"user.a", "user.b", "user.long.name.for.the.third", "user.d", "trusted.t"}
	// badXattrKeys are names Linux refuses: an empty name in a namespace
	// (EINVAL) and a name in no namespace (EOPNOTSUPP).
	badXattrKeys = []string{"user.", "nonamespace"}
	owners       = []int{0, 0, 1000, 1001, 65534, -1}
)

// weights says how often each kind comes up, out of their sum. Data
// operations dominate, as in real use.
var weights = [numKinds]int{
	KindOpen: 10, KindClose: 3, KindPwrite: 12, KindWrite: 6, KindPread: 8,
	KindRead: 3, KindSeek: 2, KindFtruncate: 3, KindTruncate: 3, KindFsync: 2,
	KindFstat: 4, KindLstat: 3, KindReadFile: 3, KindReaddir: 3, KindRename: 7,
	KindLink: 3, KindUnlink: 5, KindMkdir: 5, KindRmdir: 4, KindSymlink: 2,
	KindReadlink: 2, KindChmod: 3, KindChown: 2, KindUtimens: 3, KindSetxattr: 4,
	KindGetxattr: 3, KindListxattr: 2, KindRemovexattr: 2, KindFsetxattr: 1,
	KindFgetxattr: 1, KindRmtree: 1,
}

// Generator makes a reproducible sequence of operations from a seed: the
// same seed and config always give the same sequence. It reads no clock
// and does no I/O; what it remembers (the path each slot was opened with)
// only steers later choices towards open files.
type Generator struct {
	rng      *rand.Rand
	cfg      GenConfig
	kinds    []Kind
	cum      []int // cumulative weights of kinds
	slotPath []string
	// slotFlags are the flags each slot was last opened with.
	slotFlags []int
}

// NewGenerator returns a Generator for seed.
func NewGenerator(seed uint64, cfg GenConfig) *Generator {
	cfg = cfg.withDefaults()
	g := &Generator{
		rng:       rand.New(rand.NewPCG(seed, seed^0x5eed)),
		cfg:       cfg,
		slotPath:  make([]string, cfg.Slots),
		slotFlags: make([]int, cfg.Slots),
	}
	total := 0
	for k := range numKinds {
		if weights[k] == 0 || slices.Contains(cfg.Exclude, k) {
			continue
		}
		total += weights[k]
		g.kinds = append(g.kinds, k)
		g.cum = append(g.cum, total)
	}
	return g
}

// Generate returns the first n operations for seed.
func Generate(seed uint64, n int, cfg GenConfig) []Op {
	g := NewGenerator(seed, cfg)
	ops := make([]Op, n)
	for i := range ops {
		ops[i] = g.Next()
	}
	return ops
}

func (g *Generator) pick() Kind {
	if len(g.kinds) == 0 {
		return KindLstat
	}
	r := g.rng.IntN(g.cum[len(g.cum)-1])
	for i, c := range g.cum {
		if r < c {
			return g.kinds[i]
		}
	}
	return g.kinds[len(g.kinds)-1]
}

// Next returns the next operation.
func (g *Generator) Next() Op {
	r := g.rng
	op := Op{Kind: g.pick()}
	switch op.Kind {
	case KindOpen:
		op.Path, op.Slot, op.Mode = g.fileish(), r.IntN(g.cfg.Slots), g.mode()
		op.Flags = g.openFlags()
		if r.IntN(8) == 0 {
			// A directory, read-only: handles on directories see
			// them renamed and removed (rmdir) while open.
			op.Path, op.Flags = g.dirish(), unix.O_RDONLY
		}
		g.slotPath[op.Slot], g.slotFlags[op.Slot] = op.Path, op.Flags
	case KindClose, KindFsync, KindFstat:
		op.Slot = g.slot()
	case KindPwrite:
		op.Slot, op.Off, op.Len, op.Seed = g.slotFor(unix.O_WRONLY), g.offset(), g.length(), r.Uint64()
	case KindWrite:
		op.Slot, op.Len, op.Seed = g.slotFor(unix.O_WRONLY), g.length(), r.Uint64()
	case KindPread:
		op.Slot, op.Off, op.Len = g.slotFor(unix.O_RDONLY), g.offset(), g.length()+r.IntN(2)*int(g.cfg.BlockSize)
	case KindRead:
		op.Slot, op.Len = g.slotFor(unix.O_RDONLY), g.length()
	case KindSeek:
		op.Slot = g.slot()
		op.Flags = []int{unix.SEEK_SET, unix.SEEK_CUR, unix.SEEK_END}[r.IntN(3)]
		op.Off = g.offset()
		if op.Flags != unix.SEEK_SET && r.IntN(2) == 0 {
			op.Off = -op.Off / 4 // backwards, sometimes before 0: EINVAL
		}
	case KindFtruncate:
		op.Slot, op.Off = g.slotFor(unix.O_WRONLY), g.offset()
	case KindTruncate:
		op.Path, op.Off = g.fileish(), g.offset()
	case KindLstat, KindReadFile, KindReadlink, KindListxattr:
		op.Path = g.anyPath()
	case KindReaddir:
		op.Path = g.dirish()
	case KindRename:
		op.Path, op.Path2 = g.anyPath(), g.anyPath()
		if r.IntN(4) == 0 {
			// A directory into its own subtree: EINVAL.
			op.Path = g.dirish()
			op.Path2 = path.Join(op.Path, leafNames[r.IntN(len(leafNames))])
		}
		if r.IntN(10) == 0 {
			op.Flags = unix.RENAME_NOREPLACE
		}
	case KindLink:
		op.Path, op.Path2 = g.fileish(), g.anyPath()
	case KindUnlink:
		op.Path = g.fileish()
	case KindMkdir:
		op.Path, op.Mode = g.dirish(), g.mode()
	case KindRmdir:
		op.Path = g.dirish()
	case KindSymlink:
		op.Path, op.Path2 = g.anyPath(), g.target()
	case KindChmod:
		op.Path, op.Mode = g.anyPath(), uint32(r.IntN(0o10000))
		if r.IntN(3) != 0 {
			op.Mode &= 0o777 | unix.S_ISGID // the special bits, sometimes
		}
	case KindChown:
		op.Path, op.Uid, op.Gid = g.anyPath(), owners[r.IntN(len(owners))], owners[r.IntN(len(owners))]
	case KindUtimens:
		op.Path, op.Atime, op.Mtime = g.anyPath(), g.timespec(), g.timespec()
	case KindSetxattr, KindFsetxattr:
		op.Name, op.Len, op.Seed = g.xattrName(), g.xattrLen(), r.Uint64()
		op.Flags = []int{0, 0, unix.XATTR_CREATE, unix.XATTR_REPLACE}[r.IntN(4)]
		if op.Kind == KindSetxattr {
			op.Path = g.anyPath()
		} else {
			op.Slot = g.slot()
		}
	case KindGetxattr:
		op.Path, op.Name = g.anyPath(), g.xattrName()
		op.Len = []int{-1, -1, -1, 0, 1, 300}[r.IntN(6)]
	case KindRemovexattr:
		op.Path, op.Name = g.anyPath(), g.xattrName()
	case KindFgetxattr:
		op.Slot, op.Name = g.slot(), g.xattrName()
	case KindRmtree:
		// A top-level name: renames move subtrees deeper than the
		// paths reach, and this is what clears them away again.
		op.Path = leafNames[r.IntN(len(leafNames))]
	}
	return op
}

// slot prefers slots that were opened, so handle operations mostly hit a
// handle (a closed slot gives EBADF on both sides, which is dull).
func (g *Generator) slot() int {
	for range 3 {
		s := g.rng.IntN(g.cfg.Slots)
		if g.slotPath[s] != "" {
			return s
		}
	}
	return g.rng.IntN(g.cfg.Slots)
}

// slotFor prefers slots opened for access (O_RDONLY: reading, O_WRONLY:
// writing), but not always: the wrong access gives EBADF, also worth
// comparing.
func (g *Generator) slotFor(access int) int {
	for range 4 {
		s := g.slot()
		acc := g.slotFlags[s] & unix.O_ACCMODE
		if acc == unix.O_RDWR || acc == access {
			return s
		}
	}
	return g.slot()
}

// anyPath is a path one to three levels deep: parents from dirNames,
// the leaf from leafNames.
func (g *Generator) anyPath() string {
	r := g.rng
	depth := 1
	switch x := r.IntN(100); {
	case x >= 85:
		depth = 3
	case x >= 50:
		depth = 2
	}
	parts := make([]string, depth)
	for i := 0; i < depth-1; i++ {
		parts[i] = dirNames[r.IntN(len(dirNames))]
	}
	parts[depth-1] = leafNames[r.IntN(len(leafNames))]
	return strings.Join(parts, "/")
}

// dirish is a path whose leaf is a directory name too.
func (g *Generator) dirish() string {
	p := g.anyPath()
	return path.Join(path.Dir(p), dirNames[g.rng.IntN(len(dirNames))])
}

// fileish is, four times out of ten, the path some slot was opened with,
// so that several handles share a file and open files get unlinked,
// renamed and truncated; otherwise mostly a path whose leaf is not a
// directory name, one level down more often than anyPath.
func (g *Generator) fileish() string {
	r := g.rng
	if r.IntN(10) < 4 {
		s := r.IntN(g.cfg.Slots)
		if p := g.slotPath[s]; p != "" {
			return p
		}
	}
	if r.IntN(4) == 0 {
		return g.anyPath()
	}
	leaf := fileNames[r.IntN(len(fileNames))]
	switch x := r.IntN(100); {
	case x < 55:
		return leaf
	case x < 90:
		return dirNames[r.IntN(len(dirNames))] + "/" + leaf
	default:
		return dirNames[r.IntN(len(dirNames))] + "/" + dirNames[r.IntN(len(dirNames))] + "/" + leaf
	}
}

func (g *Generator) openFlags() int {
	r := g.rng
	flags := []int{unix.O_RDONLY, unix.O_WRONLY, unix.O_RDWR, unix.O_RDWR, unix.O_RDWR}[r.IntN(5)]
	if r.IntN(3) != 0 {
		flags |= unix.O_CREAT
		if r.IntN(4) == 0 {
			flags |= unix.O_EXCL
		}
	}
	if r.IntN(6) == 0 {
		flags |= unix.O_TRUNC
	}
	if r.IntN(4) == 0 {
		flags |= unix.O_APPEND
	}
	if r.IntN(12) == 0 {
		flags |= unix.O_NOFOLLOW
	}
	return flags
}

func (g *Generator) mode() uint32 {
	modes := []uint32{0o644, 0o644, 0o755, 0o600, 0o777, 0o000, 0o4755, 0o2775, 0o1777}
	return modes[g.rng.IntN(len(modes))]
}

// offset is where a write or read starts, or a truncation ends: mostly
// within the first two blocks, often a few bytes either side of a block
// boundary, sometimes further out (leaving a hole of several blocks).
func (g *Generator) offset() int64 {
	r, bs := g.rng, g.cfg.BlockSize
	switch x := r.IntN(10); {
	case x < 4:
		return r.Int64N(2 * bs)
	case x < 5:
		return r.Int64N(64)
	case x < 8:
		return max(0, int64(1+r.IntN(3))*bs+int64(r.IntN(17)-8))
	default:
		return int64(3+r.IntN(3))*bs + r.Int64N(bs)
	}
}

// length is the size of a write or read: mostly small, sometimes more
// than a block, now and then zero.
func (g *Generator) length() int {
	r, bs := g.rng, int(g.cfg.BlockSize)
	switch x := r.IntN(20); {
	case x == 0:
		return 0
	case x < 12:
		return 1 + r.IntN(100)
	case x < 17:
		return 1 + r.IntN(bs)
	default:
		return bs + r.IntN(2*bs)
	}
}

// target is a symlink target: a relative name, up to one level up (so it
// never leaves the directory the runs are made in), or one of the odd ones.
func (g *Generator) target() string {
	r := g.rng
	switch r.IntN(12) {
	case 0:
		return "" // ENOENT
	case 1:
		return "."
	case 2:
		return "../" + leafNames[r.IntN(len(leafNames))]
	case 3:
		return "no/such/" + strings.Repeat("x", r.IntN(40))
	}
	return g.anyPath()
}

func (g *Generator) timespec() unix.Timespec {
	r := g.rng
	switch x := r.IntN(10); {
	case x < 2:
		return unix.Timespec{Nsec: unix.UTIME_NOW}
	case x < 3:
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	case x < 4:
		// 1901 (but not ext4's limit of exactly -1<<31 s, where it drops
		// the nanoseconds), 1960, and 2264 and 2381: past the end of
		// int64 nanoseconds since 1970 (2262), within ext4's range (2446).
		far := []int64{-1<<31 + 86400, -86400*365*10 - 7, 9300000000, 13000000000}
		return unix.Timespec{Sec: far[r.IntN(len(far))], Nsec: r.Int64N(1e9)}
	}
	// 2001 to 2033
	return unix.Timespec{Sec: 1e9 + r.Int64N(1e9), Nsec: r.Int64N(1e9)}
}

func (g *Generator) xattrName() string {
	if g.rng.IntN(20) == 0 {
		return badXattrKeys[g.rng.IntN(len(badXattrKeys))]
	}
	return xattrKeys[g.rng.IntN(len(xattrKeys))]
}

// xattrLen stays well inside what ext4 keeps in one inode's block (4 KiB
// for all names and values together), so that a local ENOSPC never shows
// up as a difference.
func (g *Generator) xattrLen() int {
	if g.rng.IntN(8) == 0 {
		return 0
	}
	return 1 + g.rng.IntN(200)
}
