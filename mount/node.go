package mount

import (
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// blockSize is what stat and statfs report as the preferred I/O size.
const blockSize = 4096

// shared is the state of one mount that every request refers to.
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
	plan      *plan        // the tree
}

// rawFS serves the tree through go-fuse's raw protocol interface rather
// than its fs package. The fs package keeps an Inode (with maps of
// children and parents) and a node ID table entry for every name the
// kernel has looked up: about 600 bytes per entry, 60 MiB after `ls -lR`
// of a 100,000-file image, for a tree that never changes and already sits
// in flat arrays. Here a FUSE node ID is a position in the plan (the
// position of a file's first name, plus one: the root, at 0, gets the
// fixed root ID 1), so a request finds its node in O(1) and nothing is
// kept per looked-up entry: FORGET has nothing to free.
type rawFS struct {
	// Everything not implemented here answers ENOSYS.
	fuse.RawFileSystem
	sh *shared
}

func newRawFS(sh *shared) *rawFS {
	return &rawFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), sh: sh}
}

func (r *rawFS) String() string { return "clipd" }

// at returns the plan position of node ID id; false for an ID this mount
// never handed out (the kernel sends none; go-fuse answers for its own
// epoll work-around node itself).
func (p *plan) at(id uint64) (int32, bool) {
	if id == 0 || id > uint64(len(p.nodes)) {
		return 0, false
	}
	return int32(id - 1), true
}

// attr is what stat reports for canonical node i: the index's attributes
// with the inode number, link count and blocks settled.
func (p *plan) attr(i int32) fuse.Attr {
	a := p.nodes[i].Attr
	a.Ino = p.ino(i)
	if nl, ok := p.nlink[i]; ok {
		a.Nlink = nl
	}
	a.Blksize = blockSize
	if a.Blocks == 0 && a.Size > 0 {
		// 512-byte units, rounded up to whole blocks as a local file system would.
		a.Blocks = (a.Size + blockSize - 1) / blockSize * (blockSize / 512)
	}
	return a
}

func isDir(mode uint32) bool { return mode&syscall.S_IFMT == syscall.S_IFDIR }

// dir returns the plan position of directory node ID id: ESTALE for an ID
// this mount never handed out, ENOTDIR for a node that is not a directory.
func (p *plan) dir(id uint64) (int32, fuse.Status) {
	i, ok := p.at(id)
	if !ok {
		return 0, fuse.Status(syscall.ESTALE)
	}
	if !isDir(p.nodes[i].Attr.Mode) {
		return 0, fuse.ENOTDIR
	}
	return i, fuse.OK
}

// entry fills out for the inode named by nodes[i].
func (p *plan) entry(i int32, out *fuse.EntryOut) {
	c := p.canonical(i)
	out.NodeId = uint64(c) + 1
	out.Generation = 0 // node IDs are never reused within a mount
	out.Attr = p.attr(c)
	out.SetEntryTimeout(cacheTimeout)
	out.SetAttrTimeout(cacheTimeout)
}

// Lookup finds name in a directory. A name not found is cached by the
// kernel as a negative entry (node ID 0 with a timeout).
func (r *rawFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	p := r.sh.plan
	dir, st := p.dir(h.NodeId)
	if st != fuse.OK {
		return st
	}
	var i int32
	var ok bool
	switch name {
	case ".":
		// The kernel revives a node from its ID alone this way (an NFS
		// export's file handle).
		i = dir
	case "..":
		if i, ok = p.parent(dir); !ok {
			return fuse.ENOENT
		}
	default:
		if i, ok = p.lookup(dir, name); !ok {
			*out = fuse.EntryOut{}
			out.SetEntryTimeout(cacheTimeout)
			return fuse.OK
		}
	}
	p.entry(i, out)
	return fuse.OK
}

// Forget has nothing to release: no state is kept per looked-up entry.
func (r *rawFS) Forget(nodeID, nlookup uint64) {}

