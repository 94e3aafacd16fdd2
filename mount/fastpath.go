package mount

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// The tree never changes, so every round trip the kernel can be told to
// skip is skipped:
//   - open and release of files: answering ENOSYS to the first OPEN makes
//     the kernel stop sending OPEN and RELEASE for this mount ("zero-message
//     open", Linux 4.19+) and keep page caches across opens, as
//     FOPEN_KEEP_CACHE does;
//   - flush on close: ENOSYS once, and the kernel stops sending FLUSH;
//   - readdir: directories are opened with FOPEN_CACHE_DIR, so the kernel
//     serves repeated listings from its own cache;
//   - xattrs of an image that has none: ENOSYS once, and the kernel answers
//     EOPNOTSUPP itself instead of asking for every `ls -l` and `cp -a`.

var (
	_ fs.NodeFlusher        = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
)

// Open refuses write access (the kernel already does on a read-only mount;
// this covers a mount whose flags were changed behind our back) and
// otherwise asks for zero-message opens.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, syscall.ENOSYS
}

// Flush has nothing to write back.
func (n *node) Flush(ctx context.Context, f fs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

// OpendirHandle lists the directory once per open and lets the kernel cache
// the listing.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	return fs.NewListDirStream(n.sh.plan.list(n.idx)), fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}
