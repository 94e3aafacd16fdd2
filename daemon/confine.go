package daemon

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A mountpoint is opened by walking from a descriptor of its mount root,
// one component at a time, with openat2 refusing symbolic links, magic
// links, mount crossings and escapes. Whoever can write in a mount root can
// swap a component for a symbolic link at any moment (rename with
// RENAME_EXCHANGE); a path resolved first and used afterwards would follow
// the swap. The directory descriptor the walk ends on is what the serving
// process mounts on (at /proc/self/fd/N), so what is checked is what is
// mounted.

// confineResolve are the openat2 rules of every step of the walk.
const confineResolve = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// confinedDir is a mountpoint opened beneath its mount root.
type confinedDir struct {
	path string   // clean absolute path, as the API reports it
	dir  *os.File // the directory itself, opened for reading
	// created lists the directories this request made, outermost first,
	// each with a descriptor of its parent: a failed request removes them.
	created []createdDir
	fds     []*os.File // every descriptor of the walk, closed by close
}

type createdDir struct {
	parent *os.File
	name   string
	dev    uint64
	ino    uint64
}

// openMountpoint opens real (as checkMountpointPath returned it) beneath
// its mount root, creating missing directories (0755), and checks that it is
// an empty directory that is neither a mount point nor inside another
// mount. On error nothing it created is left behind.
func openMountpoint(real string, roots []string) (*confinedDir, error) {
	root, rel, ok := splitRoot(real, roots)
	if !ok {
		return nil, forbidden("mountpoint %s is outside the mount roots (%s)", real, strings.Join(roots, ", "))
	}
	c := &confinedDir{path: real}
	err := c.walk(root, rel, c.mountpointStepErr)
	if err == nil {
		err = c.checkLeaf()
	}
	if err != nil {
		c.cleanup()
		return nil, err
	}
	return c, nil
}

// splitRoot finds the root real lies strictly below and returns the root
// as resolved (roots are configuration: their own symbolic links, such as
// /var/run, are trusted) and the path below it.
func splitRoot(real string, roots []string) (root, rel string, ok bool) {
	for _, r := range roots {
		rr, err := resolveExisting(r)
		if err != nil {
			continue
		}
		prefix := strings.TrimSuffix(rr, "/") + "/"
		if rest, found := strings.CutPrefix(real, prefix); found && rest != "" {
			return rr, rest, true
		}
	}
	return "", "", false
}

// walk opens rel below root one component at a time (see step), keeping
// every descriptor, and leaves c.dir on the last one. stepErr words the
// failure of the step that opens at (leaf: the last component) for the
// caller: mountpoints and bundle directories explain it differently.
func (c *confinedDir) walk(root, rel string, stepErr func(err error, at string, leaf bool) error) error {
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return badRequest("mount root %s: %v", root, err)
	}
	cur := c.keep(rootFd, root)
	names := strings.Split(rel, "/")
	for i, name := range names {
		leaf := i == len(names)-1
		at := filepath.Join(root, filepath.Join(names[:i+1]...))
		fd, err := c.step(cur, name, leaf)
		if err != nil {
			return stepErr(err, at, leaf)
		}
		cur = c.keep(fd, at)
	}
	c.dir = cur
	return nil
}

// mountpointStepErr words a failed step of a mountpoint's walk.
func (c *confinedDir) mountpointStepErr(err error, at string, leaf bool) error {
	switch {
	case errors.Is(err, unix.ELOOP):
		return badRequest("create mountpoint %s: %s is a symbolic link (not followed beneath a mount root)", c.path, at)
	case errors.Is(err, unix.ENOTDIR) && leaf:
		return badRequest("mountpoint %s is not a directory", c.path)
	case errors.Is(err, unix.ENOTDIR):
		return badRequest("create mountpoint %s: %s is not a directory", c.path, at)
	case errors.Is(err, unix.EXDEV) && leaf:
		return conflict("mountpoint %s is busy: already a mount point", c.path)
	case errors.Is(err, unix.EXDEV):
		return nestedErr(c.path, at)
	case errors.Is(err, unix.ENOSYS):
		return fmt.Errorf("open mountpoint %s: openat2 is not available (Linux 5.6 or later is needed): %w", c.path, err)
	default:
		return badRequest("create mountpoint %s: %s: %v", c.path, at, err)
	}
}