// GetAttr reports the index's attributes.
func (r *rawFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	p := r.sh.plan
	i, ok := p.at(in.NodeId)
	if !ok {
		return fuse.Status(syscall.ESTALE)
	}
	out.Attr = p.attr(i)
	out.SetTimeout(cacheTimeout)
	return fuse.OK
}

func (r *rawFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	p := r.sh.plan
	i, ok := p.at(h.NodeId)
	if !ok {
		return nil, fuse.Status(syscall.ESTALE)
	}
	n := p.nodes[i]
	if n.Attr.Mode&syscall.S_IFMT != syscall.S_IFLNK {
		return nil, fuse.EINVAL
	}
	return []byte(n.Target), fuse.OK
}

// Read copies file bytes from the node's layer into buf, short at EOF.
func (r *rawFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (res fuse.ReadResult, status fuse.Status) {
	sh := r.sh
	sh.reads.Add(1)
	if sh.observe != nil {
		start := time.Now()
		defer func() { sh.observe(time.Since(start), syscall.Errno(status)) }()
	}
	i, ok := sh.plan.at(in.NodeId)
	if !ok {
		return nil, fuse.Status(syscall.ESTALE)
	}
	n := sh.plan.nodes[i]
	if n.Attr.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, fuse.EINVAL
	}
	size := int64(n.Attr.Size)
	off := int64(in.Offset)
	if off < 0 {
		return nil, fuse.EINVAL
	}
	if off >= size {
		return fuse.ReadResultData(nil), fuse.OK
	}
	want := min(int64(len(buf)), int64(in.Size), size-off)
	dest := buf[:want]
	ctx := &fuse.Context{Caller: in.Caller, Cancel: cancel}
	got, err := readFile(ctx, sh.layers[n.Layer], dest, n.Offset+off, n.Offset+size)
	if int64(got) < want && ctx.Err() != nil {
		return nil, fuse.EINTR // the kernel interrupted the read
	}
	// io.ReaderAt may report io.EOF along with a full buffer at the end of
	// its data; only a short read is a failure.
	if int64(got) < want {
		if log, suppressed := sh.errs.failed(err, time.Now()); log {
			sh.log.Error("read file content", "path", n.Path, "layer", n.Layer,
				"offset", off, "length", want, "got", got, "err", err, "failures_not_logged", suppressed)
		}
		return nil, fuse.EIO
	}
	sh.errs.served()
	sh.bytesRead.Add(want)
	return fuse.ReadResultData(dest), fuse.OK
}

// GetXAttr follows getxattr(2): the value's size with ERANGE when dest is
// too small (go-fuse turns a size probe, dest of length 0, into a plain
// size answer), ENODATA when the attribute is absent.
func (r *rawFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if r.sh.noXattrs {
		return 0, fuse.ENOSYS // see fastpath.go
	}
	i, ok := r.sh.plan.at(h.NodeId)
	if !ok {
		return 0, fuse.Status(syscall.ESTALE)
	}
	v, ok := r.sh.plan.nodes[i].Xattrs[attr]
	if !ok {
		return 0, fuse.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), fuse.ERANGE
	}
	return uint32(copy(dest, v)), fuse.OK
}

// ListXAttr follows listxattr(2), with the same size-probe rules as
// GetXAttr: sorted names, each NUL-terminated.
func (r *rawFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	if r.sh.noXattrs {
		return 0, fuse.ENOSYS // see fastpath.go
	}
	i, ok := r.sh.plan.at(h.NodeId)
	if !ok {
		return 0, fuse.Status(syscall.ESTALE)
	}
	xattrs := r.sh.plan.nodes[i].Xattrs
	names := make([]string, 0, len(xattrs))
	size := 0
	for k := range xattrs {
		names = append(names, k)
		size += len(k) + 1
	}
	if len(dest) < size {
		return uint32(size), fuse.ERANGE
	}
	slices.Sort(names)
	at := 0
	for _, k := range names {
		at += copy(dest[at:], k)
		dest[at] = 0
		at++
	}
	return uint32(at), fuse.OK
}

// StatFs describes the image: its content size, its node count, and no
// free space since nothing can be written.
func (r *rawFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	*out = r.sh.statfs
	return fuse.OK
}
