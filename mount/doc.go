// Package mount owns the go-fuse filesystem over an index tree: inode
// numbers, attributes, xattrs, readdir and read. It reads file contents
// through one io.ReaderAt per layer and knows nothing of how bytes arrive.
//
// The tree of an image is immutable, so the whole inode tree is built once at
// mount time from index.Archive.Nodes (persistent go-fuse inodes), the kernel
// is told to cache entries, attributes and pages for a long time, and the
// filesystem is mounted read-only with default_permissions so the kernel
// enforces mode bits itself. Inode numbers are the index's Attr.Ino; hard
// links are one go-fuse inode reachable under every name.
package mount
