package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Field names a property CompareTrees checks. Ignore rules name them.
type Field string

// The fields compared for every entry. FieldMissing and FieldExtra are the
// "present on one side only" differences.
const (
	FieldMissing Field = "missing" // in want, not in got
	FieldExtra   Field = "extra"   // in got, not in want
	FieldType    Field = "type"    // file type (regular, dir, symlink, char, block, fifo, socket)
	FieldPerm    Field = "perm"    // the 0777 permission bits
	FieldSpecial Field = "special" // setuid, setgid, sticky
	FieldUID     Field = "uid"
	FieldGID     Field = "gid"
	FieldSize    Field = "size"    // regular files and symlinks (directory sizes are file-system specific)
	FieldMtime   Field = "mtime"   // seconds and nanoseconds
	FieldTarget  Field = "target"  // symlink target
	FieldContent Field = "content" // sha256 of a regular file's bytes
	FieldRdev    Field = "rdev"    // device numbers of character and block devices
	FieldXattrs  Field = "xattrs"  // every extended attribute, raw bytes
	FieldLinks   Field = "links"   // the set of paths sharing this entry's inode
	FieldNlink   Field = "nlink"   // link count of non-directories (directory counts are file-system specific)
	FieldReadErr Field = "readerr" // the entry could not be read on one side
)

// AnyPath is an Ignore.Path that matches every path.
const AnyPath = "*"

const (
	rootPath            = "/" // how the root of a tree is named
	hashWorkers         = 4   // files hashed at once; FUSE reads gain from a little parallelism
	xattrBufferInitSize = 4096
)

// Diff is one difference between two trees.
type Diff struct {
	Path  string // "/"-rooted path inside the trees
	Field Field
	Want  string
	Got   string
}

func (d Diff) String() string {
	return fmt.Sprintf("%s: %s: want %s, got %s", d.Path, d.Field, d.Want, d.Got)
}

// Ignore drops differences of the named fields for paths matching Path, which
// is an exact "/"-rooted path, a path.Match pattern, or AnyPath.
type Ignore struct {
	Path   string
	Fields []Field
	Why    string // the reason, so every ignore is documented where it is made
}

// Entry is what a tree records for one path.
type Entry struct {
	Path   string
	Type   string
	Mode   uint32 // all 12 permission bits
	UID    uint32
	GID    uint32
	Size   int64
	Mtime  syscall.Timespec
	Target string
	SHA256 string
	Rdev   uint64
	Xattrs map[string][]byte
	Nlink  uint64
	Links  []string // paths sharing the inode, sorted; nil for directories
	Err    string   // a read error, compared like a field
	dev    uint64
	ino    uint64
}

// Tree is a snapshot of a directory tree, keyed by "/"-rooted path.
type Tree struct {
	Root    string
	Entries map[string]*Entry
}

// Snapshot records every entry under root without following symlinks,
// hashing regular files' content.
func Snapshot(root string) (*Tree, error) {
	t := &Tree{Root: root, Entries: map[string]*Entry{}}
	var files []*Entry
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		rel, rerr := filepath.Rel(root, p)
		if rerr != nil {
			return fmt.Errorf("relative path of %s: %w", p, rerr)
		}
		name := path.Join(rootPath, filepath.ToSlash(rel))
		if err != nil {
			if p == root {
				return fmt.Errorf("walk %s: %w", root, err)
			}
			// Record the error instead of stopping: an unreadable directory
			// in a mount is a difference to report, not a reason to give up.
			e := t.Entries[name]
			if e == nil {
				e = &Entry{Path: name}
				t.Entries[name] = e
			}
			e.Err = err.Error()
			return fs.SkipDir
		}
		e, err := lstatEntry(p, name)
		if err != nil {
			t.Entries[name] = &Entry{Path: name, Err: err.Error()}
			return nil
		}
		t.Entries[name] = e
		if e.Type == "file" {
			files = append(files, e)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	hashAll(root, files)
	t.linkGroups()
	return t, nil
}

func lstatEntry(p, name string) (*Entry, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return nil, fmt.Errorf("lstat %s: %w", p, err)
	}
	e := &Entry{
		Path:  name,
		Type:  typeName(st.Mode),
		Mode:  st.Mode & 0o7777,
		UID:   st.Uid,
		GID:   st.Gid,
		Size:  st.Size,
		Mtime: syscall.Timespec{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec},
		Nlink: uint64(st.Nlink),
		dev:   uint64(st.Dev),
		ino:   st.Ino,
	}
	switch e.Type {
	case "symlink":
		target, err := os.Readlink(p)
		if err != nil {
			return nil, fmt.Errorf("readlink %s: %w", p, err)
		}
		e.Target = target
	case "char", "block":
		e.Rdev = uint64(st.Rdev)
	}
	x, err := readXattrs(p)
	if err != nil {
		return nil, err
	}
	e.Xattrs = x
	return e, nil
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFCHR:
		return "char"
	case unix.S_IFBLK:
		return "block"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	}
	return fmt.Sprintf("unknown(%o)", mode&unix.S_IFMT)
}

