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

// AcquireWithin is Acquire that stops waiting for a lock whose holder has
// made no progress for stuck (0: waits until ctx ends). A holder shows
// progress by calling Touch with its keys (the fetcher does for every few
// bytes that arrive); taking the locks counts as progress. Past that, the
// holder's fetch is taken to be stuck (a stalled registry): the lookup runs
// unlocked and the caller fetches the missing entries itself. Publishing
// stays atomic, and the first Put of an entry wins, so the two fetches cost
// bandwidth, never correctness, while one stuck fetch cannot hold up every
// other process, and a slow one that keeps receiving is still waited for.
func (s *Store) AcquireWithin(ctx context.Context, stuck time.Duration, keys ...string) (missing []int, release func(), err error) {
	release, err = s.lockKeysWithin(ctx, stuck, keys...)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, err
		}
		if errors.Is(err, errLockStuck) && len(keys) > 0 {
			s.log.Info("another process's fetch of these entries is making no progress, fetching them here", "keys", len(keys), "first", keys[0], "stuck", stuck)
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

// errLockStuck ends a wait for a lock whose holder makes no progress.
var errLockStuck = errors.New("the holder has made no progress")

// Touch tells processes waiting for the locks of keys that their holder is
// making progress (AcquireWithin). Only a holder calls it.
func (s *Store) Touch(keys ...string) {
	now := time.Now()
	for _, st := range stripesOf(keys) {
		// Best effort: a waiter that misses it fetches the entry too.
		_ = os.Chtimes(s.stripePath(st), now, now)
	}
}

func (s *Store) stripePath(stripe int) string {
	return filepath.Join(s.dir, locksDir, fmt.Sprintf("%03d", stripe))
}

// stripesOf returns the lock stripes of keys, sorted, without duplicates.
func stripesOf(keys []string) []int {
	stripes := make([]int, 0, len(keys))
	for _, k := range keys {
		h := fnv.New32a()
		h.Write([]byte(k))
		stripes = append(stripes, int(h.Sum32()%lockStripes))
	}
	// One order for everyone: no two holders can wait on each other.
	slices.Sort(stripes)
	return slices.Compact(stripes)
}

// lockKeys takes the cross-process locks of keys; the returned func
// releases them.
func (s *Store) lockKeys(ctx context.Context, keys ...string) (func(), error) {
	return s.lockKeysWithin(ctx, 0, keys...)
}

// lockKeysWithin is lockKeys that gives up on a stuck holder (stuck as for
// AcquireWithin).
func (s *Store) lockKeysWithin(ctx context.Context, stuck time.Duration, keys ...string) (func(), error) {
	var held []*os.File
	unlock := func() {
		for _, f := range held {
			f.Close() // releases the flock
		}
	}
	for _, st := range stripesOf(keys) {
		f, err := s.lockStripe(ctx, st, stuck)
		if err != nil {
			unlock()
			return nil, err
		}
		held = append(held, f)
	}
	// A new holder starts with a clean record.
	now := time.Now()
	for _, f := range held {
		_ = os.Chtimes(f.Name(), now, now)
	}
	return unlock, nil
}

// lockStripe opens and flocks one lock file. flock cannot be interrupted by
// a context, so it polls with LOCK_NB, backing off up to 20ms: a fetch takes
// far longer than that. With stuck > 0 it gives up (errLockStuck) once the
// lock file has not been touched for stuck while this process waited that
// long.
func (s *Store) lockStripe(ctx context.Context, stripe int, stuck time.Duration) (*os.File, error) {
	p := s.stripePath(stripe)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("cache lock %s: %w", p, err)
	}
	start := time.Now()
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
		if stuck > 0 && time.Since(start) >= stuck {
			if fi, err := f.Stat(); err == nil && time.Since(fi.ModTime()) >= stuck {
				f.Close()
				return nil, fmt.Errorf("cache lock %s: %w for %s", p, errLockStuck, time.Since(fi.ModTime()).Round(time.Millisecond))
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("cache lock %s: %w", p, ctx.Err())
		case <-t.C:
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}
