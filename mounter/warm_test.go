package mounter

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// TestWarmSpare: a request that comes during the warm-up stops it and gets
// the open cache; one whose cache cannot be opened gets the error, naming
// the cache, instead of a mount.
func TestWarmSpare(t *testing.T) {
	w := WarmSpare(Config{CacheDir: filepath.Join(t.TempDir(), "cache")}, 1<<30, nil)
	t.Cleanup(func() { debug.SetGCPercent(w.gcPercent) })
	if got := debug.SetGCPercent(-1); got != -1 {
		t.Errorf("collector at %d%% during the warm-up, want off", got)
	}
	store, err := w.Finish() // long before 1 GiB is touched
	if err != nil || store == nil {
		t.Fatalf("Finish: %v, %v", store, err)
	}
	store.Close()

	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	bad := WarmSpare(Config{CacheDir: file}, 0, nil)
	if _, err := bad.Finish(); err == nil || !strings.Contains(err.Error(), "open cache "+file) {
		t.Fatalf("Finish with a file as the cache: %v, want an error naming it", err)
	}
}
