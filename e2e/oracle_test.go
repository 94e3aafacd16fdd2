package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// fixedTime is the mtime every hand-made entry gets, so that two trees built
// the same way are equal.
var fixedTime = unix.NsecToTimespec(1700000000_123456789)

// buildTree makes a small tree with one entry of each kind, then applies
// mutate (which may be nil) and pins every mtime except those mutate set in
// keepTimes.
func buildTree(t *testing.T, mutate func(root string), keepTimes ...string) string {
	t.Helper()
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "dir/sub"), 0o755))
	must(os.WriteFile(filepath.Join(root, "dir/file"), []byte("hello"), 0o644))
	must(os.WriteFile(filepath.Join(root, "dir/sub/deep"), []byte("deep"), 0o600))
	must(os.WriteFile(filepath.Join(root, "suid"), []byte("x"), 0o755))
	must(unix.Chmod(filepath.Join(root, "suid"), 0o4755))
	must(os.Symlink("dir/file", filepath.Join(root, "link")))
	must(os.WriteFile(filepath.Join(root, "hl1"), []byte("linked"), 0o644))
	must(os.Link(filepath.Join(root, "hl1"), filepath.Join(root, "hl2")))
	must(unix.Mknod(filepath.Join(root, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	must(unix.Mkfifo(filepath.Join(root, "fifo"), 0o644))
	must(unix.Lsetxattr(filepath.Join(root, "dir/file"), "user.k", []byte("v\x00bin"), 0))
	if mutate != nil {
		mutate(root)
	}
	// Children first, so that setting a child's time does not disturb its
	// parent's (it does not anyway, but creation above did).
	var paths []string
	must(filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	}))
	slices.Reverse(paths)
	for _, p := range paths {
		rel, _ := filepath.Rel(root, p)
		if slices.Contains(keepTimes, rel) {
			continue
		}
		ts := []unix.Timespec{fixedTime, fixedTime}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW))
	}
	return root
}

func TestCompareTreesEqual(t *testing.T) {
	a, b := buildTree(t, nil), buildTree(t, nil)
	diffs, err := CompareTrees(a, b)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 0 {
		t.Fatalf("identical trees differ: %v", diffs)
	}
	w, err := Snapshot(a)
	if err != nil {
		t.Fatal(err)
	}
	_, st := Compare(w, w)
	// root, dir, dir/sub, dir/file, dir/sub/deep, suid, link, hl1, hl2, null, fifo
	if st.Entries != 11 || st.Files != 5 || st.Dirs != 3 || st.Symlinks != 1 || st.Devices != 1 ||
		st.Other != 1 || st.HardLinked != 2 || st.WithXattrs != 1 || st.Special != 1 {
		t.Fatalf("stats: %s", st)
	}
}

