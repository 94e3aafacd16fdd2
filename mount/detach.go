package mount

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotFUSE marks a mountpoint holding a mount that is not a FUSE one:
// not a clipd filesystem, so it is left alone.
var ErrNotFUSE = errors.New("not a FUSE mount")

// ErrOutsideRoots marks a mountpoint that lies below none of the roots.
var ErrOutsideRoots = errors.New("outside the mount roots")

// beneath are the openat2 rules of the walk to a mountpoint's parent: no
// symbolic link, no magic link, no escape and no mount crossed (mounts
// inside mounts are refused, so a parent is never on one).
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// DetachDead lazily detaches the FUSE mount at mountpoint (absolute,
// clean, strictly below one of roots), a mount whose serving process is
// gone. The path is not trusted: whoever can write in a mount root may
// have swapped a component for a symbolic link since the mount was made,
// so the parent is opened from the root without following links, the mount
// on it is checked to be a FUSE one, and the unmount goes through the
// parent's descriptor (/proc/self/fd/P/name) with UMOUNT_NOFOLLOW. Nothing
// mounted there is not an error (detached is false); another kind of mount
// is ErrNotFUSE.
func DetachDead(roots []string, mountpoint string) (detached bool, err error) {
	root, rel, ok := splitRoot(mountpoint, roots)
	if !ok {
		return false, fmt.Errorf("detach %s: %w (%s)", mountpoint, ErrOutsideRoots, strings.Join(roots, ", "))
	}
	rootFd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("detach %s: open mount root: %w", mountpoint, err)
	}
	defer unix.Close(rootFd)
	dir, name := filepath.Split(rel)
	if dir == "" {
		dir = "."
	}
	pfd, err := unix.Openat2(rootFd, dir, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: beneath})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil // its parent is gone: nothing can be mounted there
		}
		return false, fmt.Errorf("detach %s: open its parent beneath %s: %w", mountpoint, root, err)
	}
	defer unix.Close(pfd)
	// An O_PATH descriptor of what is at name: the mount's root when a
	// mount is there (opening it asks nothing of a dead filesystem), the
	// link itself when name is a symbolic link.
	lfd, err := unix.Openat2(pfd, name, &unix.OpenHow{Flags: unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("detach %s: %w", mountpoint, err)
	}
	defer unix.Close(lfd)
	pid, err := mountID(pfd)
	if err != nil {
		return false, fmt.Errorf("detach %s: %w", mountpoint, err)
	}
	lid, err := mountID(lfd)
	if err != nil {
		return false, fmt.Errorf("detach %s: %w", mountpoint, err)
	}
	if lid == pid {
		return false, nil // not a mount point
	}
	fstype, err := mountType(lid)
	if err != nil {
		return false, fmt.Errorf("detach %s: %w", mountpoint, err)
	}
	if !isFUSE(fstype) {
		return false, fmt.Errorf("detach %s: %w (%s)", mountpoint, ErrNotFUSE, fstype)
	}
	target := "/proc/self/fd/" + strconv.Itoa(pfd) + "/" + name
	switch err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); {
	case errors.Is(err, unix.EINVAL):
		return false, nil // detached meanwhile
	case err != nil:
		return false, fmt.Errorf("detach %s: %w", mountpoint, err)
	}
	return true, nil
}

// splitRoot finds the root mountpoint lies strictly below and returns the
// root as resolved (roots are configuration: their own symbolic links,
// such as /var/run, are trusted) and the path below it.
func splitRoot(mountpoint string, roots []string) (root, rel string, ok bool) {
	for _, r := range roots {
		rr, err := filepath.EvalSymlinks(r)
		if err != nil {
			continue
		}
		for _, cand := range []string{rr, filepath.Clean(r)} {
			prefix := strings.TrimSuffix(cand, "/") + "/"
			if rest, found := strings.CutPrefix(mountpoint, prefix); found && rest != "" && filepath.Clean(rest) == rest && !strings.HasPrefix(rest, "../") && rest != ".." {
				return rr, rest, true
			}
		}
	}
	return "", "", false
}

// mountID is the id of the mount fd is on (/proc/self/fdinfo), read
// without asking the filesystem anything.
func mountID(fd int) (int, error) {
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return 0, fmt.Errorf("mount id: %w", err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "mnt_id:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errors.New("mount id: no mnt_id in fdinfo")
}

// mountType is the file system type of mount id, from the mount table.
func mountType(id int) (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	want := strconv.Itoa(id)
	for sc.Scan() {
		// id parent maj:min root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 || fields[0] != want {
			continue
		}
		for i := 6; i+1 < len(fields); i++ {
			if fields[i] == "-" {
				return fields[i+1], nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mount table: %w", err)
	}
	return "", fmt.Errorf("mount %d is not in the mount table", id)
}

func isFUSE(fstype string) bool {
	return fstype == "fuse" || strings.HasPrefix(fstype, "fuse.") || fstype == "fuseblk"
}
