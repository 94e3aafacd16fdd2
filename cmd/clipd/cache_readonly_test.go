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

// Listing the cache with a config whose budget differs from the live one
// leaves the ledger (and so the budget every process enforces) and the
// entries as they were.
func TestCacheLsLeavesBudgetAlone(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	s, err := cache.OpenWith(dir, cache.Options{MaxSize: 1 << 20}) // the daemon's budget
	if err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		if _, err := s.Put(fmt.Sprintf("sha256:aa/span-1024/%d", i), bytes.NewReader(make([]byte, 1024))); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	ledger := filepath.Join(dir, ".ledger")
	before, err := os.ReadFile(ledger)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[cache]\ndir = %q\nmax_size = \"2000B\"\nmin_free = \"0B\"\n", dir)), 0o644)

	code, out, errs := clipd(t, "--config", cfg, "cache", "ls", "--json")
	if code != 0 {
		t.Fatalf("cache ls: %d %s", code, errs)
	}
	var l cacheListing
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatal(err)
	}
	if l.Entries != 6 || l.MaxSize != 1<<20 {
		t.Fatalf("cache ls --json: %s; want 6 entries and the recorded budget of 1 MiB", out)
	}
	after, err := os.ReadFile(ledger)
	if err != nil || !bytes.Equal(before, after) {
		t.Fatalf("ledger changed by cache ls: %x, was %x (%v)", after, before, err)
	}
	list, err := os.ReadDir(filepath.Join(dir, "sha256:aa", "span-1024"))
	if err != nil || len(list) != 6 {
		t.Fatalf("%d entries left after cache ls (%v), want 6", len(list), err)
	}
}

// The cache commands never create the cache directory, whatever flags they
// are given: --socket names the daemon, which they do not use.
func TestCacheCommandsDoNotCreateDir(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "var", "cache", "clipd")
	cfg := filepath.Join(tmp, "config.toml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("[cache]\ndir = %q\n", dir)), 0o644)
	want := "cache dir " + dir + " does not exist"
	for _, args := range [][]string{
		{"--socket", filepath.Join(tmp, "clipd.sock"), "--config", cfg, "cache", "ls"},
		{"--config", cfg, "cache", "ls", "--json"},
		{"--config", cfg, "cache", "prune"},
		{"--config", cfg, "cache", "ls", "--dir", dir},
	} {
		code, _, errs := clipd(t, args...)
		if code == 0 || !strings.Contains(errs, want) {
			t.Errorf("clipd %s: exit %d, stderr %q; want an error %q", strings.Join(args, " "), code, errs, want)
		}
		if _, err := os.Stat(filepath.Join(tmp, "var")); !os.IsNotExist(err) {
			t.Fatalf("clipd %s created the cache directory (%v)", strings.Join(args, " "), err)
		}
	}
	code, out, _ := clipd(t, "cache", "--help")
	if code != 0 || !strings.Contains(out, "--socket is not used") || !strings.Contains(out, "cache.dir") {
		t.Fatalf("cache --help does not say what it reads: %q", out)
	}
}
