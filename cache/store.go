package cache

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// tmpDir holds entries being written. It lives inside the store so that the
// final rename never crosses file systems.
const tmpDir = ".tmp"

// maxKeyLen bounds keys so that paths stay well under PATH_MAX.
const maxKeyLen = 1024

// Store is a directory of immutable entries addressed by key.
type Store struct {
	dir string
}

// Open opens (creating if needed, mode 0700) the store in dir and removes
// temporary files left behind by writers that died. A temporary file still
// being written by a live process is kept: writers hold an flock on it.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("open cache: empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open cache %s: %w", dir, err)
	}
	if err := os.MkdirAll(filepath.Join(abs, tmpDir), 0o700); err != nil {
		return nil, fmt.Errorf("open cache %s: %w", abs, err)
	}
	s := &Store{dir: abs}
	if err := s.removeStaleTemps(); err != nil {
		return nil, fmt.Errorf("open cache %s: %w", abs, err)
	}
	return s, nil
}

// Dir returns the absolute directory of the store.
func (s *Store) Dir() string { return s.dir }

// removeStaleTemps deletes temporary files nobody holds a lock on.
func (s *Store) removeStaleTemps() error {
	tmp := filepath.Join(s.dir, tmpDir)
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(tmp, e.Name())
		f, err := os.Open(p)
		if err != nil {
			continue // already gone: its writer published or cleaned it
		}
		// A live writer holds LOCK_EX; only an orphan can be locked here.
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			_ = os.Remove(p)
		}
		f.Close()
	}
	return nil
}

// Path returns where the entry key lives (whether or not it exists).
func (s *Store) Path(key string) (string, error) {
	if err := CheckKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, filepath.FromSlash(key)), nil
}

// CheckKey reports whether key can name an entry: slash-separated components
// of letters, digits and "._:+=-", none empty, none starting with "." (which
// also keeps "..", and the store's own temporary directory, out of reach).
func CheckKey(key string) error {
	switch {
	case key == "":
		return errors.New("invalid cache key \"\": empty")
	case len(key) > maxKeyLen:
		return fmt.Errorf("invalid cache key %.40q…: longer than %d bytes", key, maxKeyLen)
	}
	for _, c := range strings.Split(key, "/") {
		if c == "" {
			return fmt.Errorf("invalid cache key %q: empty path component (absolute or doubled slash)", key)
		}
		if c[0] == '.' {
			return fmt.Errorf("invalid cache key %q: component %q starts with '.'", key, c)
		}
		if len(c) > 255 {
			return fmt.Errorf("invalid cache key %q: component longer than 255 bytes", key)
		}
		for _, r := range c {
			if !keyRune(r) {
				return fmt.Errorf("invalid cache key %q: character %q not allowed", key, r)
			}
		}
	}
	return nil
}

func keyRune(r rune) bool {
	switch {
	case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		return true
	}
	return strings.ContainsRune("._:+=-", r)
}

// Get opens the entry key, or returns an error satisfying
// errors.Is(err, fs.ErrNotExist) when it is absent.
func (s *Store) Get(key string) (*os.File, error) {
	p, err := s.Path(key)
	if err != nil {
		return nil, fmt.Errorf("cache get: %w", err)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("cache get %s: %w", key, err)
	}
	return f, nil
}

// Has reports whether the entry key exists.
func (s *Store) Has(key string) bool {
	p, err := s.Path(key)
	if err != nil {
		return false
	}
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// Remove deletes the entry key; readers that hold it open keep their copy.
// Removing an absent entry is not an error.
func (s *Store) Remove(key string) error {
	p, err := s.Path(key)
	if err != nil {
		return fmt.Errorf("cache remove: %w", err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache remove %s: %w", key, err)
	}
	return nil
}

// Put stores everything r yields as the entry key, atomically: a concurrent
// Get sees either nothing or the whole entry. If r fails, nothing is stored
// and its error is returned. Entries are immutable, so when two writers race
// the last rename wins with identical content and both succeed.
func (s *Store) Put(key string, r io.Reader) (int64, error) {
	p, err := s.Path(key)
	if err != nil {
		return 0, fmt.Errorf("cache put: %w", err)
	}
	n, err := s.put(p, r)
	if err != nil {
		return n, fmt.Errorf("cache put %s: %w", key, err)
	}
	return n, nil
}

func (s *Store) put(final string, r io.Reader) (n int64, err error) {
	parent := filepath.Dir(final)
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return 0, err
	}
	f, err := os.CreateTemp(filepath.Join(s.dir, tmpDir), "put-*")
	if err != nil {
		return 0, err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// The lock tells Open in other processes that this file is live.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return 0, fmt.Errorf("lock temporary file: %w", err)
	}
	if n, err = io.Copy(f, r); err != nil {
		return n, err
	}
	// fsync before rename: after a crash the entry is whole or absent.
	if err := f.Sync(); err != nil {
		return n, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return n, err
	}
	if err := f.Close(); err != nil {
		return n, err
	}
	syncDir(parent)
	return n, nil
}

// syncDir makes a rename durable. Failure only weakens crash safety, so it
// is not reported.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
