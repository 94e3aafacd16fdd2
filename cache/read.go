package cache

import (
	"container/list"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// openFile is one entry in the fd cache.
type openFile struct {
	key     string
	f       *os.File
	size    int64 // payload length
	refs    int   // reads in progress
	dropped bool  // out of the cache; closed when refs reaches 0
	elem    *list.Element
}

// ReadAt reads the payload of entry key at off, like io.ReaderAt. A hit on
// an entry already open costs one pread and no lock held across I/O; the
// first read of an entry by this process opens and verifies it. The error
// satisfies errors.Is(err, fs.ErrNotExist) when the entry is absent and
// errors.Is(err, ErrCorrupt) when it failed verification (it is removed).
func (s *Store) ReadAt(key string, p []byte, off int64) (int, error) {
	o, err := s.acquire(key)
	if err != nil {
		s.misses.Add(1)
		return 0, err
	}
	defer s.release(o)
	if off < 0 {
		return 0, fmt.Errorf("cache read %s: negative offset %d", key, off)
	}
	if off >= o.size {
		return 0, io.EOF
	}
	want := len(p)
	p = p[:min(int64(want), o.size-off)]
	n, err := o.f.ReadAt(p, headerSize+off)
	if err != nil {
		return n, fmt.Errorf("cache read %s: %w", key, err)
	}
	s.hits.Add(1)
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// acquire returns the open entry key with a reference taken.
func (s *Store) acquire(key string) (*openFile, error) {
	now := time.Now().UnixNano()
	s.mu.Lock()
	if o := s.open[key]; o != nil {
		o.refs++
		s.lru.MoveToFront(o.elem)
		touch := false
		if m := s.meta[key]; m != nil {
			m.atime = now
			if now-m.touched > int64(touchEvery) {
				m.touched, touch = now, true
			}
		}
		s.mu.Unlock()
		if touch {
			s.touch(key)
		}
		return o, nil
	}
	verified := false
	if m := s.meta[key]; m != nil {
		verified = m.verified
	}
	s.mu.Unlock()

	p, err := s.Path(key)
	if err != nil {
		return nil, fmt.Errorf("cache read: %w", err)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("cache read %s: %w", key, err)
	}
	size, err := s.check(f, verified)
	if err != nil {
		f.Close()
		if errors.Is(err, ErrCorrupt) {
			s.removeCorrupt(key, err)
		}
		return nil, fmt.Errorf("cache read %s: %w", key, err)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.meta[key]
	if m == nil {
		m = &meta{touched: now}
		s.meta[key] = m
	}
	m.size, m.atime, m.verified = headerSize+size, now, true
	if o := s.open[key]; o != nil { // another reader opened it meanwhile
		f.Close()
		o.refs++
		return o, nil
	}
	o := &openFile{key: key, f: f, size: size, refs: 1}
	o.elem = s.lru.PushFront(o)
	s.open[key] = o
	for s.lru.Len() > s.maxOpen {
		s.dropOpenLocked(s.lru.Back().Value.(*openFile))
	}
	return o, nil
}

// check validates a freshly opened entry: the whole payload the first time
// this process sees the entry, only header and length when it verified (or
// wrote) it before.
func (s *Store) check(f *os.File, verified bool) (int64, error) {
	if !verified {
		return verifyFile(f)
	}
	n, _, err := readHeader(f)
	return n, err
}

func (s *Store) release(o *openFile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o.refs--
	if o.dropped && o.refs == 0 {
		o.f.Close()
	}
}

// dropOpenLocked takes o out of the fd cache; its fd is closed by the last
// reader.
func (s *Store) dropOpenLocked(o *openFile) {
	if o.dropped {
		return
	}
	o.dropped = true
	s.lru.Remove(o.elem)
	delete(s.open, o.key)
	if o.refs == 0 {
		o.f.Close()
	}
}

// touch records a use in the entry's mtime so that other processes' LRU
// order sees it.
func (s *Store) touch(key string) {
	p, err := s.Path(key)
	if err != nil {
		return
	}
	now := time.Now()
	if err := os.Chtimes(p, now, now); err != nil {
		s.log.Debug("touch cache entry", "key", key, "error", err)
	}
}

// sweepDeleted closes cached fds whose files another process evicted, so
// that their blocks are freed.
func (s *Store) sweepDeleted() {
	s.mu.Lock()
	held := make([]*openFile, 0, len(s.open))
	for _, o := range s.open {
		o.refs++
		held = append(held, o)
	}
	s.mu.Unlock()
	var gone []*openFile
	for _, o := range held {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(o.f.Fd()), &st); err == nil && st.Nlink == 0 {
			gone = append(gone, o)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range gone {
		s.dropOpenLocked(o)
		delete(s.meta, o.key)
	}
	for _, o := range held {
		o.refs--
		if o.dropped && o.refs == 0 {
			o.f.Close()
		}
	}
}
