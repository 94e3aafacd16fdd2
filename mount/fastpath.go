package mount

import (
	"syscall"

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
//     EOPNOTSUPP itself instead of asking for every `ls -l` and `cp -a`;
//   - readlink: the kernel caches symlink targets (FUSE_CACHE_SYMLINKS,
//     Linux 4.20+), so each symlink is read once.

// Open refuses write access (the kernel already does on a read-only mount;
// this covers a mount whose flags were changed behind our back) and
// otherwise asks for zero-message opens.
func (r *rawFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.Flags&syscall.O_ACCMODE != syscall.O_RDONLY || in.Flags&syscall.O_TRUNC != 0 {
		return fuse.EROFS
	}
	out.OpenFlags = fuse.FOPEN_KEEP_CACHE
	return fuse.ENOSYS
}

// Flush has nothing to write back.
func (r *rawFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status { return fuse.ENOSYS }

// OpenDir lets the kernel cache the listing. No handle is needed: a
// directory's listing is a fixed range of the plan, and a READDIR offset
// is a position in it.
func (r *rawFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if _, st := r.sh.plan.dir(in.NodeId); st != fuse.OK {
		return st
	}
	out.Fh = 0
	out.OpenFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

// ReadDir lists a directory's entries from offset on; an entry's offset
// is its position among them plus one.
func (r *rawFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(in, out, false)
}

// ReadDirPlus is ReadDir with each entry's lookup answer.
func (r *rawFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.readDir(in, out, true)
}

func (r *rawFS) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	p := r.sh.plan
	dir, st := p.dir(in.NodeId)
	if st != fuse.OK {
		return st
	}
	kids := p.children(dir)
	if in.Offset >= uint64(len(kids)) {
		return fuse.OK
	}
	for k := int(in.Offset); k < len(kids); k++ {
		c := kids[k]
		cc := p.canonical(c)
		de := fuse.DirEntry{Name: baseOf(p.nodes[c].Path), Mode: p.nodes[cc].Attr.Mode & syscall.S_IFMT, Ino: p.ino(cc), Off: uint64(k) + 1}
		if !plus {
			if !out.AddDirEntry(de) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(de)
		if eo == nil {
			break
		}
		p.entry(c, eo)
	}
	return fuse.OK
}

// The mount is read-only, so the kernel refuses changes itself. These
// answers cover a mount whose flags were changed behind our back.

func (r *rawFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	return fuse.EROFS
}

func (r *rawFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	return 0, fuse.EROFS
}

func (r *rawFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	return fuse.EROFS
}
