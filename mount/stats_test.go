package mount

import (
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestReadErrorFigures: reads that fail count in the mount's figures with
// their last cause and time, reach the observer as EIO, and are logged
// once per interval however many there are.
func TestReadErrorFigures(t *testing.T) {
	f := newFixture(t)
	log, logs := captureLog()
	var mu sync.Mutex
	seen := map[syscall.Errno]int{}
	observe := func(d time.Duration, errno syscall.Errno) {
		mu.Lock()
		defer mu.Unlock()
		seen[errno]++
	}
	m, mp := mountFixture(t, f.a, f.layers, Options{Logger: log, ObserveRead: observe})
	if st := m.Stats(); st.ReadErrors != 0 || st.LastError != "" || !st.LastErrorTime.IsZero() || !st.FirstRead.IsZero() {
		t.Fatalf("figures before any read: %+v", st)
	}
	before := time.Now()
	const tries = 5
	for range tries {
		if _, err := os.ReadFile(mp + "/broken"); !errors.Is(err, syscall.EIO) {
			t.Fatalf("read of a file in a failing layer: %v, want EIO", err)
		}
	}
	if _, err := os.ReadFile(mp + "/small"); err != nil {
		t.Fatal(err)
	}
	st := m.Stats()
	if st.ReadErrors < tries || !strings.Contains(st.LastError, "registry unreachable") ||
		st.LastErrorTime.Before(before) || st.FirstRead.Before(before) {
		t.Errorf("figures after %d failed reads: %+v", tries, st)
	}
	mu.Lock()
	if seen[syscall.EIO] != int(st.ReadErrors) || seen[0] < 1 {
		t.Errorf("observer saw %v, want %d EIO and a success", seen, st.ReadErrors)
	}
	mu.Unlock()
	if n := strings.Count(logs.String(), `"msg":"read file content"`); n != 1 {
		t.Errorf("%d failures logged within %s, want 1:\n%s", n, readLogEvery, logs.String())
	}
}
