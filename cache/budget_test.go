package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func payload(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// diskUsage sums the entry files as a rescan would count them.
func diskUsage(t *testing.T, s *Store) int64 {
	t.Helper()
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range list {
		n += e.Size
	}
	return n
}

// Two stores on one directory stand for two processes: each has its own
// ledger fd and its own view, so flock and the ledger are what keep them
// within one budget.
func TestBudgetAcrossStores(t *testing.T) {
	dir := t.TempDir()
	const entry = 64 << 10
	const budget = 10 * (entry + headerSize)
	a, err := OpenWith(dir, Options{MaxSize: budget})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(dir) // adopts the budget a recorded in the store
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for i := range 60 {
		s := a
		if i%2 == 1 {
			s = b
		}
		key := fmt.Sprintf("sha256:x/span-%d/%d", entry, i)
		if _, err := s.Put(key, bytes.NewReader(payload(uint64(i), entry))); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
		used, _, err := ReadUsage(dir)
		if err != nil {
			t.Fatal(err)
		}
		if disk := diskUsage(t, a); used != disk || disk > budget {
			t.Fatalf("after put %d: ledger %d, disk %d, budget %d", i, used, disk, budget)
		}
	}
	// Whatever survived reads back intact, through either store.
	list, _ := a.List()
	if len(list) < 5 {
		t.Fatalf("only %d entries kept under a budget of 10", len(list))
	}
	for _, e := range list {
		var i, sz int
		if _, err := fmt.Sscanf(e.Key, "sha256:x/span-%d/%d", &sz, &i); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, entry)
		if _, err := b.ReadAt(key(e.Key), got, 0); err != nil || !bytes.Equal(got, payload(uint64(i), entry)) {
			t.Fatalf("entry %s: %v or wrong bytes", e.Key, err)
		}
	}
	if st := a.Stats(); st.Evictions < 50 {
		t.Fatalf("stats: %+v, want ≥ 50 evictions", st)
	}
}

func key(k string) string { return k }

