package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"github.com/clipd/clipd/internal/fixture"
	"github.com/clipd/clipd/internal/testenv"
)

// fixtureIgnores are the only differences allowed between a clipd mount of
// the fixture and umoci's extraction of it: directories that no layer
// describes (the root and implicit parents) get the time of extraction from
// umoci, while clipd gives them a fixed mtime (fixture.Entry.Implicit). Their
// mode and owner (0755, 0:0) must still match.
func fixtureIgnores() []Ignore {
	var igs []Ignore
	for _, e := range fixture.Expected() {
		if e.Implicit {
			igs = append(igs, Ignore{Path: e.Path, Fields: []Field{FieldMtime},
				Why: "implicit directory: umoci stamps the extraction time"})
		}
	}
	return igs
}

// TestFixture pushes the generated fixture image (every OCI rule: whiteouts,
// opaque directories, hard links, devices, FIFOs, xattrs, setuid/sticky,
// long names, implicit parents) to a registry exactly as stored, indexes it
// from there, mounts it through the daemon and compares with umoci. Two
// variants with the same tree: gzip/gzip/uncompressed layers, and
// gzip/zstd/uncompressed (umoci 0.4.7 cannot read zstd, so both are compared
// with umoci's extraction of the first).
func TestFixture(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestFixture")()
	dir := t.TempDir()
	gzLayout, zstdLayout := filepath.Join(dir, "gzip"), filepath.Join(dir, "zstd")
	if err := fixture.WriteLayout(gzLayout, "fixture"); err != nil {
		t.Fatal(err)
	}
	zimg, err := fixture.ImageWith(true)
	if err != nil {
		t.Fatal(err)
	}
	if err := fixture.WriteImageLayout(zstdLayout, "fixture", zimg); err != nil {
		t.Fatal(err)
	}
	host := testenv.StartRegistry(t)
	testenv.PushLayout(t, gzLayout, "fixture", host+"/fixture:gzip")
	testenv.PushLayout(t, zstdLayout, "fixture", host+"/fixture:zstd")

	oracle := snapshot(t, umociUnpack(t, gzLayout, "fixture"))
	igs := fixtureIgnores()
	if len(igs) == 0 || len(igs) > 8 {
		t.Fatalf("fixture declares %d implicit directories; expected a handful", len(igs))
	}
	d := startDaemon(t)
	for _, variant := range []string{"gzip", "zstd"} {
		archive := d.index(t, host+"/fixture:"+variant, filepath.Join(dir, variant+".clip"))
		id, mp := d.mount(t, archive, "fixture-"+variant)
		requireEqual(t, "fixture-"+variant, oracle, snapshot(t, mp), igs...)
		logFigures(t, d, id)
		d.umount(t, mp, mp) // by mountpoint this time
	}
	if left := leftoverClipd(t, d.mountRoot); len(left) > 0 {
		t.Errorf("clipd mounts left after umount: %v", left)
	}
}

// expectedTree converts the fixture's hand-written final tree into a Tree.
func expectedTree() *Tree {
	tr := &Tree{Root: "fixture.Expected", Entries: map[string]*Entry{}}
	groups := map[string][]string{}
	for _, fe := range fixture.Expected() {
		if fe.Link != "" {
			groups[fe.Link] = append(groups[fe.Link], fe.Path)
		}
	}
	for _, fe := range fixture.Expected() {
		e := &Entry{
			Path:   fe.Path,
			Type:   typeName(fe.Mode),
			Mode:   fe.Mode & 0o7777,
			UID:    uint32(fe.Uid),
			GID:    uint32(fe.Gid),
			Mtime:  syscall.NsecToTimespec(fe.Mtime.UnixNano()),
			Target: fe.Target,
			Rdev:   fe.Rdev,
			Nlink:  uint64(fe.Nlink),
		}
		switch e.Type {
		case "file":
			e.Size = int64(len(fe.Data))
			sum := sha256.Sum256(fe.Data)
			e.SHA256 = hex.EncodeToString(sum[:])
		case "symlink":
			e.Size = int64(len(fe.Target))
		}
		if len(fe.Xattrs) > 0 {
			e.Xattrs = map[string][]byte{}
			for k, v := range fe.Xattrs {
				e.Xattrs[k] = []byte(v)
			}
		}
		if e.Type != "dir" {
			e.Links = []string{fe.Path}
			if g := groups[fe.Link]; fe.Link != "" {
				e.Links = slices.Sorted(slices.Values(g))
			}
		}
		tr.Entries[fe.Path] = e
	}
	return tr
}

// TestOracleMatchesFixture checks the oracle itself: umoci's extraction of
// the fixture must equal the fixture's hand-written expected tree (two
// independent oracles), except the extraction-time mtimes umoci gives
// implicit directories. Without it, a umoci quirk could pass for a clipd
// bug or hide one.
func TestOracleMatchesFixture(t *testing.T) {
	testenv.RequireTools(t, "umoci")
	layout := filepath.Join(t.TempDir(), "layout")
	if err := fixture.WriteLayout(layout, "fixture"); err != nil {
		t.Fatal(err)
	}
	got := snapshot(t, umociUnpack(t, layout, "fixture"))
	requireEqual(t, "umoci vs fixture.Expected", expectedTree(), got, fixtureIgnores()...)
}
