package mounter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/daemon"
	"golang.org/x/sys/unix"
)

// Writable mounts of one image share one read-only FUSE mount and so one
// serving process: N containers of an image cost one serving process and
// N overlays. The shared mounts live in StateDir/lower/KEY (0700), out of
// the users' mount roots; KEY names the archive file (device, inode, mtime,
// size: the same file unchanged) and the setuid choice, which the FUSE
// mount itself carries. Their users are counted here and, for a restarted
// daemon, by the writable entries of the mount table naming them.

// lowerSet holds the shared read-only mounts of a Spawner.
type lowerSet struct {
	upperDir string
	mu       sync.Mutex
	byKey    map[string]*sharedLower
}

// sharedLower is one shared read-only mount.
type sharedLower struct {
	key, id, mountpoint string

	mu    sync.Mutex // held while mounting and unmounting
	m     daemon.Mounted
	users int
}

// lowerReleaseTimeout bounds the unmount of a shared mount whose last user
// went: it is a lazy detach, answered at once by a live serving process.
const lowerReleaseTimeout = 10 * time.Second

func newLowerSet(stateDir, upperDir string) (*lowerSet, error) {
	if upperDir == "" {
		upperDir = filepath.Join(stateDir, "upper")
	}
	if err := os.MkdirAll(upperDir, 0o700); err != nil {
		return nil, fmt.Errorf("daemon.upper_dir %s: %w", upperDir, err)
	}
	if err := checkUpperFS(upperDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(stateDir, "lower"), 0o700); err != nil {
		return nil, fmt.Errorf("create shared mount dir: %w", err)
	}
	return &lowerSet{upperDir: upperDir, byKey: map[string]*sharedLower{}}, nil
}

// lowerKey names the archive file and the setuid choice.
func lowerKey(req daemon.MountRequest) (string, error) {
	var st unix.Stat_t
	var err error
	if req.ArchiveFile != nil {
		err = unix.Fstat(int(req.ArchiveFile.Fd()), &st)
	} else {
		err = unix.Stat(req.Archive, &st)
	}
	if err != nil {
		return "", fmt.Errorf("stat archive %s: %w", req.Archive, err)
	}
	h := sha256.Sum256(fmt.Appendf(nil, "%d:%d:%d.%d:%d:%t", st.Dev, st.Ino, st.Mtim.Sec, st.Mtim.Nsec, st.Size, req.Setuid))
	return hex.EncodeToString(h[:8]), nil
}

func (s *Spawner) lower(key string) *sharedLower {
	ls := s.lowers
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l, ok := ls.byKey[key]
	if !ok {
		l = &sharedLower{key: key, id: "lower-" + key, mountpoint: filepath.Join(s.config().StateDir, "lower", key)}
		ls.byKey[key] = l
	}
	return l
}

// live reports whether l's mount is up; l.mu held.
func (l *sharedLower) live() bool {
	if l.m == nil {
		return false
	}
	select {
	case <-l.m.Done():
		return false
	default:
		return true
	}
}

