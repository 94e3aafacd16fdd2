package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

const (
	// lowWaterDiv: eviction frees 1/lowWaterDiv of the limit beyond what
	// is needed, so that not every publish has to evict.
	lowWaterDiv = 32
	// enforceEvery is how often the background checks the budget (the
	// file system may fill up from elsewhere; limits may change).
	enforceEvery = 30 * time.Second
	// rescanEvery is how often the directory is recounted, which corrects
	// the ledger after a process died between publish and ledger update,
	// and shows this process entries written by others.
	rescanEvery = 5 * time.Minute
	// sweepEvery is how often cached fds are checked for deleted files.
	sweepEvery = 10 * time.Second
	// touchEvery throttles mtime updates on hits: other processes learn of
	// a use at most this late, and a hit costs a syscall at most this often
	// per entry.
	touchEvery = time.Minute
)

// limitLocked returns the most bytes the store may hold now: MaxSize, and
// what keeps MinFree of the file system free. pending counts bytes already
// allocated on the file system (a written temporary file) that publishing
// would add to used.
func (s *Store) limitLocked(u *usage, pending int64) int64 { return limitOf(s.dir, u, pending) }

// limitOf is limitLocked for the store in dir.
func limitOf(dir string, u *usage, pending int64) int64 {
	limit := int64(math.MaxInt64)
	if u.MaxSize > 0 {
		limit = u.MaxSize
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err == nil {
		avail := int64(st.Bavail) * int64(st.Bsize)
		limit = min(limit, u.Used+pending+avail-u.MinFree)
	}
	return max(0, limit)
}

// makeRoomLocked evicts so that an entry of need bytes fits, or returns
// ErrNoSpace.
func (s *Store) makeRoomLocked(u *usage, need, pending int64) error {
	limit := s.limitLocked(u, pending)
	if u.Used+need <= limit {
		return nil
	}
	if need > limit {
		return fmt.Errorf("%w: entry of %d bytes, limit %d", ErrNoSpace, need, limit)
	}
	s.evictLocked(u, limit-need-limit/lowWaterDiv)
	if u.Used+need > limit {
		return fmt.Errorf("%w: %d bytes in use, entry of %d bytes, limit %d", ErrNoSpace, u.Used, need, limit)
	}
	return nil
}

// reclaim evicts need bytes beyond the budget, after the file system ran out
// of space while an entry was being written.
func (s *Store) reclaim(need int64) error {
	return s.withLedger(func(u *usage) error { return s.makeRoomLocked(u, need, 0) })
}

// enforceLocked evicts down to the budget's low-water mark when over it.
func (s *Store) enforceLocked(u *usage) {
	if limit := s.limitLocked(u, 0); u.Used > limit {
		s.evictLocked(u, limit-limit/lowWaterDiv)
	}
}

// candidate is an eviction candidate.
type candidate struct {
	key   string
	atime int64
}

// candidates returns this process's entries, least recently used first.
func (s *Store) candidates() []candidate {
	s.mu.Lock()
	c := make([]candidate, 0, len(s.meta))
	for k, m := range s.meta {
		c = append(c, candidate{k, m.atime})
	}
	s.mu.Unlock()
	slices.SortFunc(c, func(a, b candidate) int {
		if a.atime != b.atime {
			return int(max(-1, min(1, a.atime-b.atime)))
		}
		return strings.Compare(a.key, b.key)
	})
	return c
}

// evictLocked removes least recently used entries until u.Used <= goal.
// This process's view may miss entries other processes wrote, or uses they
// made: an entry whose mtime is newer than the use this process knows of is
// skipped (another process touched it), and when the view runs out the
// directory is rescanned.
func (s *Store) evictLocked(u *usage, goal int64) {
	goal = max(0, goal)
	start, evicted, freed := time.Now(), 0, int64(0)
	for pass := 0; pass < 2 && u.Used > goal; pass++ {
		if pass == 1 {
			if err := s.rescanLocked(u); err != nil {
				s.log.Warn("rescan cache", "error", err)
				break
			}
		}
		for _, c := range s.candidates() {
			if u.Used <= goal {
				break
			}
			p := filepath.Join(s.dir, filepath.FromSlash(c.key))
			fi, err := os.Stat(p)
			if err != nil {
				s.forget(c.key)
				continue
			}
			if mt := fi.ModTime().UnixNano(); pass == 0 && mt > c.atime+int64(time.Second) {
				s.mu.Lock()
				if m := s.meta[c.key]; m != nil {
					m.atime = mt
				}
				s.mu.Unlock()
				continue
			}
			if n, err := s.removeLocked(u, c.key, p); err == nil {
				u.Evictions++
				s.evictions.Add(1)
				evicted++
				freed += n
			}
		}
	}
	if evicted > 0 {
		s.log.Debug("evicted cache entries", "entries", evicted, "bytes", freed, "used", u.Used,
			"goal", goal, "duration", time.Since(start).Round(time.Microsecond))
	}
}

// removeLocked deletes the entry file at p and takes it off the ledger. It
// returns the bytes freed.
func (s *Store) removeLocked(u *usage, key, p string) (int64, error) {
	fi, err := os.Stat(p)
	if err != nil {
		s.forget(key)
		return 0, err
	}
	if err := os.Remove(p); err != nil {
		return 0, err
	}
	u.Used -= fi.Size()
	s.forget(key)
	return fi.Size(), nil
}

// forget drops key from this process's view and closes its cached fd once
// no read uses it.
func (s *Store) forget(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.meta, key)
	if o := s.open[key]; o != nil {
		s.dropOpenLocked(o)
	}
}

