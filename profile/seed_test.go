package profile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSeed: a seed is stored only where the node has no profile that
// decodes: its own profile wins, a corrupt file is replaced.
func TestSeed(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a := archive(digest(1))
	seed, _ := Merge(nil, rec(a, touch(0, 1, 1)), time.Now())
	if ok, err := s.Seed(seed); !ok || err != nil {
		t.Fatalf("seed of an empty store: %v %v", ok, err)
	}
	own, _ := s.Merge(rec(a, touch(0, 2, 1)))
	if ok, err := s.Seed(seed); ok || err != nil {
		t.Fatalf("seed over the node's profile: %v %v", ok, err)
	}
	if p, _ := s.Load(digest(1)); p.Recordings != own.Recordings {
		t.Fatalf("the node's profile was replaced")
	}
	path := filepath.Join(s.Dir(), strings.Replace(digest(1), ":", "-", 1)+".json")
	if err := os.WriteFile(path, []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Seed(seed); !ok || err != nil {
		t.Fatalf("seed over a corrupt file: %v %v", ok, err)
	}
	bad := *seed
	bad.Image = "x"
	if _, err := s.Seed(&bad); err == nil {
		t.Fatal("invalid seed stored")
	}
}