func TestLeastRecentlyUsedGoesFirst(t *testing.T) {
	const entry = 1000
	s, err := OpenWith(t.TempDir(), Options{MaxSize: 4 * (entry + headerSize)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put := func(k string) {
		t.Helper()
		if _, err := s.Put(k, bytes.NewReader(payload(1, entry))); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		put(k)
		time.Sleep(time.Millisecond)
	}
	if _, err := s.ReadAt("a", make([]byte, 10), 0); err != nil {
		t.Fatal(err)
	}
	put("e")
	if !s.Has("a") || s.Has("b") || !s.Has("e") {
		t.Fatalf("after a hit on a and a put of e: a %v b %v e %v; want b evicted", s.Has("a"), s.Has("b"), s.Has("e"))
	}
}

func TestCorruptEntriesAreRemoved(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	data := payload(7, 100000)
	for _, k := range []string{"flip", "short", "old", "empty"} {
		if _, err := s.Put(k, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	p := func(k string) string { return filepath.Join(dir, k) }
	b, _ := os.ReadFile(p("flip"))
	b[headerSize+5000] ^= 1
	os.WriteFile(p("flip"), b, 0o600)
	os.Truncate(p("short"), headerSize+50000)
	os.WriteFile(p("old"), data, 0o600) // an entry without a header
	os.Truncate(p("empty"), 0)

	s2, err := Open(dir) // a process that has not seen them yet
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for _, k := range []string{"flip", "short", "old", "empty"} {
		_, err := s2.ReadAt(k, make([]byte, 10), 0)
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: ReadAt: %v, want ErrCorrupt", k, err)
		}
		if s2.Has(k) {
			t.Errorf("%s: corrupt entry kept", k)
		}
		if _, err := s2.ReadAt(k, make([]byte, 10), 0); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: second ReadAt: %v, want not exist", k, err)
		}
	}
	if used, _, _ := ReadUsage(dir); used != 0 {
		t.Errorf("ledger says %d bytes used after removing every entry", used)
	}
}

func TestReaderKeepsEvictedEntry(t *testing.T) {
	dir := t.TempDir()
	a, _ := Open(dir)
	defer a.Close()
	b, _ := Open(dir)
	defer b.Close()
	data := payload(3, 50000)
	if _, err := a.Put("k", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 100)
	if _, err := a.ReadAt("k", got, 1000); err != nil || !bytes.Equal(got, data[1000:1100]) {
		t.Fatalf("ReadAt: %v", err)
	}
	if n, _, err := b.Prune(true); err != nil || n != 1 {
		t.Fatalf("Prune(all): %d, %v", n, err)
	}
	// a's fd still reads the deleted file: correct bytes, no error.
	if _, err := a.ReadAt("k", got, 2000); err != nil || !bytes.Equal(got, data[2000:2100]) {
		t.Fatalf("ReadAt after eviction by another store: %v", err)
	}
	a.sweepDeleted()
	if _, err := a.ReadAt("k", got, 0); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadAt after sweep: %v, want not exist", err)
	}
	if st := a.Stats(); st.OpenFiles != 0 || st.Evictions != 1 {
		t.Fatalf("stats after sweep: %+v", st)
	}
}

func TestLockExcludesOtherStores(t *testing.T) {
	dir := t.TempDir()
	a, _ := Open(dir)
	defer a.Close()
	b, _ := Open(dir)
	defer b.Close()
	unlock, err := a.lockKeys(context.Background(), "x/1", "x/2")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := b.lockKeys(ctx, "x/2"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lockKeys while held: %v, want a deadline error", err)
	}
	done := make(chan error)
	go func() {
		u, err := b.lockKeys(context.Background(), "x/2", "x/1")
		if err == nil {
			u()
		}
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestLedgerCorrectedOnOpen(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	s.Put("a", bytes.NewReader(payload(1, 5000)))
	s.Close()
	l, _ := openLedger(dir)
	l.write(usage{Used: 1 << 40, Evictions: 3}) // as if a process died mid-update
	l.close()
	s, _ = Open(dir)
	defer s.Close()
	if used, ev, _ := ReadUsage(dir); used != 5000+headerSize || ev != 3 {
		t.Fatalf("ledger after reopen: %d used, %d evictions", used, ev)
	}
}

// mountTmpfs mounts a tmpfs of size bytes for the test (root only).
func mountTmpfs(t *testing.T, size int64) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("mount tmpfs (tests run as root): %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

func TestFullFileSystem(t *testing.T) {
	dir := mountTmpfs(t, 1<<20)
	s, err := OpenWith(dir, Options{MaxSize: 1 << 30}) // the budget is not what stops it
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = s.Put("big", bytes.NewReader(payload(1, 2<<20)))
	if !errors.Is(err, syscall.ENOSPC) && !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put larger than the file system: %v", err)
	}
	if tmps, _ := os.ReadDir(filepath.Join(dir, tmpDir)); len(tmps) != 0 || s.Has("big") {
		t.Fatalf("failed put left %d temporary files (entry kept: %v)", len(tmps), s.Has("big"))
	}
	// Entries that fit keep coming: older ones are evicted to make room.
	for i := range 10 {
		if _, err := s.Put(fmt.Sprintf("e/%d", i), bytes.NewReader(payload(uint64(i), 300<<10))); err != nil {
			t.Fatalf("put %d on a full file system: %v", i, err)
		}
	}
	if st := s.Stats(); st.Evictions == 0 || st.Used > 1<<20 {
		t.Fatalf("stats: %+v", st)
	}
	// min_free larger than the file system: nothing fits, nothing breaks.
	s.SetBudget(1<<30, 2<<20)
	if _, err := s.Put("x", bytes.NewReader(payload(1, 10))); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put with min_free > file system: %v, want ErrNoSpace", err)
	}
}
