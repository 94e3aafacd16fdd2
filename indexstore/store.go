// Package indexstore owns the node's store of .clip indexes for images
// mounted by reference: one file per platform manifest digest under
// state_dir/indexes (sha256-<hex>.clip, with a small JSON record beside it
// saying which image it came from and how it was obtained). Files are
// written atomically and read-only to others (0600): an index names
// registries and repositories the node pulls from.
package indexstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Dir is the store's directory name in daemon.state_dir.
const Dir = "indexes"

// Index sources, as the daemon reports them.
const (
	SourceStore    = "store"    // found in this store
	SourceRegistry = "registry" // fetched from the registry's index artifact
	SourceBuilt    = "built"    // built by streaming the layers
	SourcePushed   = "pushed"   // written by clipd index on this node
)

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// Meta is what the store records beside an index.
type Meta struct {
	Image   string    `json:"image"`  // the reference it was staged for
	Source  string    `json:"source"` // how it was obtained (Source*)
	Created time.Time `json:"created"`
}

// Entry is one stored index.
type Entry struct {
	Digest string // manifest digest, "sha256:<hex>"
	Path   string
	Size   int64
	Used   time.Time // last staged or mounted (the file's mtime)
	Meta   Meta
}

// Store is the index store in one directory.
type Store struct{ dir string }

// Open returns the store in dir, creating it (0700).
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("index store %s: %w", dir, err)
	}
	return &Store{dir: dir}, nil
}

// OpenReadOnly returns the store in dir without creating it: a listing by
// the CLI must not create state.
func OpenReadOnly(dir string) *Store { return &Store{dir: dir} }

// Path is where the index of manifest digest d lives (whether or not it
// exists).
func (s *Store) Path(d string) (string, error) {
	if !digestRE.MatchString(d) {
		return "", fmt.Errorf("index store: %q is not a sha256 manifest digest", d)
	}
	return filepath.Join(s.dir, strings.Replace(d, ":", "-", 1)+".clip"), nil
}

func metaPath(p string) string { return strings.TrimSuffix(p, ".clip") + ".json" }

// Open opens the index of d for reading and marks it used; the error
// wraps fs.ErrNotExist when there is none.
func (s *Store) Open(d string) (*os.File, error) {
	p, err := s.Path(d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("index store: %w", err)
	}
	now := time.Now()
	_ = os.Chtimes(p, now, now)
	return f, nil
}

// Put stores the index of d: write fills a temporary file in the store,
// which then replaces any previous index of d atomically. A failed write
// leaves nothing behind.
func (s *Store) Put(d string, meta Meta, write func(f *os.File) error) (string, error) {
	p, err := s.Path(d)
	if err != nil {
		return "", err
	}
	if err := writeAtomic(s.dir, p, write); err != nil {
		return "", fmt.Errorf("index store: write %s: %w", p, err)
	}
	if meta.Created.IsZero() {
		meta.Created = time.Now().UTC()
	}
	b, _ := json.Marshal(meta)
	if err := writeAtomic(s.dir, metaPath(p), func(f *os.File) error { _, err := f.Write(b); return err }); err != nil {
		return "", fmt.Errorf("index store: write %s: %w", metaPath(p), err)
	}
	return p, nil
}

func writeAtomic(dir, p string, write func(f *os.File) error) error {
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}

// List returns the stored indexes, most recently used first. A missing
// store is empty.
func (s *Store) List() ([]Entry, error) {
	des, err := os.ReadDir(s.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("index store %s: %w", s.dir, err)
	}
	var out []Entry
	for _, de := range des {
		n := de.Name()
		if !strings.HasPrefix(n, "sha256-") || !strings.HasSuffix(n, ".clip") {
			continue
		}
		d := strings.Replace(strings.TrimSuffix(n, ".clip"), "-", ":", 1)
		if !digestRE.MatchString(d) {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		e := Entry{Digest: d, Path: filepath.Join(s.dir, n), Size: fi.Size(), Used: fi.ModTime()}
		if b, err := os.ReadFile(metaPath(e.Path)); err == nil {
			_ = json.Unmarshal(b, &e.Meta)
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return b.Used.Compare(a.Used) })
	return out, nil
}

// Remove deletes the index of d. Mounts serving it keep their open file.
func (s *Store) Remove(d string) error {
	p, err := s.Path(d)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("index store: %w", err)
	}
	_ = os.Remove(metaPath(p))
	return nil
}

// Prune removes indexes that inUse does not claim, least recently used
// first, until the store holds at most budget bytes; budget < 0 removes
// every unused index. It returns what it removed.
func (s *Store) Prune(budget int64, inUse func(Entry) bool) ([]Entry, error) {
	all, err := s.List()
	if err != nil {
		return nil, err
	}
	var total int64
	for _, e := range all {
		total += e.Size
	}
	var removed []Entry
	for i := len(all) - 1; i >= 0; i-- { // oldest first
		e := all[i]
		if budget >= 0 && total <= budget {
			break
		}
		if inUse != nil && inUse(e) {
			continue
		}
		if err := s.Remove(e.Digest); err != nil {
			return removed, err
		}
		total -= e.Size
		removed = append(removed, e)
	}
	return removed, nil
}
