package cache

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// twoStores opens two Stores on one fresh directory, as two processes
// sharing a cache would, and closes them when t ends.
func twoStores(t *testing.T) (dir string, a, b *Store) {
	t.Helper()
	dir = t.TempDir()
	var err error
	if a, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if b, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return dir, a, b
}

// Acquire reports what is missing under the lock: an entry another process
// published (or a corrupt one, which it removes) is sorted out there, and a
// present entry is left open so that reading it opens no file.
func TestAcquireReportsMissingUnderLock(t *testing.T) {
	dir, a, b := twoStores(t)
	data := payload(3, 5000)
	for _, k := range []string{"l/present", "l/corrupt"} {
		if _, err := b.Put(k, bytes.NewReader(data)); err != nil {
			t.Fatal(err)
		}
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "l/corrupt"))
	raw[headerSize+10] ^= 1
	os.WriteFile(filepath.Join(dir, "l/corrupt"), raw, 0o600)

	keys := []string{"l/absent", "l/present", "l/corrupt"}
	missing, release, err := a.Acquire(context.Background(), keys...)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(missing, []int{0, 2}) {
		t.Fatalf("missing %v, want [0 2] (absent and corrupt)", missing)
	}
	if b.Has("l/corrupt") {
		t.Fatal("corrupt entry kept")
	}
	if st := a.Stats(); st.OpenFiles != 1 {
		t.Fatalf("%d entries open after Acquire, want the present one", st.OpenFiles)
	}
	// The present entry reads back while its file is gone: it is open.
	os.Remove(filepath.Join(dir, "l/present"))
	got := make([]byte, len(data))
	if _, err := a.ReadAt("l/present", got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read of the entry Acquire found: %v", err)
	}

	// The other process waits for the locks.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := b.Acquire(ctx, "l/corrupt"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire while another holds the lock: %v, want a deadline error", err)
	}
	if _, err := a.Put("l/corrupt", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	release()
	missing, release, err = b.Acquire(context.Background(), "l/corrupt", "l/absent")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if !slices.Equal(missing, []int{1}) {
		t.Fatalf("after the other process stored l/corrupt: missing %v, want [1]", missing)
	}
}

// A process whose fetch is stuck holds its locks; another process stops
// waiting once the holder has made no progress for the bound, and fetches
// the entry itself; the first publisher wins. A holder that keeps touching
// its keys is waited for.
func TestAcquireWithinStopsWaiting(t *testing.T) {
	_, a, b := twoStores(t)
	missing, releaseA, err := a.Acquire(context.Background(), "l/stuck")
	if err != nil || !slices.Equal(missing, []int{0}) {
		t.Fatalf("first Acquire: %v %v", missing, err)
	}
	// A holder making progress for 600ms, then done.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 12 {
			time.Sleep(50 * time.Millisecond)
			a.Touch("l/stuck")
		}
		if _, err := a.Put("l/stuck", bytes.NewReader(payload(5, 100))); err != nil {
			t.Error(err)
		}
		releaseA()
	}()
	start := time.Now()
	missing, releaseB, err := b.AcquireWithin(context.Background(), 200*time.Millisecond, "l/stuck")
	if err != nil || len(missing) != 0 || time.Since(start) < 500*time.Millisecond {
		t.Fatalf("waiting on a holder making progress: missing %v, %v after %s, want the holder's entry", missing, err, time.Since(start))
	}
	releaseB()
	<-done
	b.Remove("l/stuck")

	// A holder stuck.
	missing, releaseA, err = a.Acquire(context.Background(), "l/stuck")
	if err != nil || !slices.Equal(missing, []int{0}) {
		t.Fatalf("Acquire again: %v %v", missing, err)
	}
	defer releaseA()
	start = time.Now()
	missing, releaseB, err = b.AcquireWithin(context.Background(), 200*time.Millisecond, "l/stuck")
	waited := time.Since(start)
	if err != nil {
		t.Fatalf("bounded Acquire while another holds the lock: %v", err)
	}
	defer releaseB()
	if !slices.Equal(missing, []int{0}) {
		t.Fatalf("missing %v, want [0]", missing)
	}
	if waited < 200*time.Millisecond || waited > time.Second {
		t.Fatalf("bounded Acquire returned after %s, want 200ms-1s", waited)
	}
	data := payload(4, 3000)
	if _, err := b.Put("l/stuck", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	// The stuck process publishes late: its copy is dropped.
	if _, err := a.Put("l/stuck", bytes.NewReader(payload(4, 3000))); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if _, err := a.ReadAt("l/stuck", got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read after both published: %v", err)
	}

	// The caller's own deadline still ends a wait as an error.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, _, err := b.AcquireWithin(ctx, time.Minute, "l/stuck"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AcquireWithin past the caller's deadline: %v, want a deadline error", err)
	}
}
