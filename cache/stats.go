package cache

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Stats describe the store. Used and Evictions are the host's (every
// process's, from the ledger); Hits and Misses are this process's reads.
type Stats struct {
	Used      int64 // bytes of entry files
	Evictions int64 // entries evicted, by any process
	Entries   int   // entries this process knows of
	OpenFiles int   // fds in this process's cache
	MaxSize   int64 // configured budget (0: none)
	MinFree   int64 // configured free space to keep
	Limit     int64 // what the store may hold now (budget and free space)
	Hits      int64
	Misses    int64
}

// Stats returns the store's figures.
func (s *Store) Stats() Stats {
	u, _ := readUsage(s.ledger.f)
	s.mu.Lock()
	st := Stats{Used: u.Used, Evictions: u.Evictions, Entries: len(s.meta), OpenFiles: len(s.open),
		MaxSize: u.MaxSize, MinFree: u.MinFree, Hits: s.hits.Load(), Misses: s.misses.Load()}
	s.mu.Unlock()
	st.Limit = s.limitLocked(&u, 0)
	return st
}

// EntryInfo describes one entry on disk.
type EntryInfo struct {
	Key     string
	Size    int64 // of the file, header included
	ModTime time.Time
}

// List walks the store and returns every entry, for `clipd cache ls`.
func (s *Store) List() ([]EntryInfo, error) { return listEntries(s.dir) }

// listEntries walks the store in dir.
func listEntries(dir string) ([]EntryInfo, error) {
	var out []EntryInfo
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		if strings.HasPrefix(rel, ".") {
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
			return nil
		}
		out = append(out, EntryInfo{Key: filepath.ToSlash(rel), Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list cache %s: %w", dir, err)
	}
	return out, nil
}
