package index

import (
	"archive/tar"
	"fmt"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// paxXattrPrefix marks extended attributes in PAX records (the SCHILY
// convention that GNU tar, containerd and buildkit use).
const paxXattrPrefix = "SCHILY.xattr."

// inodeOf converts a tar header to the inode it describes. For a hard link
// the result is unused (the link shares its target's inode), but the type is
// still checked.
func inodeOf(hdr *tar.Header, layer int, offset int64) (ino *inode, isDir bool, err error) {
	var typ uint32
	ino = &inode{layer: -1}
	switch hdr.Typeflag {
	case tar.TypeReg, '\x00': // '\x00': pre-POSIX regular file (the deprecated tar.TypeRegA)
		typ = unix.S_IFREG
		ino.attr.Size = uint64(hdr.Size)
		ino.layer, ino.offset = layer, offset
	case tar.TypeLink:
		return ino, false, nil
	case tar.TypeSymlink:
		typ = unix.S_IFLNK
		ino.target = hdr.Linkname
		ino.attr.Size = uint64(len(hdr.Linkname))
	case tar.TypeDir:
		typ = unix.S_IFDIR
		isDir = true
	case tar.TypeChar, tar.TypeBlock:
		typ = unix.S_IFCHR
		if hdr.Typeflag == tar.TypeBlock {
			typ = unix.S_IFBLK
		}
		if hdr.Devmajor < 0 || hdr.Devminor < 0 {
			return nil, false, fmt.Errorf("negative device number %d:%d", hdr.Devmajor, hdr.Devminor)
		}
		ino.attr.Rdev = uint32(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
	case tar.TypeFifo:
		typ = unix.S_IFIFO
	default:
		return nil, false, fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	if hdr.Size < 0 {
		return nil, false, fmt.Errorf("negative size %d", hdr.Size)
	}
	ino.attr.Mode = typ | uint32(hdr.Mode&0o7777)
	ino.attr.Blocks = (ino.attr.Size + 511) / 512
	ino.attr.Owner = fuse.Owner{Uid: uint32(hdr.Uid), Gid: uint32(hdr.Gid)}
	// Times before 1970 do not fit fuse.Attr; they are clamped to the epoch.
	if sec := hdr.ModTime.Unix(); sec >= 0 {
		ino.attr.Mtime = uint64(sec)
		ino.attr.Mtimensec = uint32(hdr.ModTime.Nanosecond())
	}
	ino.attr.Atime, ino.attr.Atimensec = ino.attr.Mtime, ino.attr.Mtimensec
	ino.attr.Ctime, ino.attr.Ctimensec = ino.attr.Mtime, ino.attr.Mtimensec
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, paxXattrPrefix); ok {
			if ino.xattrs == nil {
				ino.xattrs = map[string]string{}
			}
			ino.xattrs[name] = v
		}
	}
	return ino, isDir, nil
}

// isSparse reports GNU sparse files in either encoding: the old GNU type flag,
// or PAX GNU.sparse.* records, for which archive/tar expands the holes and the
// data is no longer a plain range of the layer.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
