package mount

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// opcodeCounter is a slog handler that counts the FUSE requests go-fuse's
// debug output reports ("rx 12: OPEN n5 ..."), by opcode. Requests for
// go-fuse's own epoll work-around file (node ^0, opened once at mount) are
// not the filesystem's and are left out.
type opcodeCounter struct {
	mu     sync.Mutex
	counts map[string]int
}

var rxLine = regexp.MustCompile(`^rx \d+: ([A-Z_]+) n(\d+)`)

const goFusePollHackNode = "18446744073709551615"

func (c *opcodeCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *opcodeCounter) WithAttrs([]slog.Attr) slog.Handler       { return c }
func (c *opcodeCounter) WithGroup(string) slog.Handler            { return c }
func (c *opcodeCounter) Handle(_ context.Context, r slog.Record) error {
	if m := rxLine.FindStringSubmatch(r.Message); m != nil && m[2] != goFusePollHackNode {
		c.mu.Lock()
		c.counts[m[1]]++
		c.mu.Unlock()
	}
	return nil
}

// snapshot returns the counts so far.
func (c *opcodeCounter) snapshot() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.counts))
	for k, v := range c.counts {
		out[k] = v
	}
	return out
}

// An image without any xattr answers EOPNOTSUPP (the kernel's own answer
// once told ENOSYS), and repeated opens, reads and listings keep working
// with zero-message opens and cached directories: the kernel sends OPEN,
// FLUSH, GETXATTR and LISTXATTR at most once per mount, no READDIR for a
// listing it has cached, and READLINK once per symlink.
func TestNoXattrsAndCachedOpens(t *testing.T) {
	f := newFixture(t)
	for _, n := range f.a.Nodes {
		n.Xattrs = nil
	}
	ops := &opcodeCounter{counts: map[string]int{}}
	_, mp := mountFixture(t, f.a, f.layers, Options{Debug: true, Logger: slog.New(ops)})
	for i := 0; i < 3; i++ {
		if _, err := unix.Llistxattr(mp, make([]byte, 100)); !errors.Is(err, unix.ENOTSUP) {
			t.Fatalf("llistxattr on an image without xattrs: %v, want EOPNOTSUPP", err)
		}
		if _, err := unix.Lgetxattr(mp, "user.x", make([]byte, 100)); !errors.Is(err, unix.ENOTSUP) {
			t.Fatalf("lgetxattr on an image without xattrs: %v, want EOPNOTSUPP", err)
		}
	}
	var afterFirst map[string]int
	for round := 0; round < 3; round++ {
		for p, want := range f.content {
			got, err := os.ReadFile(filepath.Join(mp, p))
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("round %d: %s: %v", round, p, err)
			}
		}
		first, err := os.ReadDir(mp)
		if err != nil || len(first) == 0 {
			t.Fatalf("readdir: %v", err)
		}
		again, _ := os.ReadDir(mp)
		if len(again) != len(first) {
			t.Fatalf("cached listing has %d entries, first had %d", len(again), len(first))
		}
		if _, err := os.Readlink(mp + "/sym"); err != nil {
			t.Fatalf("readlink: %v", err)
		}
		if round == 0 {
			afterFirst = ops.snapshot()
		}
	}
	counts := ops.snapshot()
	t.Logf("FUSE requests: %v", counts)
	// Counted at all: the first open of a file did reach the filesystem.
	if counts["OPEN"] != 1 || counts["LOOKUP"] == 0 {
		t.Errorf("OPEN sent %d times, LOOKUP %d: want OPEN once (answered ENOSYS), then never", counts["OPEN"], counts["LOOKUP"])
	}
	for _, op := range []string{"FLUSH", "GETXATTR", "LISTXATTR"} {
		if counts[op] > 1 {
			t.Errorf("%s sent %d times, want at most once (answered ENOSYS)", op, counts[op])
		}
	}
	if counts["READLINK"] != 1 {
		t.Errorf("READLINK sent %d times, want once: the kernel caches symlink targets", counts["READLINK"])
	}
	if counts["RELEASE"] != 0 {
		t.Errorf("RELEASE sent %d times after zero-message opens, want none", counts["RELEASE"])
	}
	for _, op := range []string{"READDIR", "READDIRPLUS"} {
		if counts[op] != afterFirst[op] {
			t.Errorf("%s sent %d times after the first round (%d then), want the cached listing", op, counts[op]-afterFirst[op], afterFirst[op])
		}
	}
}
