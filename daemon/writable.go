package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/clipd/clipd/api"
	"golang.org/x/sys/unix"
)

// A writable mount is an overlay on the mountpoint: its lower layer is the
// image's read-only FUSE mount, shared by every writable mount of the same
// image (one serving process for all of them), its upper and work
// directories are the mount's own, under daemon.upper_dir.

// OverlayInfo describes the layers of a writable mount.
type OverlayInfo struct {
	// UpperDir holds the mount's upper ("upper") and work ("work")
	// directories.
	UpperDir string
	// Lower is the shared read-only mount the overlay lies on.
	Lower string
}

// UnmountOptions are the options of a DELETE.
type UnmountOptions struct {
	Force     bool // lazy detach of a busy mount
	KeepUpper bool // writable mounts: keep the upper directory
	// InUse is set by the daemon when something it found still holds the
	// mount (forced unmounts only): a writable mount then keeps its upper
	// directory, which a container may still write in.
	InUse bool
}

// WritableMounted is a Mounted that is an overlay.
type WritableMounted interface {
	Mounted
	Overlay() OverlayInfo
	// UnmountWritable removes the overlay and, unless asked to keep it or
	// the overlay stays in use after a lazy detach, its upper directory,
	// then lets go of the shared lower mount. note says what was kept.
	UnmountWritable(ctx context.Context, o UnmountOptions) (note string, err error)
}

// ErrKilled marks an Unmount that ended a serving process which did not
// answer in time: the mount is gone, and the answer says what happened.
var ErrKilled = errors.New("serving process did not answer and was killed")

// setOverlay records in e what a writable Mounted reports.
func (e *entry) setOverlay(m Mounted) {
	if w, ok := m.(WritableMounted); ok {
		o := w.Overlay()
		e.Writable, e.UpperDir, e.Lower = true, o.UpperDir, o.Lower
	}
}

// withOverlay adds e's writable fields to an API answer.
func (e *entry) withOverlay(mi api.MountInfo) api.MountInfo {
	mi.Writable, mi.UpperDir, mi.Lower = e.Writable, e.UpperDir, e.Lower
	return mi
}

// unmountOptions reads force and keep_upper of a DELETE.
func unmountOptions(r *http.Request) (UnmountOptions, error) {
	var o UnmountOptions
	for k, p := range map[string]*bool{"force": &o.Force, "keep_upper": &o.KeepUpper} {
		if v := r.URL.Query().Get(k); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return o, badRequest("%s=%q is not a boolean", k, v)
			}
			*p = b
		}
	}
	return o, nil
}

// unmountEntry removes e's filesystem. Without force it first looks for
// what would make the unmount fail or hang (mounts on or of it, overlays
// on it) and answers 409 naming them; an unmount that fails as busy is a
// 409 naming the processes inside. note is for the answer.
func (s *Server) unmountEntry(ctx context.Context, e *entry, m Mounted, o UnmountOptions) (note string, err error) {
	hs, err := holders(e.Mountpoint)
	switch {
	case err != nil:
		s.log.Warn("busy check", "id", e.ID, "err", err)
	case len(hs) > 0 && !o.Force:
		return "", conflict("unmount %s: mountpoint %s is held by %s (force=true detaches it lazily)", e.ID, e.Mountpoint, strings.Join(hs, ", "))
	case len(hs) > 0:
		s.log.Info("forced unmount of a mount in use", "id", e.ID, "mountpoint", e.Mountpoint, "held_by", strings.Join(hs, ", "))
		o.InUse = true
	}
	if _, failed := m.(*failedMount); failed && e.Writable {
		return s.removeDeadOverlay(e, o)
	}
	if w, ok := m.(WritableMounted); ok {
		note, err = w.UnmountWritable(ctx, o)
	} else {
		err = m.Unmount(ctx, o.Force)
	}
	if errors.Is(err, ErrKilled) {
		return err.Error(), nil
	}
	if err != nil && (!o.Force || errors.Is(err, unix.EBUSY)) {
		who := "busy"
		if us := usersOf(e.Mountpoint); len(us) > 0 {
			who = "in use by " + strings.Join(us, ", ")
		}
		return "", conflict("unmount %s: mountpoint %s is %s (force=true detaches it lazily): %v", e.ID, e.Mountpoint, who, err)
	}
	return note, err
}

// removeDeadOverlay deletes a failed writable mount: its overlay lies on a
// read-only mount whose serving process is gone.
func (s *Server) removeDeadOverlay(e *entry, o UnmountOptions) (string, error) {
	if mi, ok, err := findMount(e.Mountpoint); err == nil && ok && mi.FSType == "overlay" {
		if err := unix.Unmount(e.Mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
			return "", fmt.Errorf("detach overlay %s: %w", e.Mountpoint, err)
		}
	}
	if e.UpperDir == "" {
		return "", nil
	}
	if o.KeepUpper {
		return "upper directory kept at " + filepath.Join(e.UpperDir, "upper"), nil
	}
	if err := os.RemoveAll(e.UpperDir); err != nil {
		return "", fmt.Errorf("remove upper directory %s: %w", e.UpperDir, err)
	}
	return "", nil
}

// SharedSweeper is a Mounter that keeps shared read-only mounts for
// writable ones: once the mount table is taken over, it removes those no
// entry uses (a daemon killed between making one and recording its user).
type SharedSweeper interface {
	SweepShared()
}

func (s *Server) sweepShared() {
	if sw, ok := s.mounter.(SharedSweeper); ok {
		sw.SweepShared()
	}
}

// ownFSType reports whether fstype is what se mounts: an overlay for a
// writable mount, FUSE otherwise.
func ownFSType(se StateEntry, fstype string) bool {
	if se.Writable {
		return fstype == "overlay"
	}
	return isFUSE(fstype)
}
