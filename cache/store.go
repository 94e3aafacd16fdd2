package cache

import (
	"container/list"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// tmpDir holds entries being written. It lives inside the store so that the
// final rename never crosses file systems.
const tmpDir = ".tmp"

// maxKeyLen bounds keys so that paths stay well under PATH_MAX.
const maxKeyLen = 1024

// DefaultMaxOpenFiles bounds the fd cache of a Store.
const DefaultMaxOpenFiles = 256

// Options configure a Store.
type Options struct {
	// MaxSize is the budget of the store in bytes (entry files, headers
	// included); 0 means no limit besides MinFree.
	//
	// When MaxSize or MinFree is set, opening records the pair in the
	// ledger, where it applies to every process sharing the store, and
	// evicts down to it (the daemon and `clipd cache prune` open the
	// store with the config's budget). When both are 0, this process
	// adopts the budget recorded there (serving processes). To look
	// without changing the budget, use Inspect.
	MaxSize int64
	// MinFree is how much of the file system must stay free; 0 means none.
	MinFree int64
	// MustExist makes opening fail ("cache dir X does not exist") instead
	// of creating the directory.
	MustExist bool
	// MaxOpenFiles bounds the entries kept open for reads; 0 means
	// DefaultMaxOpenFiles.
	MaxOpenFiles int
	// Logger receives eviction and degradation notices; nil means
	// slog.Default().
	Logger *slog.Logger
}

// Store is a directory of immutable entries addressed by key, shared by the
// processes that open it.
type Store struct {
	dir     string
	log     *slog.Logger
	maxOpen int
	ledger  *ledger
	// lmu orders this process's goroutines around the ledger flock.
	lmu sync.Mutex

	mu   sync.Mutex
	meta map[string]*meta     // what this process knows of the entries
	open map[string]*openFile // the fd cache
	lru  *list.List           // of *openFile, most recent first

	hits, misses, evictions atomic.Int64 // this process's
	failing                 atomic.Bool  // a write failed; logged once until one succeeds

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// meta is what a process knows of one entry.
type meta struct {
	size     int64 // of the file
	atime    int64 // last use seen by this process (or mtime), unix ns
	touched  int64 // when this process last wrote the file's mtime
	verified bool  // payload checksum known good
}

// Open opens the store in dir with no budget; see OpenWith.
func Open(dir string) (*Store, error) { return OpenWith(dir, Options{}) }

// OpenWith opens the store in dir (creating it, mode 0700, unless
// opts.MustExist), removes temporary files left behind by writers that
// died, recounts what the store holds, records the budget of opts if it
// sets one, evicts down to the budget in force, and starts its background
// eviction. A temporary file still being written by a live process is
// kept: writers hold an flock on it.
func OpenWith(dir string, opts Options) (*Store, error) {
	var abs string
	var err error
	if opts.MustExist {
		abs, err = existingDir(dir)
	} else {
		abs, err = absDir(dir)
	}
	if err != nil {
		return nil, err
	}
	for _, d := range []string{tmpDir, locksDir} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o700); err != nil {
			return nil, fmt.Errorf("open cache %s: %w", abs, err)
		}
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	maxOpen := opts.MaxOpenFiles
	if maxOpen <= 0 {
		maxOpen = DefaultMaxOpenFiles
	}
	s := &Store{
		dir: abs, log: log.With("cache", abs), maxOpen: maxOpen,
		meta: map[string]*meta{}, open: map[string]*openFile{}, lru: list.New(),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if err := s.removeStaleTemps(); err != nil {
		return nil, fmt.Errorf("open cache %s: %w", abs, err)
	}
	if s.ledger, err = openLedger(abs); err != nil {
		return nil, fmt.Errorf("open cache %s: %w", abs, err)
	}
	if err := s.withLedger(func(u *usage) error {
		if opts.MaxSize != 0 || opts.MinFree != 0 {
			u.MaxSize, u.MinFree = max(0, opts.MaxSize), max(0, opts.MinFree)
		}
		if err := s.rescanLocked(u); err != nil {
			return err
		}
		s.enforceLocked(u)
		return nil
	}); err != nil {
		s.ledger.close()
		return nil, fmt.Errorf("open cache %s: %w", abs, err)
	}
	go s.background()
	return s, nil
}

func absDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("open cache: empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("open cache %s: %w", dir, err)
	}
	return abs, nil
}

// Close stops the background work and closes cached fds. Entries stay.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		s.mu.Lock()
		for _, o := range s.open {
			s.dropOpenLocked(o)
		}
		s.mu.Unlock()
		s.ledger.close()
	})
	return nil
}

// Dir returns the absolute directory of the store.
func (s *Store) Dir() string { return s.dir }

// SetBudget records a new budget (a config reload) for every process
// sharing the store, and evicts down to it if needed.
func (s *Store) SetBudget(maxSize, minFree int64) error {
	err := s.withLedger(func(u *usage) error {
		u.MaxSize, u.MinFree = max(0, maxSize), max(0, minFree)
		s.enforceLocked(u)
		return nil
	})
	if err != nil {
		return fmt.Errorf("set cache budget: %w", err)
	}
	return nil
}

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
// also keeps "..", and the store's own files, out of reach).
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

// Get opens and verifies the entry key, or returns an error satisfying
// errors.Is(err, fs.ErrNotExist) when it is absent. A corrupt entry is
// removed and reported as ErrCorrupt.
func (s *Store) Get(key string) (*Entry, error) {
	p, err := s.Path(key)
	if err != nil {
		return nil, fmt.Errorf("cache get: %w", err)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("cache get %s: %w", key, err)
	}
	n, err := verifyFile(f)
	if err != nil {
		f.Close()
		if errors.Is(err, ErrCorrupt) {
			s.removeCorrupt(key, err)
		}
		return nil, fmt.Errorf("cache get %s: %w", key, err)
	}
	s.noteUse(key, headerSize+n, true)
	return &Entry{f: f, size: n}, nil
}

