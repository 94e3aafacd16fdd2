package mount

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/clipd/clipd/index"
)

// Options tune a mount.
type Options struct {
	// FsName is shown as the source in /proc/mounts; "clipd" when empty.
	FsName string
	// Debug logs every FUSE request and reply (very verbose).
	Debug bool
	// Logger receives read failures and go-fuse diagnostics; slog.Default()
	// when nil.
	Logger *slog.Logger
	// Setuid honours the setuid and setgid bits of the image's files. Off
	// (MS_NOSUID), an image's setuid-root binary gives nobody root on the
	// host; a runtime asks for it so that setuid binaries work inside its
	// containers, and keeps the mount itself out of other users' reach.
	Setuid bool
	// Dir is the mountpoint directory, opened by whoever checked it: the
	// filesystem is mounted on this very directory (through
	// /proc/self/fd/N), wherever a path now leads. nil opens mountpoint.
	Dir *os.File
	// ObserveRead, when set, is told of every read request (stats.go).
	ObserveRead ReadObserver
}

// Flags returns the mount(2) flags of a mount made with o: read-only,
// never device nodes, and nosuid unless o.Setuid.
func (o Options) Flags() uintptr {
	// MS_RDONLY makes the kernel refuse every change before it reaches us.
	// Device nodes of an image must not open host devices, so MS_NODEV.
	flags := uintptr(syscall.MS_RDONLY | syscall.MS_NODEV)
	if !o.Setuid {
		flags |= syscall.MS_NOSUID
	}
	return flags
}

// fuseOptions are the string options of a mount made with o, consistent
// with Flags: go-fuse turns "nosuid"/"suid" into flags for a direct mount too,
// so the two must not disagree.
func (o Options) fuseOptions() []string {
	suid := "nosuid"
	if o.Setuid {
		suid = "suid"
	}
	// default_permissions makes the kernel check mode bits for non-root
	// callers.
	return []string{"ro", "nodev", suid, "default_permissions"}
}

// Mount is one mounted image.
type Mount struct {
	mountpoint string
	// parent and name are where the filesystem is unmounted from: a
	// descriptor of the mountpoint's parent directory and the mountpoint's
	// name in it, which cannot change while it is a mount point. A path
	// walked from / could be redirected by a symbolic link meanwhile.
	parent *os.File
	name   string
	server *fuse.Server
	sh     *shared

	mu        sync.Mutex
	unmounted bool
}

const (
	// cacheTimeout is how long the kernel may trust entries, attributes and
	// failed lookups: the tree never changes while mounted.
	cacheTimeout = time.Hour
	// maxRequest is the largest read the kernel sends in one request (and
	// the read-ahead window): fewer, larger requests suit lazily fetched
	// content.
	maxRequest = 1 << 20
)