// step opens name below dir (a directory descriptor of the walk), creating
// it when missing.
func (c *confinedDir) step(dir *os.File, name string, leaf bool) (int, error) {
	flags := uint64(unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC)
	if leaf {
		flags |= unix.O_RDONLY // read to tell whether it is empty
	} else {
		flags |= unix.O_PATH
	}
	how := &unix.OpenHow{Flags: flags, Resolve: confineResolve}
	for attempt := 0; ; attempt++ {
		fd, err := unix.Openat2(int(dir.Fd()), name, how)
		if err == nil || attempt >= 8 {
			return fd, err
		}
		switch {
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.ENOENT):
			return -1, err
		}
		switch err := unix.Mkdirat(int(dir.Fd()), name, 0o755); {
		case err == nil:
			var st unix.Stat_t
			if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
				c.created = append(c.created, createdDir{parent: dir, name: name, dev: st.Dev, ino: st.Ino})
			}
		case errors.Is(err, unix.EEXIST):
			// Made meanwhile by someone else: open what is there.
		default:
			return -1, err
		}
	}
}

func (c *confinedDir) keep(fd int, name string) *os.File {
	f := os.NewFile(uintptr(fd), name)
	c.fds = append(c.fds, f)
	return f
}

// checkLeaf refuses a mountpoint inside a FUSE file system (a mount root on
// one, since the walk crosses no mount) and a directory that is not empty.
func (c *confinedDir) checkLeaf() error {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(c.dir.Fd()), &sfs); err != nil {
		return fmt.Errorf("check mountpoint %s: %w", c.path, err)
	}
	if sfs.Type == unix.FUSE_SUPER_MAGIC {
		return conflict("mountpoint %s is inside a FUSE mount: mounts inside clipd (or other FUSE) mounts are refused", c.path)
	}
	// A duplicate descriptor: reading a directory moves its offset.
	fd, err := unix.Openat(int(c.dir.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return badRequest("mountpoint %s: %v", c.path, err)
	}
	d := os.NewFile(uintptr(fd), c.path)
	defer d.Close()
	_, err = d.Readdirnames(1)
	switch {
	case errors.Is(err, io.EOF):
		return nil
	case err != nil:
		return badRequest("mountpoint %s: %v", c.path, err)
	default:
		return conflict("mountpoint %s is busy: directory not empty", c.path)
	}
}

// nestedErr describes a mountpoint whose path crosses the mount at at.
func nestedErr(path, at string) error {
	what := "another mount"
	if mi, ok, err := findMount(at); err == nil && ok {
		switch {
		case strings.HasPrefix(mi.Source, "clipd:"):
			what = "the clipd mount"
		case isFUSE(mi.FSType):
			what = "the FUSE mount"
		default:
			what = "the " + mi.FSType + " mount"
		}
	}
	return conflict("mountpoint %s is inside %s at %s: nested mounts are refused", path, what, at)
}

// cleanup removes the directories this request created, innermost first,
// each only if it is still the one created and still empty (rmdir refuses
// a directory that is not), then closes every descriptor.
func (c *confinedDir) cleanup() {
	for i := len(c.created) - 1; i >= 0; i-- {
		d := c.created[i]
		var st unix.Stat_t
		if err := unix.Fstatat(int(d.parent.Fd()), d.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil ||
			st.Dev != d.dev || st.Ino != d.ino || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		_ = unix.Unlinkat(int(d.parent.Fd()), d.name, unix.AT_REMOVEDIR)
	}
	c.created = nil
	c.close()
}

// close releases the descriptors of the walk (the mounted directory stays
// open in the serving process that mounted on it).
func (c *confinedDir) close() {
	for _, f := range c.fds {
		f.Close()
	}
	c.fds = nil
}
