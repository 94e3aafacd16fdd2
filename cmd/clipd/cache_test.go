package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clipd/clipd/cache"
)

func TestCacheLsAndPrune(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	s, err := cache.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		for _, l := range []string{"sha256:aa", "sha256:bb"} {
			if _, err := s.Put(fmt.Sprintf("%s/span-1024/%d", l, i), bytes.NewReader(make([]byte, 1024))); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.Close()
	// A budget of 4 entries: prune evicts down to it.
	cfg := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[cache]\ndir = %q\nmax_size = \"4200B\"\nmin_free = \"0B\"\n", dir)), 0o644)

	code, out, errs := clipd(t, "--config", cfg, "cache", "ls", "--json", "--dir", dir)
	if code != 0 {
		t.Fatalf("cache ls: %d %s", code, errs)
	}
	var l cacheListing
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatal(err)
	}
	// Listing changes nothing: every entry, and the budget recorded (none).
	if l.Entries != 6 || l.MaxSize != 0 || len(l.Layers) != 2 {
		t.Fatalf("cache ls --json: %s", out)
	}
	code, out, errs = clipd(t, "--config", cfg, "cache", "ls")
	if code != 0 || !strings.Contains(out, "sha256:bb") || !strings.Contains(out, "6 entries") {
		t.Fatalf("cache ls: %d %q %s", code, out, errs)
	}
	// prune records the config's budget and evicts down to its low-water
	// mark: 3 entries of 1056 bytes.
	code, out, errs = clipd(t, "--config", cfg, "cache", "prune")
	if code != 0 || !strings.Contains(out, "evicted 3 entries") {
		t.Fatalf("cache prune: %d %q %s", code, out, errs)
	}
	code, out, errs = clipd(t, "--config", cfg, "cache", "prune", "--all")
	if code != 0 || !strings.Contains(out, "evicted 3 entries") {
		t.Fatalf("cache prune --all: %d %q %s", code, out, errs)
	}
	if used, _, _ := cache.ReadUsage(dir); used != 0 {
		t.Fatalf("%d bytes left after prune --all", used)
	}
	if code, _, errs := clipd(t, "cache", "frob"); code != exitUsage || !strings.Contains(errs, "unknown subcommand") {
		t.Fatalf("cache frob: %d %s", code, errs)
	}
}