// acquire returns the shared mount of req's image with one more user,
// mounting it first when nobody uses it.
func (s *Spawner) acquire(ctx context.Context, req daemon.MountRequest) (*sharedLower, error) {
	key, err := lowerKey(req)
	if err != nil {
		return nil, err
	}
	l := s.lower(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.live() {
		l.users++
		return l, nil
	}
	if l.m != nil {
		l.m.Release() // gone by itself: forget it
		l.m, l.users = nil, 0
	}
	if err := os.MkdirAll(l.mountpoint, 0o700); err != nil {
		return nil, fmt.Errorf("shared mount %s: %w", l.mountpoint, err)
	}
	// A dead FUSE mount left by a serving process that died.
	_ = unix.Unmount(l.mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
	dir, err := os.OpenFile(l.mountpoint, os.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("shared mount %s: %w", l.mountpoint, err)
	}
	defer dir.Close()
	ro := req
	ro.ID, ro.Mountpoint, ro.Dir, ro.Writable = l.id, l.mountpoint, dir, false
	m, err := s.Mount(ctx, ro)
	if err != nil {
		return nil, err
	}
	l.m, l.users = m, 1
	go s.watchLower(l, m)
	return l, nil
}

// adoptLower takes over the shared mount a writable entry names, once for
// all its users, and counts one more user.
func (s *Spawner) adoptLower(ctx context.Context, e daemon.StateEntry) (*sharedLower, error) {
	key := filepath.Base(e.Lower)
	if filepath.Join(s.config().StateDir, "lower", key) != e.Lower {
		return nil, fmt.Errorf("shared mount %s is not under %s", e.Lower, filepath.Join(s.config().StateDir, "lower"))
	}
	l := s.lower(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.live() {
		l.users++
		return l, nil
	}
	m, err := s.Adopt(ctx, daemon.StateEntry{ID: l.id, Archive: e.Archive, Mountpoint: l.mountpoint, PID: e.PID,
		Control: e.Control, Version: e.Version, Setuid: e.Setuid})
	if errors.Is(err, daemon.ErrServingProcessGone) || errors.Is(err, daemon.ErrUnmounted) {
		// Every access to a dead FUSE mount fails: detach it, so that the
		// next writable mount of the image mounts it afresh.
		_ = unix.Unmount(l.mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		return nil, fmt.Errorf("%w: shared read-only mount %s: %v", daemon.ErrServingProcessGone, l.mountpoint, err)
	}
	if err != nil {
		return nil, err
	}
	l.m, l.users = m, 1
	go s.watchLower(l, m)
	return l, nil
}

// release lets go of one user; the last one unmounts the shared mount (a
// lazy detach: an overlay detached while busy keeps it alive, served,
// until its last process leaves, then the serving process ends) unless
// keep, when the daemon stops and the next one adopts it.
func (s *Spawner) release(ctx context.Context, l *sharedLower, keep bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.users = max(l.users-1, 0); l.users > 0 || l.m == nil {
		return nil
	}
	m := l.m
	l.m = nil
	if keep {
		m.Release()
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, lowerReleaseTimeout)
	defer cancel()
	err := m.Unmount(ctx, true)
	if errors.Is(err, daemon.ErrKilled) {
		s.log.Warn("shared read-only mount", "mountpoint", l.mountpoint, "err", err)
		err = nil
	}
	if err != nil {
		return fmt.Errorf("unmount shared mount %s: %w", l.mountpoint, err)
	}
	if err := os.Remove(l.mountpoint); err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Debug("remove shared mountpoint", "mountpoint", l.mountpoint, "err", err)
	}
	return nil
}

// mountWritable mounts an overlay on req.Dir over the shared read-only
// mount of req's image.
func (s *Spawner) mountWritable(ctx context.Context, req daemon.MountRequest) (daemon.Mounted, error) {
	if req.Dir == nil {
		return nil, errors.New("writable mount without a mountpoint descriptor")
	}
	upperRoot := filepath.Join(s.lowers.upperDir, req.ID)
	upper, work := filepath.Join(upperRoot, "upper"), filepath.Join(upperRoot, "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			os.RemoveAll(upperRoot)
			return nil, fmt.Errorf("create upper directory: %w", err)
		}
	}
	l, err := s.acquire(ctx, req)
	if err != nil {
		os.RemoveAll(upperRoot)
		return nil, err
	}
	if err := copyRootAttrs(l.mountpoint, upper); err != nil {
		s.log.Warn("upper directory: copy the image root's owner and mode", "upper", upper, "err", err)
	}
	if err := mountOverlay(req.Dir, overlayLayers{lower: l.mountpoint, upper: upper, work: work, setuid: req.Setuid}); err != nil {
		os.RemoveAll(upperRoot)
		if rerr := s.release(context.WithoutCancel(ctx), l, false); rerr != nil {
			s.log.Warn("release shared mount after a failed overlay", "err", rerr)
		}
		return nil, fmt.Errorf("writable mount at %s: %w", req.Mountpoint, err)
	}
	return s.newWritable(req.ID, req.Mountpoint, upperRoot, l), nil
}

// adoptWritable takes over a writable entry of a previous daemon.
func (s *Spawner) adoptWritable(ctx context.Context, e daemon.StateEntry) (daemon.Mounted, error) {
	if e.Lower == "" || e.UpperDir == "" {
		return nil, fmt.Errorf("writable mount %s: no shared mount or upper directory recorded", e.ID)
	}
	l, err := s.adoptLower(ctx, e)
	if err != nil {
		return nil, err
	}
	return s.newWritable(e.ID, e.Mountpoint, e.UpperDir, l), nil
}

func (s *Spawner) newWritable(id, mountpoint, upperRoot string, l *sharedLower) *writableMount {
	w := &writableMount{s: s, id: id, mountpoint: mountpoint, upperRoot: upperRoot, lower: l, lm: l.m,
		done: make(chan struct{}), stop: make(chan struct{})}
	go w.follow()
	return w
}

// writableMount is one overlay, seen from the daemon.
type writableMount struct {
	s                         *Spawner
	id, mountpoint, upperRoot string
	lower                     *sharedLower
	lm                        daemon.Mounted // lower's mount when this one was made

	done     chan struct{}
	err      error
	stop     chan struct{}
	stopOnce sync.Once
	released sync.Once
}

var _ daemon.WritableMounted = (*writableMount)(nil)

// follow ends the overlay's life with its lower layer's: a dead serving
// process leaves an overlay whose reads fail.
func (w *writableMount) follow() {
	select {
	case <-w.stop:
	case <-w.lm.Done():
		w.err = w.lm.Err()
		if w.err == nil {
			w.err = fmt.Errorf("%w: the shared read-only mount %s went away", daemon.ErrServingProcessGone, w.lower.mountpoint)
		}
	}
	close(w.done)
}

func (w *writableMount) halt() { w.stopOnce.Do(func() { close(w.stop) }) }

func (w *writableMount) Overlay() daemon.OverlayInfo {
	return daemon.OverlayInfo{UpperDir: w.upperRoot, Lower: w.lower.mountpoint}
}

func (w *writableMount) Unmount(ctx context.Context, force bool) error {
	_, err := w.UnmountWritable(ctx, daemon.UnmountOptions{Force: force})
	return err
}

func (w *writableMount) UnmountWritable(ctx context.Context, o daemon.UnmountOptions) (string, error) {
	detached, err := unmountOverlay(w.mountpoint, o.Force)
	if err != nil {
		return "", err
	}
	w.halt()
	var notes []string
	switch {
	case o.KeepUpper:
		notes = append(notes, "upper directory kept at "+filepath.Join(w.upperRoot, "upper"))
	case detached || o.InUse:
		// Processes still write through the detached overlay: pulling
		// its upper directory from under it is left to the operator.
		notes = append(notes, "overlay detached while in use; upper directory kept at "+filepath.Join(w.upperRoot, "upper"))
	default:
		if err := os.RemoveAll(w.upperRoot); err != nil {
			notes = append(notes, fmt.Sprintf("upper directory %s not removed: %v", w.upperRoot, err))
		}
	}
	var rerr error
	w.released.Do(func() { rerr = w.s.release(ctx, w.lower, false) })
	if rerr != nil {
		notes = append(notes, rerr.Error())
	}
	return strings.Join(notes, "; "), nil
}

func (w *writableMount) Stats(ctx context.Context) api.MountStats { return w.lm.Stats(ctx) }
func (w *writableMount) Image() any                               { return w.lm.Image() }
func (w *writableMount) Process() daemon.ServingProcess           { return w.lm.Process() }
func (w *writableMount) Done() <-chan struct{}                    { return w.done }
func (w *writableMount) Err() error                               { return w.err }

// Release keeps the overlay and the shared mount for the next daemon.
func (w *writableMount) Release() {
	w.halt()
	w.released.Do(func() { _ = w.s.release(context.Background(), w.lower, true) })
}

// copyRootAttrs gives the upper directory the owner and mode of the image's
// root: overlayfs shows the upper layer's root directory as the merged
// root, so a bare 0755 root:root directory would hide the image's.
func copyRootAttrs(lower, upper string) error {
	var st unix.Stat_t
	if err := unix.Stat(lower, &st); err != nil {
		return err
	}
	if err := unix.Lchown(upper, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if err := unix.Chmod(upper, st.Mode&0o7777); err != nil {
		return err
	}
	return unix.UtimesNano(upper, []unix.Timespec{st.Atim, st.Mtim})
}

var _ daemon.SharedSweeper = (*Spawner)(nil)

// SweepShared detaches and removes the shared mounts under StateDir/lower
// that no writable mount uses: their serving processes end once the
// kernel lets go. The daemon calls it after taking over its mount table,
// before it takes requests.
func (s *Spawner) SweepShared() {
	dir := filepath.Join(s.config().StateDir, "lower")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, de := range ents {
		l := s.lower(de.Name())
		l.mu.Lock()
		if l.live() {
			l.mu.Unlock()
			continue
		}
		err := unix.Unmount(l.mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		if err == nil {
			s.log.Warn("shared read-only mount without users detached", "mountpoint", l.mountpoint)
		}
		_ = os.Remove(l.mountpoint)
		l.mu.Unlock()
	}
}

// watchLower detaches a shared mount whose serving process died: every
// access to it fails, and nobody else would remove it.
func (s *Spawner) watchLower(l *sharedLower, m daemon.Mounted) {
	<-m.Done()
	if m.Err() == nil {
		return // unmounted
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m != m {
		return
	}
	if err := unix.Unmount(l.mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) {
		s.log.Warn("detach dead shared mount", "mountpoint", l.mountpoint, "err", err)
	}
	s.log.Error("shared read-only mount failed: its writable mounts fail", "mountpoint", l.mountpoint, "err", m.Err())
	l.m.Release()
	l.m, l.users = nil, 0
}
