package index

import (
	"fmt"
	"path"
	"syscall"

	"github.com/beam-cloud/clip/pkg/common"
)

// File type bits of fuse.Attr.Mode (the stat st_mode layout).
const (
	clipModeTypeMask = syscall.S_IFMT
	clipModeDir      = syscall.S_IFDIR
	clipModeRegular  = syscall.S_IFREG
	clipModeSymlink  = syscall.S_IFLNK
	clipModeChar     = syscall.S_IFCHR
	clipModeBlock    = syscall.S_IFBLK
	clipModeFIFO     = syscall.S_IFIFO
	clipModeSocket   = syscall.S_IFSOCK
)

// How clipd maps its tree onto clip's ClipNode, in both directions:
//
// clip knows three node types, "dir", "symlink" and "file". Everything else
// an image can hold (character and block devices, FIFOs, sockets) is written
// as NodeType "file", and its real type travels inside clip's own
// ClipNode.Attr: Mode keeps the full file type and all twelve permission
// bits (setuid, setgid, sticky), Rdev the device number, and hard links
// share one Ino with the right Nlink. Only regular files get a RemoteRef.
// This keeps one source of truth for the attributes and lets clip itself
// still list every path; the extension then only needs what fuse.Attr
// cannot hold (xattrs, layer details). Reading, the mode decides: a "file"
// node is a regular file unless its mode says otherwise.

// clipNodeToNode converts one decoded clip node into n, which it returns.
// Callers hand out the elements of one array: one allocation for a whole
// index rather than one per node.
func clipNodeToNode(cn *common.ClipNode, n *Node) (*Node, error) {
	if cn == nil {
		return nil, fmt.Errorf("index holds a nil node")
	}
	if len(cn.Path) > MaxPathLen || len(cn.Target) > MaxPathLen {
		return nil, fmt.Errorf("node path or symlink target longer than %d bytes", MaxPathLen)
	}
	if !IsCleanAbs(cn.Path) {
		return nil, fmt.Errorf("node path %q is not absolute and clean", cn.Path)
	}
	*n = Node{Path: cn.Path, Attr: cn.Attr, Layer: -1}
	typ := n.Attr.Mode & clipModeTypeMask
	var want uint32
	switch cn.NodeType {
	case common.DirNode:
		want = clipModeDir
	case common.SymLinkNode:
		want = clipModeSymlink
		n.Target = cn.Target
	case common.FileNode:
		switch typ {
		case 0, clipModeRegular:
			want = clipModeRegular
		case clipModeChar, clipModeBlock, clipModeFIFO, clipModeSocket:
			want = typ
		default:
			return nil, fmt.Errorf("node %q: type file with mode %o", cn.Path, n.Attr.Mode)
		}
	default:
		return nil, fmt.Errorf("node %q: unknown node type %q", cn.Path, cn.NodeType)
	}
	// clip writes the type bits, but a file that lacks them still says
	// what it is through NodeType.
	if typ == 0 {
		n.Attr.Mode |= want
	} else if typ != want {
		return nil, fmt.Errorf("node %q: type %s with mode %o", cn.Path, cn.NodeType, n.Attr.Mode)
	}
	return n, nil
}

// clipNodeFromNode is the inverse, for WriteFile; layers resolves a layer
// index to its digest.
func clipNodeFromNode(n *Node, layers []Layer) (*common.ClipNode, error) {
	if n == nil {
		return nil, fmt.Errorf("archive holds a nil node")
	}
	if len(n.Path) == 0 || n.Path[0] != '/' || path.Clean(n.Path) != n.Path {
		return nil, fmt.Errorf("node path %q is not absolute and clean", n.Path)
	}
	cn := &common.ClipNode{Path: n.Path, Attr: n.Attr}
	switch n.Attr.Mode & clipModeTypeMask {
	case clipModeDir:
		cn.NodeType = common.DirNode
	case clipModeSymlink:
		cn.NodeType = common.SymLinkNode
		cn.Target = n.Target
	case clipModeRegular:
		cn.NodeType = common.FileNode
		if n.Layer >= 0 {
			if n.Layer >= len(layers) {
				return nil, fmt.Errorf("node %q: layer %d of %d", n.Path, n.Layer, len(layers))
			}
			if n.Offset < 0 {
				return nil, fmt.Errorf("node %q: negative offset %d", n.Path, n.Offset)
			}
			cn.Remote = &common.RemoteRef{
				LayerDigest: layers[n.Layer].Digest,
				UOffset:     n.Offset,
				ULength:     int64(n.Attr.Size),
			}
		} else if n.Attr.Size > 0 {
			return nil, fmt.Errorf("node %q: %d-byte file has no layer", n.Path, n.Attr.Size)
		}
	case clipModeChar, clipModeBlock, clipModeFIFO, clipModeSocket:
		cn.NodeType = common.FileNode
	default:
		return nil, fmt.Errorf("node %q: mode %o has no known file type", n.Path, n.Attr.Mode)
	}
	return cn, nil
}

func clipIsRegular(n *Node) bool {
	return n.Attr.Mode&clipModeTypeMask == clipModeRegular
}

// IsCleanAbs reports whether p is absolute and clean (path.Clean(p) == p),
// without allocating: it runs for every node of every index opened.
func IsCleanAbs(p string) bool {
	if p == "/" {
		return true
	}
	if len(p) < 2 || p[0] != '/' || p[len(p)-1] == '/' {
		return false
	}
	// Every element between slashes must be non-empty and not . or ..
	start := 1
	for i := 1; i <= len(p); i++ {
		if i < len(p) && p[i] != '/' {
			continue
		}
		switch p[start:i] {
		case "", ".", "..":
			return false
		}
		start = i + 1
	}
	return true
}