// New mounts a read-only at mountpoint. layers[i] yields the uncompressed
// bytes of a.Layers[i].
func New(mountpoint string, a *index.Archive, layers []io.ReaderAt, opts Options) (*Mount, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if a == nil {
		return nil, fmt.Errorf("mount at %s: nil archive", mountpoint)
	}
	dir := opts.Dir
	if dir == nil {
		d, err := os.OpenFile(mountpoint, os.O_RDONLY|syscall.O_DIRECTORY, 0)
		if err != nil {
			return nil, fmt.Errorf("mount %s: %w", a.Path, err)
		}
		defer d.Close()
		dir = d
	}
	if st, err := dir.Stat(); err != nil {
		return nil, fmt.Errorf("mount %s: %w", a.Path, err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("mount %s at %s: not a directory", a.Path, mountpoint)
	}
	log = log.With("mountpoint", mountpoint)
	sh := &shared{layers: layers, log: log, noXattrs: !hasXattrs(a), observe: opts.ObserveRead}
	p, err := newPlan(a, layers, sh, log)
	if err != nil {
		return nil, fmt.Errorf("mount %s at %s: %w", a.Path, mountpoint, err)
	}
	sh.plan = p
	sh.statfs = fuse.StatfsOut{
		Blocks:  (p.totalBytes + blockSize - 1) / blockSize,
		Files:   uint64(len(a.Nodes)),
		Bsize:   blockSize,
		Frsize:  blockSize,
		NameLen: 255,
	}

	fsName := opts.FsName
	if fsName == "" {
		fsName = "clipd"
	}
	mopts := &fuse.MountOptions{
		DirectMount: true,
		// Only mount(2) in this process can follow /proc/self/fd/N to
		// the directory; fusermount would not.
		DirectMountStrict: true,
		AllowOther:        true,
		// Who may reach the mountpoint at all is decided by the mount
		// root's mode (README, "Security model"); see Options.Flags.
		DirectMountFlags: opts.Flags(),
		// The same choices as strings: go-fuse turns them into flags too.
		Options:      opts.fuseOptions(),
		FsName:       fsName,
		Name:         "clipd",
		MaxWrite:     maxRequest,
		MaxReadAhead: maxRequest,
		// The tree never changes: the kernel may keep symlink targets
		// (fastpath.go).
		EnableSymlinkCaching: true,
		Debug:                opts.Debug,
		Logger:               slog.NewLogLogger(log.Handler(), slog.LevelInfo),
	}
	// Not fs.Mount: its start-up check opens a file below the mountpoint
	// string, which for /proc/self/fd/N is the covered directory, and it
	// leaves the mount behind when that fails.
	server, err := fuse.NewServer(newRawFS(sh), fdPath(dir), mopts)
	if err != nil {
		return nil, fmt.Errorf("mount %s at %s: %w", a.Path, mountpoint, err)
	}
	go server.Serve()
	parent, name, err := mountedAt(dir, mountpoint)
	if err != nil {
		if parent != nil {
			_ = unix.Unmount(fdPath(parent)+"/"+name, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
			parent.Close()
		}
		server.Wait()
		return nil, fmt.Errorf("mount %s at %s: %w", a.Path, mountpoint, err)
	}
	m := &Mount{mountpoint: mountpoint, parent: parent, name: name, server: server, sh: sh}
	m.pollHack()
	log.Debug("mounted", "archive", a.Path, "nodes", len(a.Nodes))
	return m, nil
}

// ErrMoved marks a mount refused because its directory was renamed (or a
// parent swapped) between its check and the mount: the filesystem is
// detached again.
var ErrMoved = errors.New("the mountpoint directory moved")

func fdPath(f *os.File) string { return "/proc/self/fd/" + strconv.Itoa(int(f.Fd())) }

// mountedAt returns the handle to unmount the filesystem just mounted on
// dir, and checks that dir is at mountpoint: a directory renamed between
// its check and the mount is refused (the caller detaches it). Once a
// mount point, dir cannot be renamed.
func mountedAt(dir *os.File, mountpoint string) (*os.File, string, error) {
	var parent *os.File
	for try := 0; ; try++ {
		fd, err := unix.Openat(int(dir.Fd()), "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, "", fmt.Errorf("open parent of the mountpoint: %w", err)
		}
		// A rename that checked dir before it became a mount point may
		// still be under way: it holds the parent's lock, which this
		// no-op rename (the name to itself, never replacing) waits for.
		// Renames starting later fail with EBUSY.
		_ = unix.Renameat2(fd, ".clipd-barrier", fd, ".clipd-barrier", unix.RENAME_NOREPLACE)
		again, err := unix.Openat(int(dir.Fd()), "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(fd)
			return nil, "", fmt.Errorf("open parent of the mountpoint: %w", err)
		}
		var a, b unix.Stat_t
		same := unix.Fstat(fd, &a) == nil && unix.Fstat(again, &b) == nil && a.Dev == b.Dev && a.Ino == b.Ino
		unix.Close(again)
		if same || try >= 4 {
			parent = os.NewFile(uintptr(fd), "parent of "+mountpoint)
			break
		}
		unix.Close(fd)
	}
	at, err := os.Readlink(fdPath(dir))
	if err != nil {
		parent.Close()
		return nil, "", fmt.Errorf("locate the mountpoint: %w", err)
	}
	name := filepath.Base(at)
	if at != filepath.Clean(mountpoint) {
		return parent, name, fmt.Errorf("%w: it is now at %q", ErrMoved, at)
	}
	return parent, name, nil
}

// pollHack is go-fuse's WaitMount check done through the safe handle: a
// poll on a file of the mount, so that the kernel learns early that this
// filesystem does not implement POLL.
func (m *Mount) pollHack() {
	fd, err := unix.Openat(int(m.parent.Fd()), m.name+"/.go-fuse-epoll-hack", unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return
	}
	_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLPRI | unix.POLLOUT}}, 0)
	unix.Close(fd)
}

// DetachOver lazily detaches whatever is mounted on dir, a mountpoint
// directory opened before mounting (cleanup after a serving process that
// was given dir and did not report back). Nothing mounted is no error.
func DetachOver(dir *os.File) error {
	fd, err := unix.Openat(int(dir.Fd()), "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("detach %s: open its parent: %w", dir.Name(), err)
	}
	defer unix.Close(fd)
	at, err := os.Readlink(fdPath(dir))
	if err != nil {
		return fmt.Errorf("detach %s: %w", dir.Name(), err)
	}
	target := "/proc/self/fd/" + strconv.Itoa(fd) + "/" + filepath.Base(at)
	if err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detach %s: %w", at, err)
	}
	return nil
}

// Mountpoint returns the directory the image is mounted on.
func (m *Mount) Mountpoint() string { return m.mountpoint }

// Unmount detaches the filesystem; force uses a lazy detach (MNT_DETACH) so a
// busy mount goes away once its last user leaves. A forced unmount returns
// only when the kernel has released the filesystem, which waits for files
// still open in it to be closed. Unmounting twice is not an error.
func (m *Mount) Unmount(force bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.unmounted {
		return nil
	}
	// The mountpoint's name in its parent's descriptor, not its path:
	// UMOUNT_NOFOLLOW refuses a symbolic link put in its place once the
	// mount is gone.
	target := fdPath(m.parent) + "/" + m.name
	if !force {
		var err error
		delay := time.Duration(0)
		for try := 0; try < 5; try++ {
			// The kernel may not have seen the last files closed yet.
			if err = unix.Unmount(target, unix.UMOUNT_NOFOLLOW); !errors.Is(err, unix.EBUSY) {
				break
			}
			delay = 2*delay + 5*time.Millisecond
			time.Sleep(delay)
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", m.mountpoint, err)
		}
	} else if err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
		// EINVAL: no longer a mount point, e.g. detached by someone else;
		// the server still ends once the kernel lets go.
		return fmt.Errorf("detach %s: %w", m.mountpoint, err)
	}
	m.unmounted = true
	m.server.Wait()
	m.parent.Close()
	return nil
}

// Wait blocks until the filesystem is unmounted.
func (m *Mount) Wait() { m.server.Wait() }

// Stats returns the counters of this mount.
func (m *Mount) Stats() Stats {
	st := Stats{Reads: m.sh.reads.Load(), BytesRead: m.sh.bytesRead.Load()}
	m.sh.errs.fill(&st)
	return st
}

func hasXattrs(a *index.Archive) bool {
	for _, n := range a.Nodes {
		if len(n.Xattrs) > 0 {
			return true
		}
	}
	return false
}