// rescanLocked recounts the directory: the ledger gets the true usage and
// this process learns every entry (keeping the uses it knows of).
func (s *Store) rescanLocked(u *usage) error {
	seen := map[string]*meta{}
	var total int64
	err := filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(s.dir, p)
		if rel == "." {
			return nil
		}
		if strings.HasPrefix(rel, ".") { // .tmp, .locks, .ledger, scratch files
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil // removed meanwhile
		}
		key := filepath.ToSlash(rel)
		mt := fi.ModTime().UnixNano()
		seen[key] = &meta{size: fi.Size(), atime: mt, touched: mt}
		total += fi.Size()
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	for k, m := range seen {
		if old := s.meta[k]; old != nil {
			m.atime = max(m.atime, old.atime)
			m.touched = max(m.touched, old.touched)
			m.verified = old.verified
		}
	}
	s.meta = seen
	s.mu.Unlock()
	u.Used = total
	return nil
}

// background enforces the budget periodically (the file system may fill
// up from elsewhere; another process may have changed the budget), rescans now
// and then, and closes cached fds of deleted files.
func (s *Store) background() {
	defer close(s.done)
	enforce := time.NewTicker(enforceEvery)
	defer enforce.Stop()
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	lastScan := time.Now()
	for {
		select {
		case <-s.stop:
			return
		case <-sweep.C:
			s.sweepDeleted()
			continue
		case <-enforce.C:
		}
		rescan := time.Since(lastScan) >= rescanEvery
		if rescan {
			lastScan = time.Now()
		}
		err := s.withLedger(func(u *usage) error {
			if rescan {
				if err := s.rescanLocked(u); err != nil {
					return err
				}
			}
			s.enforceLocked(u)
			return nil
		})
		if err != nil {
			s.log.Warn("cache budget", "error", err)
		}
	}
}

// Prune evicts down to the budget's low-water mark, or every entry when
// all is set, and removes directories left empty. Readers holding an entry
// open keep reading it.
func (s *Store) Prune(all bool) (entries int, freed int64, err error) {
	err = s.withLedger(func(u *usage) error {
		if err := s.rescanLocked(u); err != nil {
			return err
		}
		before, beforeUsed := u.Evictions, u.Used
		if all {
			s.evictLocked(u, 0)
		} else {
			s.enforceLocked(u)
		}
		entries, freed = int(u.Evictions-before), beforeUsed-u.Used
		s.removeEmptyDirsLocked()
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("prune cache %s: %w", s.dir, err)
	}
	return entries, freed, nil
}

// removeEmptyDirsLocked removes empty key directories. It runs under the
// ledger lock, as does every publish (whose MkdirAll and rename it could
// otherwise race).
func (s *Store) removeEmptyDirsLocked() {
	var dirs []string
	_ = filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() || p == s.dir {
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		dirs = append(dirs, p)
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- { // deepest first
		_ = os.Remove(dirs[i]) // fails unless empty
	}
}
