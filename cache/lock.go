package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

const (
	// locksDir holds the lock files of Acquire.
	locksDir = ".locks"
	// lockStripes is how many lock files there are. Keys share stripes, so
	// that lock files never pile up (removing a lock file someone may be
	// waiting on would break the lock); an unlucky pair of keys only waits
	// for each other's fetch.
	lockStripes = 256
)

// Acquire is the miss path of the store. It takes an exclusive lock, shared
// by every process using the store, on each of keys (waiting until they are
// free or ctx ends), then looks each key up once. It returns the positions
// in keys of the entries still missing; the others were published by
// another process while this one waited, and are open for ReadAt. The
// caller Puts the missing entries, then calls release: processes that miss
// the same entry at once fetch it once.
//
// Only ctx ending is an error. When a lock file cannot be locked for
// another reason, the lookup runs unlocked and the failure is logged:
// another process may then fetch the same entry too, which costs bandwidth,
// not correctness.
func (s *Store) Acquire(ctx context.Context, keys ...string) (missing []int, release func(), err error) {
	return s.AcquireWithin(ctx, 0, keys...)
}

// AcquireWithin is Acquire that waits at most wait (0: until ctx ends) for
// the locks. When another process holds them longer, its fetch is taken to
// be stuck (a stalled registry): the lookup runs unlocked and the caller
// fetches the missing entries itself. Publishing stays atomic, and the
// first Put of an entry wins, so the two fetches cost bandwidth, never
// correctness, while one stuck fetch cannot hold up every other process.
func (s *Store) AcquireWithin(ctx context.Context, wait time.Duration, keys ...string) (missing []int, release func(), err error) {
	lctx, cancel := ctx, context.CancelFunc(func() {})
	if wait > 0 {
		lctx, cancel = context.WithTimeoutCause(ctx, wait, errLockWait)
	}
	release, err = s.lockKeys(lctx, keys...)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, err
		}
		if errors.Is(err, errLockWait) && len(keys) > 0 {
			s.log.Info("another process has been fetching these entries for too long, fetching them here", "keys", len(keys), "first", keys[0], "waited", wait)
		} else {
			s.log.Warn("cache lock failed, fetching anyway", "error", err)
		}
		release = func() {}
	}
	for i, k := range keys {
		// A corrupt entry is removed by acquire: it is missing too.
		o, err := s.acquire(k)
		if err != nil {
			missing = append(missing, i)
			continue
		}
		s.release(o) // stays in the fd cache for the caller's ReadAt
	}
	return missing, release, nil
}

// errLockWait ends a bounded wait for another process's locks.
var errLockWait = errors.New("waited too long for another process's fetch")

// lockKeys takes the cross-process locks of keys; the returned func
// releases them.
func (s *Store) lockKeys(ctx context.Context, keys ...string) (func(), error) {
	stripes := make([]int, 0, len(keys))
	for _, k := range keys {
		h := fnv.New32a()
		h.Write([]byte(k))
		stripes = append(stripes, int(h.Sum32()%lockStripes))
	}
	// One order for everyone: no two holders can wait on each other.
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	var held []*os.File
	unlock := func() {
		for _, f := range held {
			f.Close() // releases the flock
		}
	}
	for _, st := range stripes {
		f, err := s.lockStripe(ctx, st)
		if err != nil {
			unlock()
			return nil, err
		}
		held = append(held, f)
	}
	return unlock, nil
}

// lockStripe opens and flocks one lock file. flock cannot be interrupted by
// a context, so it polls with LOCK_NB, backing off up to 20ms: a fetch takes
// far longer than that.
func (s *Store) lockStripe(ctx context.Context, stripe int) (*os.File, error) {
	p := filepath.Join(s.dir, locksDir, fmt.Sprintf("%03d", stripe))
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache lock %s: %w", p, err)
	}
	wait := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("cache lock %s: %w", p, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("cache lock %s: %w", p, context.Cause(ctx))
		case <-t.C:
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}
