package mount

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"

	"github.com/clipd/clipd/index"
)

// plan is the validated shape of the tree, computed before mounting so that
// building the go-fuse inodes inside OnAdd (which cannot return an error)
// cannot fail.
type plan struct {
	nodes []*node  // one per index node; hard links share the *node of their first name
	names []string // base name of each index node
	// parent[i] is the index of the directory holding Nodes[i]; -1 for the root.
	parent []int
	// primary[i] is true when Nodes[i] is the first name of its inode, the
	// one that creates the go-fuse inode.
	primary []bool
	// externalNodeID says whether FUSE node IDs may equal inode numbers: the
	// root always has node ID 1, so no other inode may use number 1.
	externalNodeID bool
	totalBytes     uint64
}

// knownType reports whether mode has a file type an image tree may contain.
func knownType(mode uint32) bool {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFDIR, syscall.S_IFREG, syscall.S_IFLNK,
		syscall.S_IFCHR, syscall.S_IFBLK, syscall.S_IFIFO, syscall.S_IFSOCK:
		return true
	}
	return false
}

// newPlan checks a's tree and resolves parents, inode numbers and hard
// links. A tree that would make go-fuse panic or lie to the kernel is an
// error here rather than a crash later.
func newPlan(a *index.Archive, layers []io.ReaderAt, sh *shared, log *slog.Logger) (*plan, error) {
	nodes := a.Nodes
	if len(nodes) == 0 {
		return nil, fmt.Errorf("empty tree")
	}
	if nodes[0].Path != "/" {
		return nil, fmt.Errorf("first node is %q, want the root \"/\"", nodes[0].Path)
	}
	p := &plan{
		nodes:   make([]*node, len(nodes)),
		names:   make([]string, len(nodes)),
		parent:  make([]int, len(nodes)),
		primary: make([]bool, len(nodes)),
	}
	byPath := make(map[string]int, len(nodes))
	for i, n := range nodes {
		if n == nil {
			return nil, fmt.Errorf("node %d is nil", i)
		}
		if n.Path != path.Clean(n.Path) || !strings.HasPrefix(n.Path, "/") {
			return nil, fmt.Errorf("node %q: path is not absolute and clean", n.Path)
		}
		if _, dup := byPath[n.Path]; dup {
			return nil, fmt.Errorf("node %q: listed twice", n.Path)
		}
		byPath[n.Path] = i
		if !knownType(n.Attr.Mode) {
			return nil, fmt.Errorf("node %q: unknown file type in mode %#o", n.Path, n.Attr.Mode)
		}
	}
	if nodes[0].Attr.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("root is not a directory (mode %#o)", nodes[0].Attr.Mode)
	}

	// Inode numbers: the index's, except that 0 (unset) gets a fresh number
	// above every used one, so numbers stay stable for a given file.
	var maxIno uint64
	for _, n := range nodes {
		maxIno = max(maxIno, n.Attr.Ino)
	}
	inos := make([]uint64, len(nodes))
	for i, n := range nodes {
		inos[i] = n.Attr.Ino
		if inos[i] == 0 {
			maxIno++
			inos[i] = maxIno
			log.Warn("index node has no inode number, assigned one", "path", n.Path, "ino", inos[i])
		}
		if inos[i] == ^uint64(0) {
			return nil, fmt.Errorf("node %q: inode number %d is reserved by go-fuse", n.Path, inos[i])
		}
	}

	p.parent[0] = -1
	firstByIno := make(map[uint64]int, len(nodes))
	names := make(map[uint64]uint32, len(nodes)) // names per inode, for a missing Nlink
	subdirs := make([]uint32, len(nodes))
	p.externalNodeID = true
	for i, n := range nodes {
		p.names[i] = path.Base(n.Path)
		if i > 0 {
			par, ok := byPath[path.Dir(n.Path)]
			if !ok {
				return nil, fmt.Errorf("node %q: parent directory is not in the tree", n.Path)
			}
			if nodes[par].Attr.Mode&syscall.S_IFMT != syscall.S_IFDIR {
				return nil, fmt.Errorf("node %q: parent is not a directory", n.Path)
			}
			p.parent[i] = par
			if n.Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR {
				subdirs[par]++
			}
			if inos[i] == 1 {
				p.externalNodeID = false
			}
		}
		names[inos[i]]++
		if first, seen := firstByIno[inos[i]]; seen {
			// A hard link: same inode, so it must be the same kind of file.
			if n.Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR || nodes[first].Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR {
				return nil, fmt.Errorf("node %q: shares inode %d with %q, and directories cannot be hard links", n.Path, inos[i], nodes[first].Path)
			}
			if n.Attr.Mode&syscall.S_IFMT != nodes[first].Attr.Mode&syscall.S_IFMT {
				return nil, fmt.Errorf("node %q: shares inode %d with %q of another type", n.Path, inos[i], nodes[first].Path)
			}
			p.nodes[i] = p.nodes[first]
			continue
		}
		firstByIno[inos[i]] = i
		p.primary[i] = true
		if n.Attr.Mode&syscall.S_IFMT == syscall.S_IFREG && n.Attr.Size > 0 {
			if n.Layer < 0 || n.Layer >= len(layers) || layers[n.Layer] == nil {
				return nil, fmt.Errorf("node %q: content in layer %d, but %d layer readers were given", n.Path, n.Layer, len(layers))
			}
			p.totalBytes += n.Attr.Size
		}
		p.nodes[i] = newNode(n, inos[i], sh)
	}
	for i, n := range nodes {
		if !p.primary[i] || n.Attr.Nlink != 0 {
			continue
		}
		// An index that does not record link counts gets the usual ones.
		if n.Attr.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			p.nodes[i].attr.Nlink = 2 + subdirs[i]
		} else {
			p.nodes[i].attr.Nlink = names[inos[i]]
		}
	}
	return p, nil
}

// build creates the persistent inode tree under root. It runs from the
// root's OnAdd, before the kernel can send any request.
func (p *plan) build(ctx context.Context, root *fs.Inode) {
	inodes := make([]*fs.Inode, len(p.nodes))
	inodes[0] = root
	for i := 1; i < len(p.nodes); i++ {
		if !p.primary[i] {
			continue
		}
		n := p.nodes[i]
		inodes[i] = root.NewPersistentInode(ctx, n, fs.StableAttr{
			Mode: n.attr.Mode & syscall.S_IFMT,
			Ino:  n.attr.Ino,
		})
	}
	for i := 1; i < len(p.nodes); i++ {
		ch := inodes[i]
		if ch == nil {
			ch = p.nodes[i].EmbeddedInode()
		}
		inodes[p.parent[i]].AddChild(p.names[i], ch, false)
	}
}
