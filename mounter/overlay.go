package mounter

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// overlaySuperMagic is overlayfs's statfs type (not in x/sys/unix).
const overlaySuperMagic = 0x794c7630

// checkUpperFS refuses an upper_dir that overlayfs would refuse as an upper
// layer at the first writable mount: better said once, at start.
func checkUpperFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("daemon.upper_dir %s: %w", dir, err)
	}
	switch st.Type {
	case unix.FUSE_SUPER_MAGIC:
		return fmt.Errorf("daemon.upper_dir %s is on a FUSE file system, which overlayfs does not accept as an upper layer: choose a directory on a local file system (ext4, xfs, btrfs, tmpfs)", dir)
	case overlaySuperMagic:
		return fmt.Errorf("daemon.upper_dir %s is on an overlay file system, which overlayfs does not accept as an upper layer: choose a directory on a local file system (ext4, xfs, btrfs, tmpfs)", dir)
	}
	return nil
}

// overlayLayers are the directories of one overlay.
type overlayLayers struct {
	lower, upper, work string
	setuid             bool // no MOUNT_ATTR_NOSUID
}

// mountOverlay mounts an overlay onto dir itself with the new mount API
// (fsopen, fsconfig, fsmount, move_mount onto the descriptor): what the
// daemon checked is what is mounted on, whatever the path leads to now.
// The overlay is nodev (runtimes mount their own /dev) and nosuid unless
// asked. index and metacopy stay off: both keep references to lower inodes
// (file handles, metadata-only copies), which a FUSE lower layer does not
// guarantee to be stable.
func mountOverlay(dir *os.File, l overlayLayers) (err error) {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("overlay: fsopen: %w", err)
	}
	defer unix.Close(fsfd)
	defer func() {
		if err != nil {
			if msg := fsMessages(fsfd); msg != "" {
				err = fmt.Errorf("%w (kernel: %s)", err, msg)
			}
		}
	}()
	set := func(k, v string) error {
		if err := unix.FsconfigSetString(fsfd, k, v); err != nil {
			return fmt.Errorf("overlay: %s=%s: %w", k, v, err)
		}
		return nil
	}
	// lowerdir+ (Linux 6.8) takes a path as is: no escaping of ':' or ','.
	if err := set("lowerdir+", l.lower); err != nil {
		if strings.ContainsAny(l.lower, ":,\\") {
			return err
		}
		if err := set("lowerdir", l.lower); err != nil {
			return err
		}
	}
	for _, kv := range [][2]string{{"upperdir", l.upper}, {"workdir", l.work}, {"index", "off"}, {"metacopy", "off"}, {"source", "clipd-overlay"}} {
		if err := set(kv[0], kv[1]); err != nil {
			return err
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("overlay: create: %w", err)
	}
	attrs := unix.MOUNT_ATTR_NODEV
	if !l.setuid {
		attrs |= unix.MOUNT_ATTR_NOSUID
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fmt.Errorf("overlay: fsmount: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", int(dir.Fd()), "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("overlay: move_mount onto %s: %w", dir.Name(), err)
	}
	return nil
}

// fsMessages reads the messages the kernel left in a file system context.
func fsMessages(fsfd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for range 16 {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, strings.TrimSpace(string(buf[:n])))
	}
	return strings.Join(msgs, "; ")
}

// unmountOverlay removes the overlay at mountpoint. force detaches it
// lazily when it is busy; detached reports that it stays alive for the
// processes still in it. Not mounted any more is no error.
func unmountOverlay(mountpoint string, force bool) (detached bool, err error) {
	err = unix.Unmount(mountpoint, unix.UMOUNT_NOFOLLOW)
	switch {
	case err == nil, errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
		return false, nil
	case errors.Is(err, unix.EBUSY) && force:
		if err := unix.Unmount(mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
			return false, fmt.Errorf("detach overlay %s: %w", mountpoint, err)
		}
		return true, nil
	default:
		return false, fmt.Errorf("unmount overlay %s: %w", mountpoint, err)
	}
}