// readXattrs returns every extended attribute of p (not following symlinks).
func readXattrs(p string) (map[string][]byte, error) {
	buf := make([]byte, xattrBufferInitSize)
	var n int
	for {
		var err error
		n, err = unix.Llistxattr(p, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("llistxattr %s: %w", p, err)
		}
		break
	}
	if n == 0 {
		return nil, nil
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		v, err := getXattr(p, name)
		if err != nil {
			return nil, err
		}
		out[name] = v
	}
	return out, nil
}

func getXattr(p, name string) ([]byte, error) {
	buf := make([]byte, xattrBufferInitSize)
	for {
		n, err := unix.Lgetxattr(p, name, buf)
		if errors.Is(err, unix.ERANGE) {
			buf = make([]byte, len(buf)*4)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lgetxattr %s %s: %w", p, name, err)
		}
		return append([]byte(nil), buf[:n]...), nil
	}
}

// hashAll fills SHA256 (or Err) of regular files, a few at a time.
func hashAll(root string, files []*Entry) {
	work := make(chan *Entry)
	var wg sync.WaitGroup
	for range hashWorkers {
		wg.Go(func() {
			for e := range work {
				sum, err := hashFile(filepath.Join(root, filepath.FromSlash(e.Path)))
				if err != nil {
					e.Err = err.Error()
					continue
				}
				e.SHA256 = sum
			}
		})
	}
	for _, e := range files {
		work <- e
	}
	close(work)
	wg.Wait()
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", p, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// linkGroups fills Links: the partition of non-directory paths by inode.
func (t *Tree) linkGroups() {
	type key struct{ dev, ino uint64 }
	groups := map[key][]string{}
	for _, e := range t.Entries {
		if e.Type == "dir" || e.Type == "" {
			continue
		}
		k := key{e.dev, e.ino}
		groups[k] = append(groups[k], e.Path)
	}
	for _, paths := range groups {
		sort.Strings(paths)
		for _, p := range paths {
			t.Entries[p].Links = paths
		}
	}
}

// Stats count what a comparison looked at.
type Stats struct {
	Entries, Files, Dirs, Symlinks, Devices, Other int
	Bytes                                          int64 // content bytes hashed on the want side
	HardLinked                                     int   // paths whose inode has more than one path
	WithXattrs                                     int
	Special                                        int // entries with setuid, setgid or sticky
}

func (s Stats) String() string {
	return fmt.Sprintf("%d entries (%d files, %d dirs, %d symlinks, %d devices, %d other; %d hard-linked, %d with xattrs, %d setuid/setgid/sticky), %d content bytes",
		s.Entries, s.Files, s.Dirs, s.Symlinks, s.Devices, s.Other, s.HardLinked, s.WithXattrs, s.Special, s.Bytes)
}

// CompareTrees snapshots both trees and returns their differences.
func CompareTrees(want, got string, ignores ...Ignore) ([]Diff, error) {
	w, err := Snapshot(want)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", want, err)
	}
	g, err := Snapshot(got)
	if err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", got, err)
	}
	diffs, _ := Compare(w, g, ignores...)
	return diffs, nil
}

