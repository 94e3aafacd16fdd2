package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// View is a store opened read-only, for `clipd cache ls`: opening it
// creates nothing, records no budget, evicts nothing and starts no
// background work, so listing the cache with any config leaves the budget
// every process enforces as it was.
type View struct {
	dir string
}

// Inspect opens the store in dir read-only. The directory must exist.
func Inspect(dir string) (*View, error) {
	abs, err := existingDir(dir)
	if err != nil {
		return nil, err
	}
	return &View{dir: abs}, nil
}

// existingDir returns dir made absolute, or an error when it is not an
// existing directory.
func existingDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("open cache: empty directory")
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("cache dir %s does not exist", dir)
	case err != nil:
		return "", fmt.Errorf("open cache %s: %w", dir, err)
	case !fi.IsDir():
		return "", fmt.Errorf("open cache %s: not a directory", dir)
	}
	return absDir(dir)
}

// Dir returns the absolute directory of the store.
func (v *View) Dir() string { return v.dir }

// List walks the store and returns every entry.
func (v *View) List() ([]EntryInfo, error) { return listEntries(v.dir) }

// Stats returns what the ledger records (usage, evictions, the budget in
// force) and what the store may hold now. Entries is what List finds;
// OpenFiles, Hits and Misses are zero.
func (v *View) Stats() (Stats, error) {
	u, err := readLedger(v.dir)
	if err != nil {
		return Stats{}, err
	}
	list, err := v.List()
	if err != nil {
		return Stats{}, err
	}
	return Stats{Used: u.Used, Evictions: u.Evictions, Entries: len(list), MaxSize: u.MaxSize, MinFree: u.MinFree,
		Limit: limitOf(v.dir, &u, 0)}, nil
}
