package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/clipd/clipd/api"
	"github.com/clipd/clipd/mount"
)

// adoptTimeout bounds the adoption of one mount at start.
const adoptTimeout = 10 * time.Second

// adoptAll takes over the mount table a previous daemon left. Mounts whose
// serving process still runs are adopted and answered for as before; the
// others become failed (their dead FUSE mounts detached), so that a lost
// filesystem is reported, not silently forgotten. Entries are handled in
// parallel: the API waits for this.
func (s *Server) adoptAll(ctx context.Context, old []StateEntry) {
	if len(old) == 0 {
		return
	}
	start := time.Now()
	got := make([]*entry, len(old))
	var wg sync.WaitGroup
	for i, se := range old {
		wg.Go(func() { got[i] = s.adopt(ctx, se) })
	}
	wg.Wait()
	s.mu.Lock()
	adopted, failed := 0, 0
	for _, e := range got {
		if e == nil {
			continue
		}
		s.mounts[e.ID] = e
		if e.State == api.MountFailed {
			failed++
			continue
		}
		adopted++
		go s.watch(e, e.m)
	}
	s.mu.Unlock()
	s.log.Info("mount table taken over", "adopted", adopted, "failed", failed, "dropped", len(old)-adopted-failed,
		"duration", time.Since(start).Round(time.Microsecond))
}

// adopt returns the table entry for one old entry, or nil to drop it.
func (s *Server) adopt(ctx context.Context, se StateEntry) *entry {
	e := &entry{StateEntry: se}
	if e.State == api.MountFailed {
		e.m = &failedMount{mountpoint: e.Mountpoint, id: e.ID, detach: s.detachDead}
		return e
	}
	if se.Control == "" {
		// Served inside a daemon that is gone: the filesystem died with it.
		s.detachDead(e.ID, e.Mountpoint)
		return s.failedEntry(e, errors.New("its filesystem was served inside the previous daemon, which is gone"), api.MountStats{})
	}
	actx, cancel := context.WithTimeout(ctx, adoptTimeout)
	m, err := s.mounter.Adopt(actx, se)
	cancel()
	switch {
	case errors.Is(err, ErrUnmounted):
		s.log.Info("mount entry dropped: unmounted while the daemon was down", "id", e.ID, "mountpoint", e.Mountpoint)
		removeBundle(e.Bundle, e.Mountpoint, s.config().Daemon.MountRoots, s.log)
		return nil
	case errors.Is(err, ErrServingProcessGone):
		s.detachDead(e.ID, e.Mountpoint)
		return s.failedEntry(e, err, api.MountStats{})
	case err != nil:
		// The process may still serve: its mount is left alone.
		return s.failedEntry(e, err, api.MountStats{})
	}
	if mi, mounted, err := findMount(e.Mountpoint); err == nil && !(mounted && ownFSType(se, mi.FSType)) {
		m.Release()
		return s.failedEntry(e, fmt.Errorf("pid %d answers but %s is no longer its mount", e.PID, e.Mountpoint), api.MountStats{})
	}
	e.m, e.image, e.State, e.Error = m, m.Image(), api.MountActive, ""
	proc := m.Process()
	e.PID, e.Control, e.Version = proc.PID, proc.Control, proc.Version
	s.log.Info("mount adopted", "id", e.ID, "mountpoint", e.Mountpoint, "archive", e.Archive, "pid", e.PID, "version", e.Version)
	return e
}

// failedEntry marks a new (not yet shared) entry failed.
func (s *Server) failedEntry(e *entry, cause error, last api.MountStats) *entry {
	s.mu.Lock()
	s.markFailed(e, cause, last)
	s.mu.Unlock()
	s.log.Error("mount failed", "id", e.ID, "mountpoint", e.Mountpoint, "archive", e.Archive, "pid", e.PID, "err", cause)
	return e
}

// markFailed turns e into a failed entry; s.mu held.
func (s *Server) markFailed(e *entry, cause error, last api.MountStats) {
	e.State, e.Error = api.MountFailed, cause.Error()
	e.m = &failedMount{mountpoint: e.Mountpoint, id: e.ID, stats: last, image: e.image, detach: s.detachDead}
	s.failures++
}

// failedMount stands for a filesystem whose serving process died: it keeps
// the last figures, and deleting it detaches what is left at the
// mountpoint.
type failedMount struct {
	id, mountpoint string
	stats          api.MountStats
	image          any
	detach         func(id, mountpoint string)
}

func (f *failedMount) Unmount(context.Context, bool) error {
	f.detach(f.id, f.mountpoint)
	return nil
}
func (f *failedMount) Stats(context.Context) api.MountStats { return f.stats }
func (f *failedMount) Image() any                           { return f.image }

// Process is empty: no process serves the mount any more (the table keeps
// the one that did).
func (f *failedMount) Process() ServingProcess { return ServingProcess{} }

// Release has nothing to let go of.
func (f *failedMount) Release() {}

// Err is nil: Done never closes, so nobody asks.
func (f *failedMount) Err() error { return nil }

// Done never closes: nothing is left to go away.
func (f *failedMount) Done() <-chan struct{} { return nil }

// detachDead lazily detaches a FUSE mount left at mountpoint by a process
// that is gone (every access to it fails with ENOTCONN). The mountpoint is
// reached beneath its mount root without following symbolic links
// (mount.DetachDead): a link swapped in since is not unmounted through. A
// mount of another type is not ours and is left alone.
func (s *Server) detachDead(id, mountpoint string) {
	detached, err := mount.DetachDead(s.config().Daemon.MountRoots, mountpoint)
	switch {
	case errors.Is(err, mount.ErrNotFUSE):
		s.log.Warn("dead mount: mountpoint holds a non-FUSE mount, left alone", "id", id, "mountpoint", mountpoint, "err", err)
	case err != nil:
		s.log.Warn("dead mount: detach failed", "id", id, "mountpoint", mountpoint, "err", err)
	case detached:
		s.log.Info("dead mount detached", "id", id, "mountpoint", mountpoint)
	}
}