// Compare returns the differences between two snapshots (sorted by path) and
// what the want side held.
func Compare(want, got *Tree, ignores ...Ignore) ([]Diff, Stats) {
	var diffs []Diff
	add := func(p string, f Field, w, g any) {
		if ignored(ignores, p, f) {
			return
		}
		diffs = append(diffs, Diff{Path: p, Field: f, Want: fmt.Sprint(w), Got: fmt.Sprint(g)})
	}
	var st Stats
	for _, p := range sortedKeys(want.Entries) {
		w := want.Entries[p]
		st.count(w)
		g, ok := got.Entries[p]
		if !ok {
			add(p, FieldMissing, w.Type, "absent")
			continue
		}
		compareEntry(w, g, add)
	}
	for _, p := range sortedKeys(got.Entries) {
		if _, ok := want.Entries[p]; !ok {
			add(p, FieldExtra, "absent", got.Entries[p].Type)
		}
	}
	sort.SliceStable(diffs, func(i, j int) bool { return diffs[i].Path < diffs[j].Path })
	return diffs, st
}

func (s *Stats) count(e *Entry) {
	s.Entries++
	switch e.Type {
	case "file":
		s.Files++
		s.Bytes += e.Size
	case "dir":
		s.Dirs++
	case "symlink":
		s.Symlinks++
	case "char", "block":
		s.Devices++
	default:
		s.Other++
	}
	if len(e.Links) > 1 {
		s.HardLinked++
	}
	if len(e.Xattrs) > 0 {
		s.WithXattrs++
	}
	if e.Mode&0o7000 != 0 {
		s.Special++
	}
}

func compareEntry(w, g *Entry, add func(string, Field, any, any)) {
	p := w.Path
	if w.Err != g.Err {
		add(p, FieldReadErr, quoteOrNone(w.Err), quoteOrNone(g.Err))
	}
	if w.Type != g.Type {
		// Nothing else is comparable between different kinds of entries.
		add(p, FieldType, w.Type, g.Type)
		return
	}
	if w.Mode&0o777 != g.Mode&0o777 {
		add(p, FieldPerm, fmt.Sprintf("%04o", w.Mode&0o777), fmt.Sprintf("%04o", g.Mode&0o777))
	}
	if w.Mode&0o7000 != g.Mode&0o7000 {
		add(p, FieldSpecial, fmt.Sprintf("%04o", w.Mode&0o7000), fmt.Sprintf("%04o", g.Mode&0o7000))
	}
	if w.UID != g.UID {
		add(p, FieldUID, w.UID, g.UID)
	}
	if w.GID != g.GID {
		add(p, FieldGID, w.GID, g.GID)
	}
	if (w.Type == "file" || w.Type == "symlink") && w.Size != g.Size {
		add(p, FieldSize, w.Size, g.Size)
	}
	if w.Mtime != g.Mtime {
		add(p, FieldMtime, fmtTime(w.Mtime), fmtTime(g.Mtime))
	}
	if w.Target != g.Target {
		add(p, FieldTarget, strconvQuote(w.Target), strconvQuote(g.Target))
	}
	if w.SHA256 != g.SHA256 {
		add(p, FieldContent, w.SHA256, g.SHA256)
	}
	if w.Rdev != g.Rdev {
		add(p, FieldRdev, fmtDev(w.Rdev), fmtDev(g.Rdev))
	}
	if !xattrsEqual(w.Xattrs, g.Xattrs) {
		add(p, FieldXattrs, fmtXattrs(w.Xattrs), fmtXattrs(g.Xattrs))
	}
	if w.Type != "dir" {
		if strings.Join(w.Links, "\x00") != strings.Join(g.Links, "\x00") {
			add(p, FieldLinks, w.Links, g.Links)
		}
		if w.Nlink != g.Nlink {
			add(p, FieldNlink, w.Nlink, g.Nlink)
		}
	}
}

func ignored(ignores []Ignore, p string, f Field) bool {
	for _, ig := range ignores {
		if ig.Path != AnyPath && ig.Path != p {
			if ok, _ := path.Match(ig.Path, p); !ok {
				continue
			}
		}
		for _, x := range ig.Fields {
			if x == f {
				return true
			}
		}
	}
	return false
}

func xattrsEqual(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

func fmtXattrs(x map[string][]byte) string {
	if len(x) == 0 {
		return "{}"
	}
	keys := sortedKeys(x)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, x[k])
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func fmtTime(ts syscall.Timespec) string { return fmt.Sprintf("%d.%09d", ts.Sec, ts.Nsec) }

func fmtDev(d uint64) string { return fmt.Sprintf("%d:%d", unix.Major(d), unix.Minor(d)) }

func strconvQuote(s string) string { return fmt.Sprintf("%q", s) }

func quoteOrNone(s string) string {
	if s == "" {
		return "none"
	}
	return fmt.Sprintf("%q", s)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
