// Package mount owns the go-fuse filesystem over an index tree: inode
// numbers, attributes, xattrs, readdir and read. It reads file contents
// through one io.ReaderAt per layer and knows nothing of how bytes arrive.
//
// The tree of an image is immutable. At mount time the whole index is
// checked and each directory's entries are listed in flat arrays; go-fuse
// inodes are made only when the kernel looks a name up (a mount of a
// 100,000-file image costs no inode until used, and the kernel may forget
// them again). The kernel is told to cache entries, attributes and pages
// for a long time, and the filesystem is mounted read-only with
// default_permissions so the kernel enforces mode bits itself. Inode
// numbers are the index's Attr.Ino; hard links are one go-fuse inode
// reachable under every name.
package mount
