package indexstore

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"
)

func digest(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

func put(t *testing.T, s *Store, d string, n int, used time.Time) string {
	t.Helper()
	p, err := s.Put(d, Meta{Image: "reg/x:" + d[7:9], Source: SourceBuilt}, func(f *os.File) error {
		_, err := f.Write(make([]byte, n))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, used, used); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPutOpenList(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := put(t, s, digest('a'), 10, time.Now())
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 10 {
		t.Fatalf("stored file %s: %v %v", p, fi, err)
	}
	if !strings.HasSuffix(p, "/sha256-"+strings.Repeat("a", 64)+".clip") {
		t.Errorf("path %s", p)
	}
	f, err := s.Open(digest('a'))
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := s.Open(digest('b')); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Open of a missing index: %v, want ErrNotExist", err)
	}
	list, err := s.List()
	if err != nil || len(list) != 1 || list[0].Digest != digest('a') || list[0].Size != 10 || list[0].Meta.Source != SourceBuilt {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if _, err := s.Path("sha256:../../etc"); err == nil {
		t.Error("Path accepted a digest with a path in it")
	}
}

func TestPutFailureLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir)
	_, err := s.Put(digest('c'), Meta{}, func(f *os.File) error {
		f.Write([]byte("partial"))
		return errors.New("boom")
	})
	if err == nil {
		t.Fatal("Put did not fail")
	}
	des, _ := os.ReadDir(dir)
	if len(des) != 0 {
		t.Errorf("left behind: %v", des)
	}
}

func TestPrune(t *testing.T) {
	s, _ := Open(t.TempDir())
	now := time.Now()
	put(t, s, digest('a'), 100, now.Add(-3*time.Hour)) // oldest, in use
	put(t, s, digest('b'), 100, now.Add(-2*time.Hour))
	put(t, s, digest('c'), 100, now.Add(-1*time.Hour))
	inUse := func(e Entry) bool { return e.Digest == digest('a') }
	removed, err := s.Prune(200, inUse)
	if err != nil || len(removed) != 1 || removed[0].Digest != digest('b') {
		t.Fatalf("Prune(200) removed %+v, %v; want only b", removed, err)
	}
	removed, err = s.Prune(-1, inUse)
	if err != nil || len(removed) != 1 || removed[0].Digest != digest('c') {
		t.Fatalf("Prune(-1) removed %+v, %v; want c", removed, err)
	}
	list, _ := s.List()
	if len(list) != 1 || list[0].Digest != digest('a') {
		t.Errorf("left %+v, want a (in use)", list)
	}
}
