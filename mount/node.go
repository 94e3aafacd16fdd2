package mount

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/clipd/clipd/index"
)

// blockSize is what stat and statfs report as the preferred I/O size.
const blockSize = 4096

// shared is the state every node of one mount refers to.
type shared struct {
	layers []io.ReaderAt
	log    *slog.Logger
	statfs fuse.StatfsOut
	// noXattrs: no node has an extended attribute (see fastpath.go).
	noXattrs bool

	reads     atomic.Int64
	bytesRead atomic.Int64
	errs      readErrors
	observe   ReadObserver // nil: nobody
	plan      *plan        // the tree, whose inodes are made on lookup
}

// node is one inode of the tree, made when the kernel first looks it up
// (tree.go). Everything the kernel may then ask is prepared then, so
// serving a request allocates nothing but its reply.
type node struct {
	fs.Inode

	src    *index.Node
	idx    int32     // src's position in the plan: a directory's entries
	attr   fuse.Attr // src.Attr with the inode number, link count and blocks settled
	target []byte    // symlink target
	// xattrList is the listxattr reply: sorted names, each NUL-terminated.
	xattrList []byte
	sh        *shared
}

var (
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeReadlinker  = (*node)(nil)
	_ fs.NodeOpener      = (*node)(nil)
	_ fs.NodeReader      = (*node)(nil)
	_ fs.NodeGetxattrer  = (*node)(nil)
	_ fs.NodeListxattrer = (*node)(nil)
	_ fs.NodeStatfser    = (*node)(nil)
)

func newNode(src *index.Node, ino uint64, sh *shared) *node {
	n := &node{src: src, attr: src.Attr, sh: sh}
	n.attr.Ino = ino
	n.attr.Blksize = blockSize
	if n.attr.Blocks == 0 && n.attr.Size > 0 {
		// 512-byte units, rounded up to whole blocks as a local file system would.
		n.attr.Blocks = (n.attr.Size + blockSize - 1) / blockSize * (blockSize / 512)
	}
	if src.Attr.Mode&syscall.S_IFMT == syscall.S_IFLNK {
		n.target = []byte(src.Target)
	}
	if len(src.Xattrs) > 0 {
		names := make([]string, 0, len(src.Xattrs))
		for k := range src.Xattrs {
			names = append(names, k)
		}
		slices.Sort(names)
		for _, k := range names {
			n.xattrList = append(n.xattrList, k...)
			n.xattrList = append(n.xattrList, 0)
		}
	}
	return n
}

// Getattr reports the index's attributes. go-fuse puts the file type bits
// and inode number from the StableAttr on top, which are the same.
func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Attr = n.attr
	return 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if n.target == nil {
		return nil, syscall.EINVAL
	}
	return n.target, 0
}

// Read copies file bytes from the node's layer into dest, short at EOF.
func (n *node) Read(ctx context.Context, f fs.FileHandle, dest []byte, off int64) (res fuse.ReadResult, errno syscall.Errno) {
	n.sh.reads.Add(1)
	if n.sh.observe != nil {
		start := time.Now()
		defer func() { n.sh.observe(time.Since(start), errno) }()
	}
	size := int64(n.attr.Size)
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if off >= size {
		return fuse.ReadResultData(nil), 0
	}
	want := min(int64(len(dest)), size-off)
	buf := dest[:want]
	got, err := readFile(ctx, n.sh.layers[n.src.Layer], buf, n.src.Offset+off, n.src.Offset+size)
	if int64(got) < want && ctx.Err() != nil {
		return nil, syscall.EINTR // the kernel interrupted the read
	}
	// io.ReaderAt may report io.EOF along with a full buffer at the end of
	// its data; only a short read is a failure.
	if int64(got) < want {
		if log, suppressed := n.sh.errs.failed(err, time.Now()); log {
			n.sh.log.Error("read file content", "path", n.src.Path, "layer", n.src.Layer,
				"offset", off, "length", want, "got", got, "err", err, "failures_not_logged", suppressed)
		}
		return nil, syscall.EIO
	}
	n.sh.errs.served()
	n.sh.bytesRead.Add(want)
	return fuse.ReadResultData(buf), 0
}

// Getxattr follows getxattr(2): the value's size with ERANGE when dest is
// too small (go-fuse turns a size probe, dest of length 0, into a plain
// size answer), ENODATA when the attribute is absent.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if n.sh.noXattrs {
		return 0, syscall.ENOSYS // see fastpath.go
	}
	v, ok := n.src.Xattrs[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// Listxattr follows listxattr(2), with the same size-probe rules as Getxattr.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if n.sh.noXattrs {
		return 0, syscall.ENOSYS // see fastpath.go
	}
	if len(dest) < len(n.xattrList) {
		return uint32(len(n.xattrList)), syscall.ERANGE
	}
	return uint32(copy(dest, n.xattrList)), 0
}

// Statfs describes the image: its content size, its node count, and no
// free space since nothing can be written.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	*out = n.sh.statfs
	return 0
}
