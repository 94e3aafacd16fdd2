package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// ledgerName is the file that records, for every process sharing the store,
// the bytes in use, the evictions so far and the budget.
const ledgerName = ".ledger"

// usage is the content of the ledger. The budget lives there too, so that
// every process sharing the store enforces the one the daemon configured
// (and a reload reaches them all) without being told.
type usage struct {
	Used      int64 // bytes of published entry files (headers included)
	Evictions int64 // entries evicted since the store was created
	MaxSize   int64 // budget; 0: none
	MinFree   int64 // free space to keep on the file system
}

const ledgerSize = 32

// ledger is one process's handle on the shared ledger file. Every change is
// made under an exclusive flock on it; the flock excludes other processes
// only (this process holds it through one fd), so Store.lmu orders this
// process's goroutines around it.
type ledger struct {
	f *os.File
}

func openLedger(dir string) (*ledger, error) {
	f, err := os.OpenFile(filepath.Join(dir, ledgerName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	return &ledger{f: f}, nil
}

func (l *ledger) lock() error {
	for {
		err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

func (l *ledger) unlock() { _ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN) }

func (l *ledger) read() (usage, error) { return readUsage(l.f) }

func readUsage(f *os.File) (usage, error) {
	b := make([]byte, ledgerSize)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return usage{}, err
	}
	if n < len(b) {
		return usage{}, nil // new (or never written) ledger
	}
	get := func(i int) int64 { return max(0, int64(binary.LittleEndian.Uint64(b[8*i:]))) }
	return usage{Used: get(0), Evictions: get(1), MaxSize: get(2), MinFree: get(3)}, nil
}

// write records u. A single 32-byte pwrite cannot tear in practice; the
// usage is corrected by the next rescan anyway.
func (l *ledger) write(u usage) error {
	b := make([]byte, ledgerSize)
	for i, v := range []int64{u.Used, u.Evictions, u.MaxSize, u.MinFree} {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(max(0, v)))
	}
	_, err := l.f.WriteAt(b, 0)
	return err
}

func (l *ledger) close() error { return l.f.Close() }

// ReadUsage returns the bytes in use and the evictions recorded by the
// store in dir, without opening it (for metrics and the CLI). A store that
// was never used reports zeros.
func ReadUsage(dir string) (used, evictions int64, err error) {
	u, err := readLedger(dir)
	return u.Used, u.Evictions, err
}

// readLedger reads the ledger of the store in dir without locking or
// creating it; a missing ledger reads as zeros.
func readLedger(dir string) (usage, error) {
	f, err := os.Open(filepath.Join(dir, ledgerName))
	if errors.Is(err, os.ErrNotExist) {
		return usage{}, nil
	}
	if err != nil {
		return usage{}, fmt.Errorf("read cache usage %s: %w", dir, err)
	}
	defer f.Close()
	u, err := readUsage(f)
	if err != nil {
		return usage{}, fmt.Errorf("read cache usage %s: %w", dir, err)
	}
	return u, nil
}
