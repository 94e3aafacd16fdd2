// Package mount owns the go-fuse filesystem over an index tree: inode
// numbers, attributes, xattrs, readdir and read. It reads file contents
// through one io.ReaderAt per layer and knows nothing of how bytes arrive.
//
// The tree of an image is immutable. At mount time the whole index is
// checked and each directory's entries are listed in flat arrays; the
// filesystem is served from those arrays and the index's nodes through
// go-fuse's raw protocol interface, with FUSE node IDs that are positions
// in them (node.go). Nothing is kept per inode the kernel looks up, so
// `ls -lR` of a 100,000-file image costs the serving process no memory
// (go-fuse's node-based fs package would keep an Inode per entry, about
// 500 bytes each). The kernel is told to cache entries, attributes and
// pages for a long time, and the filesystem is mounted read-only with
// default_permissions so the kernel enforces mode bits itself. Inode
// numbers are the index's Attr.Ino; hard links are one FUSE node
// reachable under every name.
package mount
