package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/profile"
)

// TestWaitAndCopyProfiles stores a profile the way a serving process does
// (profile.Store), then checks that waitProfile counts its spans, that
// copyProfiles copies it without the store's lock file, and that an empty
// store is 0 spans after the wait, not an error.
func TestWaitAndCopyProfiles(t *testing.T) {
	src := filepath.Join(t.TempDir(), profile.Dir)
	if n, err := waitProfile(context.Background(), src, 100*time.Millisecond); n != 0 || err != nil {
		t.Fatalf("no store: %d spans, %v; want 0, nil", n, err)
	}
	st, err := profile.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	d := func(c string) string { return "sha256:" + strings.Repeat(c, 64) }
	p := &profile.Profile{Version: profile.Version, Image: d("a"), Recordings: 1, Updated: time.Now(), Layers: []profile.Layer{
		{Digest: d("b"), SpanSize: 1 << 20, SpanCount: 10, Spans: []profile.Span{{Index: 3, Seen: 1, Last: 1}, {Index: 1, Seen: 1, Last: 1}}},
		{Digest: d("c"), SpanSize: 1 << 20, SpanCount: 4, Spans: []profile.Span{{Index: 0, Seen: 1, Last: 1}}},
	}}
	if err := st.Put(p); err != nil {
		t.Fatal(err)
	}
	n, err := waitProfile(context.Background(), src, time.Second)
	if n != 3 || err != nil {
		t.Fatalf("waitProfile = %d, %v; want 3 spans", n, err)
	}
	dst := t.TempDir()
	if err := copyProfiles(src, dst); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dst)
	if len(ents) != 1 || !strings.HasSuffix(ents[0].Name(), ".json") {
		t.Fatalf("copied %v, want the one profile", ents)
	}
	if n, err := waitProfile(context.Background(), dst, time.Second); n != 3 || err != nil {
		t.Errorf("the copy: %d spans, %v", n, err)
	}
	// A corrupt profile is an error, not a silent empty profile.
	if err := os.WriteFile(filepath.Join(dst, ents[0].Name()), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := waitProfile(context.Background(), dst, time.Second); err == nil {
		t.Error("a corrupt profile was accepted")
	}
}

// TestProcMem reads this process's own VmHWM and VmRSS.
func TestProcMem(t *testing.T) {
	hwm, rss := procMem(os.Getpid())
	if rss <= 0 || hwm < rss {
		t.Errorf("VmHWM %d, VmRSS %d", hwm, rss)
	}
	if h, r := procMem(-1); h != 0 || r != 0 {
		t.Errorf("no process: %d, %d", h, r)
	}
}
