package daemon

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// cleanStale handles the mount table left by a daemon that did not shut
// down cleanly. Its filesystems were served in-process, so they died with
// it: a mountpoint that is still a FUSE mount is a dead one (every access
// fails with ENOTCONN) and is lazily detached; the entries are dropped.
func cleanStale(entries []StateEntry, log *slog.Logger) {
	for _, e := range entries {
		mi, mounted, err := findMount(e.Mountpoint)
		switch {
		case err != nil:
			log.Warn("stale mount: cannot read mount table", "id", e.ID, "mountpoint", e.Mountpoint, "err", err)
		case mounted && isFUSE(mi.FSType):
			if err := unix.Unmount(e.Mountpoint, unix.MNT_DETACH); err != nil {
				log.Warn("stale mount: detach failed", "id", e.ID, "mountpoint", e.Mountpoint, "err", err)
			} else {
				log.Info("stale mount detached", "id", e.ID, "mountpoint", e.Mountpoint, "archive", e.Archive, "pid", e.PID)
			}
		case mounted:
			// Not ours to touch: something else is mounted there now.
			log.Warn("stale mount: mountpoint holds a non-FUSE mount, left alone", "id", e.ID, "mountpoint", e.Mountpoint, "fstype", mi.FSType)
		default:
			log.Info("stale mount entry dropped", "id", e.ID, "mountpoint", e.Mountpoint, "archive", e.Archive)
		}
	}
}