// Has reports whether the entry key exists (it may still fail verification
// when read).
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
	err = s.withLedger(func(u *usage) error {
		_, err := s.removeLocked(u, key, p)
		return err
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cache remove %s: %w", key, err)
	}
	return nil
}

// removeCorrupt drops an entry that failed verification.
func (s *Store) removeCorrupt(key string, why error) {
	s.log.Warn("removing corrupt cache entry", "key", key, "error", why)
	if err := s.Remove(key); err != nil {
		s.log.Warn("remove corrupt cache entry", "key", key, "error", err)
	}
}

// Put stores everything r yields as the entry key, atomically: a concurrent
// Get sees either nothing or the whole entry. If r fails, nothing is stored
// and its error is returned. Entries are immutable, so when two writers race
// the first publish wins and both succeed. When the budget or the file
// system leaves no room even after eviction, the error satisfies
// errors.Is(err, ErrNoSpace) and nothing is stored.
func (s *Store) Put(key string, r io.Reader) (int64, error) {
	p, err := s.Path(key)
	if err != nil {
		return 0, fmt.Errorf("cache put: %w", err)
	}
	n, err := s.put(key, p, r)
	if errors.Is(err, syscall.ENOSPC) {
		// The file system filled up under us (other users, or a min_free
		// of 0): evict what this entry needs and try once more.
		if sr, ok := r.(interface {
			io.ReadSeeker
			Size() int64
		}); ok {
			if rerr := s.reclaim(headerSize + sr.Size()); rerr == nil {
				if _, serr := sr.Seek(0, io.SeekStart); serr == nil {
					n, err = s.put(key, p, sr)
				}
			}
		}
	}
	if err != nil {
		s.noteFailure(key, err)
		return n, fmt.Errorf("cache put %s: %w", key, err)
	}
	if s.failing.CompareAndSwap(true, false) {
		s.log.Info("cache writable again: spans are cached")
	}
	return n, nil
}

// ErrNoSpace marks a Put refused because the budget (or the file system)
// has no room for the entry even after eviction.
var ErrNoSpace = errors.New("no room in the cache")

// noteFailure logs the first failed write of a run once, the others at
// debug level: under ENOSPC every read would otherwise log.
func (s *Store) noteFailure(key string, err error) {
	if s.failing.CompareAndSwap(false, true) {
		s.log.Warn("cannot write to the cache: serving reads uncached until a write succeeds", "key", key, "error", err)
		return
	}
	s.log.Debug("cache write failed", "key", key, "error", err)
}

func (s *Store) put(key, final string, r io.Reader) (n int64, err error) {
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
	// The header goes last, once length and checksum are known: a file
	// torn anywhere fails verification.
	if _, err := f.Write(make([]byte, headerSize)); err != nil {
		return 0, err
	}
	c := crc32.New(castagnoli)
	if n, err = io.Copy(io.MultiWriter(f, c), r); err != nil {
		return n, err
	}
	if _, err := f.WriteAt(encodeHeader(n, c.Sum32()), 0); err != nil {
		return n, err
	}
	// No fsync: a cold read waits for this Put, and the checksum, checked
	// by every process the first time it opens the entry (processes start
	// afresh after a power loss), already turns an entry that a crash left
	// short or zeroed into a miss. A killed process loses nothing: its
	// writes are in the page cache.
	if err := s.publish(key, final, tmp, headerSize+n); err != nil {
		return n, err
	}
	return n, f.Close()
}

// publish renames tmp to final under the ledger lock, after making room for
// it; when another writer published the entry first, tmp is dropped.
func (s *Store) publish(key, final, tmp string, size int64) error {
	parent := filepath.Dir(final)
	err := s.withLedger(func(u *usage) error {
		if _, err := os.Stat(final); err == nil {
			return os.Remove(tmp) // identical content is there already
		}
		// tmp's blocks are allocated already: they count as free for the
		// min_free check, since publishing does not allocate them again.
		if err := s.makeRoomLocked(u, size, size); err != nil {
			return err
		}
		if err := os.MkdirAll(parent, 0o700); err != nil {
			return err
		}
		if err := os.Rename(tmp, final); err != nil {
			return err
		}
		u.Used += size
		return nil
	})
	if err != nil {
		return err
	}
	s.noteUse(key, size, true)
	return nil
}

// withLedger runs fn with the ledger locked against every process and
// writes the usage back when fn changed it.
func (s *Store) withLedger(fn func(u *usage) error) error {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	if err := s.ledger.lock(); err != nil {
		return fmt.Errorf("lock cache ledger: %w", err)
	}
	defer s.ledger.unlock()
	u, err := s.ledger.read()
	if err != nil {
		return fmt.Errorf("read cache ledger: %w", err)
	}
	before := u
	ferr := fn(&u)
	if u != before {
		if err := s.ledger.write(u); err != nil {
			return errors.Join(ferr, fmt.Errorf("write cache ledger: %w", err))
		}
	}
	return ferr
}

// noteUse records that this process used (or wrote) the entry key.
func (s *Store) noteUse(key string, size int64, verified bool) {
	now := time.Now().UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.meta[key]
	if m == nil {
		m = &meta{touched: now}
		s.meta[key] = m
	}
	m.size, m.atime = size, now
	m.verified = m.verified || verified
}