// TestCompareTreesCatchesEachDifference proves that every field the
// comparator claims to check does make it fail.
func TestCompareTreesCatchesEachDifference(t *testing.T) {
	p := func(root, rel string) string { return filepath.Join(root, rel) }
	cases := []struct {
		name   string
		mutate func(t *testing.T, root string)
		keep   []string
		want   []Diff // Path and Field of every expected difference
	}{
		{"missing", func(t *testing.T, r string) { rm(t, p(r, "dir/sub/deep")) }, nil,
			[]Diff{{Path: "/dir/sub/deep", Field: FieldMissing}}},
		{"extra", func(t *testing.T, r string) { write(t, p(r, "dir/new"), "n") }, nil,
			[]Diff{{Path: "/dir/new", Field: FieldExtra}}},
		{"type", func(t *testing.T, r string) { rm(t, p(r, "fifo")); write(t, p(r, "fifo"), "") }, nil,
			[]Diff{{Path: "/fifo", Field: FieldType}}},
		{"perm", func(t *testing.T, r string) { chmod(t, p(r, "dir/file"), 0o640) }, nil,
			[]Diff{{Path: "/dir/file", Field: FieldPerm}}},
		{"special", func(t *testing.T, r string) { chmod(t, p(r, "suid"), 0o755) }, nil,
			[]Diff{{Path: "/suid", Field: FieldSpecial}}},
		{"sticky dir", func(t *testing.T, r string) { chmod(t, p(r, "dir/sub"), 0o1755) }, nil,
			[]Diff{{Path: "/dir/sub", Field: FieldSpecial}}},
		{"uid", func(t *testing.T, r string) { lchown(t, p(r, "link"), 1000, 0) }, nil,
			[]Diff{{Path: "/link", Field: FieldUID}}},
		{"gid", func(t *testing.T, r string) { lchown(t, p(r, "dir"), 0, 1000) }, nil,
			[]Diff{{Path: "/dir", Field: FieldGID}}},
		{"size and content", func(t *testing.T, r string) { write(t, p(r, "dir/sub/deep"), "deeper") }, nil,
			[]Diff{{Path: "/dir/sub/deep", Field: FieldSize}, {Path: "/dir/sub/deep", Field: FieldContent}}},
		{"content only", func(t *testing.T, r string) { write(t, p(r, "dir/sub/deep"), "DEEP") }, nil,
			[]Diff{{Path: "/dir/sub/deep", Field: FieldContent}}},
		{"mtime nanoseconds", func(t *testing.T, r string) {
			ts := unix.NsecToTimespec(1700000000_123456780)
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, p(r, "link"), []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
		}, []string{"link"},
			[]Diff{{Path: "/link", Field: FieldMtime}}},
		{"symlink target", func(t *testing.T, r string) {
			rm(t, p(r, "link"))
			if err := os.Symlink("dir/fil_", p(r, "link")); err != nil {
				t.Fatal(err)
			}
		}, nil,
			[]Diff{{Path: "/link", Field: FieldTarget}}},
		{"rdev", func(t *testing.T, r string) {
			rm(t, p(r, "null"))
			if err := unix.Mknod(p(r, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))); err != nil {
				t.Fatal(err)
			}
		}, nil,
			[]Diff{{Path: "/null", Field: FieldRdev}}},
		{"xattr value", func(t *testing.T, r string) { setx(t, p(r, "dir/file"), "user.k", "v\x00biN") }, nil,
			[]Diff{{Path: "/dir/file", Field: FieldXattrs}}},
		{"xattr added", func(t *testing.T, r string) { setx(t, p(r, "dir"), "user.other", "") }, nil,
			[]Diff{{Path: "/dir", Field: FieldXattrs}}},
		{"hard link broken", func(t *testing.T, r string) {
			rm(t, p(r, "hl2"))
			write(t, p(r, "hl2"), "linked")
			chmod(t, p(r, "hl2"), 0o644)
		}, nil,
			[]Diff{
				{Path: "/hl1", Field: FieldLinks}, {Path: "/hl1", Field: FieldNlink},
				{Path: "/hl2", Field: FieldLinks}, {Path: "/hl2", Field: FieldNlink},
			}},
		{"hard link regrouped", func(t *testing.T, r string) {
			// hl2 now shares suid's inode instead of hl1's: the partition
			// changes for three paths.
			rm(t, p(r, "hl2"))
			if err := os.Link(p(r, "suid"), p(r, "hl2")); err != nil {
				t.Fatal(err)
			}
		}, nil,
			[]Diff{
				{Path: "/hl1", Field: FieldLinks}, {Path: "/hl1", Field: FieldNlink},
				{Path: "/hl2", Field: FieldPerm}, {Path: "/hl2", Field: FieldSpecial},
				{Path: "/hl2", Field: FieldSize}, {Path: "/hl2", Field: FieldContent}, {Path: "/hl2", Field: FieldLinks},
				{Path: "/suid", Field: FieldLinks}, {Path: "/suid", Field: FieldNlink},
			}},
	}
	want := buildTree(t, nil)
	wantTree, err := Snapshot(want)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := buildTree(t, func(r string) { c.mutate(t, r) }, c.keep...)
			gotTree, err := Snapshot(got)
			if err != nil {
				t.Fatal(err)
			}
			diffs, _ := Compare(wantTree, gotTree)
			if !sameDiffs(diffs, c.want) {
				t.Fatalf("diffs:\n%v\nwant (path, field):\n%v", diffs, c.want)
			}
			// Ignoring exactly the expected fields for exactly those paths
			// leaves nothing; ignoring them elsewhere leaves everything.
			var igs, elsewhere []Ignore
			for _, d := range c.want {
				igs = append(igs, Ignore{Path: d.Path, Fields: []Field{d.Field}})
				elsewhere = append(elsewhere, Ignore{Path: "/nonexistent*", Fields: []Field{d.Field}})
			}
			if left, _ := Compare(wantTree, gotTree, igs...); len(left) != 0 {
				t.Fatalf("ignores left %v", left)
			}
			if left, _ := Compare(wantTree, gotTree, elsewhere...); len(left) != len(diffs) {
				t.Fatalf("ignores of other paths dropped diffs: %v", left)
			}
		})
	}
}

func TestIgnorePatterns(t *testing.T) {
	igs := []Ignore{
		{Path: "/usr/*", Fields: []Field{FieldMtime}},
		{Path: AnyPath, Fields: []Field{FieldXattrs}},
		{Path: "/", Fields: []Field{FieldPerm}},
	}
	for _, c := range []struct {
		path  string
		field Field
		want  bool
	}{
		{"/usr/bin", FieldMtime, true},
		{"/usr/bin/x", FieldMtime, false}, // path.Match: * does not cross "/"
		{"/usr/bin", FieldPerm, false},
		{"/anything", FieldXattrs, true},
		{"/", FieldPerm, true},
		{"/etc", FieldPerm, false},
	} {
		if got := ignored(igs, c.path, c.field); got != c.want {
			t.Errorf("ignored(%s, %s) = %v, want %v", c.path, c.field, got, c.want)
		}
	}
}

func sameDiffs(got, want []Diff) bool {
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		if !slices.ContainsFunc(got, func(d Diff) bool { return d.Path == w.Path && d.Field == w.Field }) {
			return false
		}
	}
	return true
}

func rm(t *testing.T, p string) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	// A rewrite of an existing file keeps its mode; a new file gets 0600.
}

func chmod(t *testing.T, p string, m os.FileMode) {
	t.Helper()
	if err := unix.Chmod(p, uint32(m)); err != nil {
		t.Fatal(err)
	}
}

func lchown(t *testing.T, p string, uid, gid int) {
	t.Helper()
	if err := os.Lchown(p, uid, gid); err != nil {
		t.Fatal(err)
	}
}

func setx(t *testing.T, p, k, v string) {
	t.Helper()
	if err := unix.Lsetxattr(p, k, []byte(v), 0); err != nil {
		t.Fatal(err)
	}
}
