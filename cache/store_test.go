package cache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "c"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(s.Dir()); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("store dir: %v, %v", fi, err)
	}
	key := "sha256:0123abcd/layer"
	if _, err := s.Get(key); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Get of absent key: %v, want fs.ErrNotExist", err)
	}
	if s.Has(key) {
		t.Fatal("Has of absent key")
	}
	data := bytes.Repeat([]byte("clipd"), 100000)
	n, err := s.Put(key, bytes.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("Put: %d, %v", n, err)
	}
	f, err := s.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := io.ReadAll(f.Reader())
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("Get returned %d bytes (%v), want %d", len(got), err, len(data))
	}
	if !s.Has(key) {
		t.Fatal("Has after Put")
	}
	// Reopening keeps entries.
	s2, err := Open(s.Dir())
	if err != nil || !s2.Has(key) {
		t.Fatalf("reopen lost entry: %v", err)
	}
	if err := s2.Remove(key); err != nil || s2.Has(key) {
		t.Fatalf("Remove: %v", err)
	}
	if err := s2.Remove(key); err != nil {
		t.Fatalf("Remove of absent key: %v", err)
	}
}

func TestBadKeys(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{
		"", "/abs", "a/../b", "..", "a//b", "a/", ".tmp/x", "a b", "a\x00b",
		"ä", `a\b`, strings.Repeat("x", 2000),
	} {
		if _, err := s.Put(key, strings.NewReader("x")); err == nil {
			t.Errorf("Put(%q) succeeded", key)
		} else if !strings.Contains(err.Error(), "invalid cache key") {
			t.Errorf("Put(%q): %v does not say the key is invalid", key, err)
		}
		if _, err := s.Get(key); err == nil || errors.Is(err, fs.ErrNotExist) {
			t.Errorf("Get(%q): %v, want an invalid key error", key, err)
		}
	}
	// Nothing escaped the store.
	if _, err := os.Stat(filepath.Join(filepath.Dir(s.Dir()), "b")); err == nil {
		t.Error("a bad key wrote outside the store")
	}
}

func TestConcurrentPutSameKey(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 300000)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Put("k/v", bytes.NewReader(data)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	f, err := s.Get("k/v")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, _ := io.ReadAll(f.Reader())
	if !bytes.Equal(got, data) {
		t.Fatalf("entry has %d bytes, want %d", len(got), len(data))
	}
	tmps, _ := os.ReadDir(filepath.Join(s.Dir(), tmpDir))
	if len(tmps) != 0 {
		t.Fatalf("%d temporary files left", len(tmps))
	}
}

// slowReader yields data in small pieces so that readers have time to look.
type slowReader struct {
	data []byte
	step chan struct{}
}

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	<-r.step
	n := copy(p[:min(len(p), 1000)], r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestReaderNeverSeesPartialEntry(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789"), 10000)
	sr := &slowReader{data: data, step: make(chan struct{})}
	done := make(chan error)
	go func() {
		_, err := s.Put("e", sr)
		done <- err
	}()
	for i := 0; ; i++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			f, err := s.Get("e")
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(f.Reader())
			f.Close()
			if !bytes.Equal(got, data) {
				t.Fatalf("final entry has %d bytes", len(got))
			}
			return
		case sr.step <- struct{}{}:
		}
		if f, err := s.Get("e"); err == nil {
			got, _ := io.ReadAll(f.Reader())
			f.Close()
			if len(got) != len(data) {
				t.Fatalf("reader saw a partial entry of %d bytes after %d steps", len(got), i)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
}

type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, fmt.Errorf("source broke")
	}
	r.n--
	return copy(p, "partial"), nil
}

func TestFailedPutStoresNothing(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put("x/y", &failingReader{n: 3}); err == nil || !strings.Contains(err.Error(), "source broke") {
		t.Fatalf("Put: %v, want the reader's error", err)
	}
	if s.Has("x/y") {
		t.Fatal("failed Put left an entry")
	}
	tmps, _ := os.ReadDir(filepath.Join(s.Dir(), tmpDir))
	if len(tmps) != 0 {
		t.Fatalf("%d temporary files left", len(tmps))
	}
}

func TestOpenRemovesOnlyOrphanTemps(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(s.Dir(), tmpDir)
	orphan := filepath.Join(tmp, "put-orphan")
	if err := os.WriteFile(orphan, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	live, err := os.Create(filepath.Join(tmp, "put-live"))
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	if err := syscall.Flock(int(live.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphan); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("orphan temp file kept: %v", err)
	}
	if _, err := os.Stat(live.Name()); err != nil {
		t.Errorf("live temp file removed: %v", err)
	}
}
