package mounter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/mount"
	"golang.org/x/sys/unix"
)

// Bounds of an unmount through a serving process.
const (
	// unmountAnswerTimeout bounds a graceful unmount call: a serving
	// process detaches at once or refuses (busy) within a second; one that
	// has not answered by then is wedged and is killed.
	unmountAnswerTimeout = 10 * time.Second
	// detachPoll is how often a forced unmount looks whether the mount
	// has left the mount table.
	detachPoll = 10 * time.Millisecond
	// exitWait bounds the wait for a serving process to end after it
	// unmounted.
	exitWait = 10 * time.Second
)

// Unmount asks the serving process to unmount and waits for it to end,
// within ctx. A serving process that is already dead leaves a dead FUSE
// mount: it is detached, which is what the caller asked for. A forced
// unmount returns as soon as the mount has left the mount table: the
// serving process goes on serving the files still open and ends when the
// kernel lets go. A serving process that does not answer a graceful
// unmount within unmountAnswerTimeout is killed, its mount detached, and
// the error wraps daemon.ErrKilled.
func (p *procMount) Unmount(ctx context.Context, force bool) error {
	sctx, cancel := context.WithTimeout(ctx, finalStatsTimeout)
	p.Stats(sctx) // the final figures, for the host totals
	cancel()
	if force {
		return p.detach(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, unmountAnswerTimeout)
	err := p.client.unmount(actx, false)
	timedOut := actx.Err() != nil && ctx.Err() == nil
	cancel()
	if err != nil && !p.alive() {
		return p.detachDead()
	}
	if err != nil && timedOut {
		return p.kill(fmt.Sprintf("did not answer an unmount within %s", unmountAnswerTimeout))
	}
	if err != nil {
		return fmt.Errorf("unmount %s (serving process pid %d): %w", p.mountpoint, p.pid, err)
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.log.Warn("serving process still running after unmounting", "mountpoint", p.mountpoint, "err", ctx.Err())
	case <-time.After(exitWait):
		p.log.Warn("serving process still running after unmounting", "mountpoint", p.mountpoint, "waited", exitWait)
	}
	return nil
}

// detach asks the serving process for a lazy detach and returns once the
// mount has left the mount table (or the process answered, or ended).
func (p *procMount) detach(ctx context.Context) error {
	answer := make(chan error, 1)
	go func() {
		// The answer comes once the kernel has let go of the file system,
		// which waits for the files still open: nobody waits for it past
		// the detach, but the call keeps the caller's deadline.
		answer <- p.client.unmount(ctx, true)
	}()
	tick := time.NewTicker(detachPoll)
	defer tick.Stop()
	wedged := time.NewTimer(unmountAnswerTimeout)
	defer wedged.Stop()
	for {
		select {
		case err := <-answer:
			if err != nil && !p.alive() {
				return p.detachDead()
			}
			if err != nil {
				return fmt.Errorf("detach %s (serving process pid %d): %w", p.mountpoint, p.pid, err)
			}
			return nil
		case <-p.done:
			return nil
		case <-ctx.Done():
			return p.kill(fmt.Sprintf("did not detach %s: %v", p.mountpoint, ctx.Err()))
		case <-wedged.C:
			return p.kill(fmt.Sprintf("did not detach %s within %s", p.mountpoint, unmountAnswerTimeout))
		case <-tick.C:
			if !p.fuseMounted() {
				go func() {
					if err := <-answer; err != nil {
						p.log.Debug("lazy detach answer", "err", err)
					}
				}()
				return nil
			}
		}
	}
}

// fuseMounted reports whether a FUSE mount is still at the mountpoint.
func (p *procMount) fuseMounted() bool {
	table, err := daemon.MountTable()
	if err != nil {
		return true
	}
	m, ok := daemon.MountedAt(table, p.mountpoint)
	return ok && (m.FSType == "fuse" || len(m.FSType) > 5 && m.FSType[:5] == "fuse.")
}

// detachDead detaches the dead FUSE mount a gone serving process left.
// Under the mount roots it is reached beneath them (whoever can write
// there may have swapped the path for a link to another mount meanwhile);
// the shared read-only mounts of writable mounts live in the daemon's
// private state directory, where a path is safe.
func (p *procMount) detachDead() error {
	var roots []string
	if p.roots != nil {
		roots = p.roots()
	}
	_, err := mount.DetachDead(roots, p.mountpoint)
	if errors.Is(err, mount.ErrOutsideRoots) {
		err = unix.Unmount(p.mountpoint, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		if errors.Is(err, unix.EINVAL) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("detach %s of dead serving process pid %d: %w", p.mountpoint, p.pid, err)
	}
	return nil
}

// kill ends a serving process that does not answer and detaches what it
// served: the mount is gone, and the error says how.
func (p *procMount) kill(why string) error {
	p.log.Error("serving process does not answer: killing it", "mountpoint", p.mountpoint, "why", why)
	if err := unix.Kill(p.pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill serving process pid %d of %s (%s): %w", p.pid, p.mountpoint, why, err)
	}
	if err := p.detachDead(); err != nil {
		return err
	}
	return fmt.Errorf("%w: pid %d %s; killed, %s detached", daemon.ErrKilled, p.pid, why, p.mountpoint)
}
