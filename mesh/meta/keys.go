package meta

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"github.com/meshfs/meshfs/persist"
)

// Keys of the bucket. KV keys allow [-/_=.A-Za-z0-9], so names are encoded.
//
//	i.<ino>            inodeRec (JSON)
//	d.<parent>.<name>  direntRec (JSON); name in base64.RawURLEncoding
//	b.<ino>.<chunk>    chunkRec (JSON): slots [chunk*slotsPerChunk, (chunk+1)*slotsPerChunk)
//	alloc              the first inode number not yet handed out (decimal)
const (
	allocKey = "alloc"
	// slotsPerChunk bounds a block-map record to about 90 KB, well below
	// the 1 MB message limit, and makes a write touch only its chunks.
	slotsPerChunk = 1024
)

// nameEnc keeps names case-sensitive and inside the key alphabet; an empty
// name cannot be encoded to an empty key token because names are never empty.
var nameEnc = base64.RawURLEncoding

func inodeKey(ino Ino) string { return "i." + strconv.FormatUint(uint64(ino), 10) }

func direntPrefix(parent Ino) string { return "d." + strconv.FormatUint(uint64(parent), 10) + "." }

func direntKey(parent Ino, name string) string {
	return direntPrefix(parent) + nameEnc.EncodeToString([]byte(name))
}

// direntName decodes the name from a key that starts with prefix.
func direntName(prefix, key string) (string, error) {
	enc, ok := strings.CutPrefix(key, prefix)
	if !ok {
		return "", fmt.Errorf("dirent key %q outside %q", key, prefix)
	}
	b, err := nameEnc.DecodeString(enc)
	if err != nil {
		return "", fmt.Errorf("dirent key %q: %w", key, err)
	}
	return string(b), nil
}

func chunkPrefix(ino Ino) string { return "b." + strconv.FormatUint(uint64(ino), 10) + "." }

func chunkKey(ino Ino, chunk int64) string { return chunkPrefix(ino) + strconv.FormatInt(chunk, 10) }

// inodeRec is the stored form of an inode: its attributes, the parent of a
// directory (to refuse moving a directory into its own subtree) and the
// extended attributes, all in one record so that one expected revision
// guards them all.
type inodeRec struct {
	Ino  Ino    `json:"ino"`
	Mode uint32 `json:"mode"`
	Uid  uint32 `json:"uid"`
	Gid  uint32 `json:"gid"`
	Size uint64 `json:"size"`
	// Stored is the bytes of a regular file held in blocks: the sum of
	// its block map's lengths, so holes do not count.
	Stored uint64 `json:"stored,omitempty"`
	Nlink  uint32 `json:"nlink"`
	Atime  int64  `json:"atime"`
	Mtime  int64  `json:"mtime"`
	Ctime  int64  `json:"ctime"`
	// Target is a symlink's target, as bytes: JSON strings would mangle a
	// target that is not UTF-8.
	Target []byte `json:"target,omitempty"`
	// Parent is a directory's parent (the root is its own parent).
	Parent Ino               `json:"parent,omitempty"`
	Xattrs map[string][]byte `json:"xattrs,omitempty"`
}

func (r *inodeRec) attr() Attr {
	return Attr{
		Ino: r.Ino, Mode: r.Mode, Uid: r.Uid, Gid: r.Gid, Size: r.Size, Stored: r.Stored, Nlink: r.Nlink,
		Atime: r.Atime, Mtime: r.Mtime, Ctime: r.Ctime, Target: string(r.Target),
	}
}

func (r *inodeRec) isDir() bool { return r.Mode&syscall.S_IFMT == syscall.S_IFDIR }
func (r *inodeRec) isReg() bool { return r.Mode&syscall.S_IFMT == syscall.S_IFREG }

// direntRec is the stored form of a directory entry; the name is in the key.
type direntRec struct {
	Ino  Ino    `json:"ino"`
	Mode uint32 `json:"mode"` // type bits only
}

// slotRec is the stored form of a BlockRef. The ID is hex so that the record
// does not depend on how persist.BlockID marshals itself.
type slotRec struct {
	ID  string `json:"id"`
	Len uint32 `json:"len"`
}

// chunkRec maps slot index to block for one chunk of a file's block map.
type chunkRec map[int64]slotRec

func toSlotRec(r BlockRef) slotRec { return slotRec{ID: r.ID.String(), Len: r.Len} }

func (r slotRec) ref() (BlockRef, error) {
	id, err := persist.ParseBlockID(r.ID)
	if err != nil {
		return BlockRef{}, err
	}
	return BlockRef{ID: id, Len: r.Len}, nil
}

func chunkOf(slot int64) int64 { return slot / slotsPerChunk }

// checkName enforces the rules for one path component.
func checkName(name string) error {
	switch {
	case len(name) > MaxNameLen:
		return syscall.ENAMETOOLONG
	case name == "", name == ".", name == "..", strings.ContainsAny(name, "/\x00"):
		return syscall.EINVAL
	}
	return nil
}
