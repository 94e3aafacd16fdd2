package e2e

import (
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/beam-cloud/clip/pkg/clip"
	"github.com/beam-cloud/clip/pkg/common"
	"github.com/clipd/clipd/internal/testenv"
)

// clipIgnores are the fields a .clip written by clip itself cannot express
// (measured on the pinned clip version), so a mount of such a file cannot
// reproduce them:
//
//   - special: clip keeps only the 0777 permission bits, dropping setuid,
//     setgid and sticky (11 setuid binaries, the sticky /tmp in this image).
//   - xattrs: clip records none.
//   - rdev, and the device/FIFO entries themselves: clip records only
//     directories, regular files and symlinks, so /dev/console & co. are
//     absent (ignored per path, below, for exactly the oracle's devices).
//   - links, nlink: clip records each hard link as an independent file, so
//     inode identity and link counts are lost (content is still compared).
func clipIgnores(oracle *Tree) []Ignore {
	igs := []Ignore{{Path: AnyPath, Fields: []Field{FieldSpecial, FieldXattrs, FieldRdev, FieldLinks, FieldNlink},
		Why: "not in the clip format"}}
	for _, p := range sortedKeys(oracle.Entries) {
		switch oracle.Entries[p].Type {
		case "char", "block", "fifo", "socket":
			igs = append(igs, Ignore{Path: p, Fields: []Field{FieldMissing}, Why: "clip drops devices and FIFOs"})
		}
	}
	return igs
}

// TestClipCompatibility checks both directions of the format contract:
// a .clip written by clip's own indexer mounts in clipd and matches the
// oracle in everything clip records, and a .clip written by clipd loads in
// clip's ExtractMetadata with the same paths as the clipd mount.
func TestClipCompatibility(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestClipCompatibility")()
	layout := testenv.DebianPythonLayout(t)
	host := testenv.StartRegistry(t)
	ref := host + "/debian:python"
	skopeoPush(t, layout, "python", ref)
	d := startDaemon(t)
	work := t.TempDir()
	oracle := snapshot(t, umociUnpack(t, layout, "python"))
	// clip logs every layer at info level through zerolog's global logger.
	if err := clip.SetLogLevel("warn"); err != nil {
		t.Fatal(err)
	}

	t.Run("clip-written", func(t *testing.T) {
		archive := filepath.Join(work, "by-clip.clip")
		done := timed(t, "clip.CreateFromOCIImage")
		err := clip.CreateFromOCIImage(context.Background(), clip.CreateFromOCIImageOptions{
			ImageRef:   ref,
			OutputPath: archive,
		})
		done()
		if err != nil {
			t.Fatalf("clip.CreateFromOCIImage %s: %v", ref, err)
		}
		id, mp := d.mount(t, archive, "by-clip")
		requireEqual(t, "clip-written", oracle, snapshot(t, mp), clipIgnores(oracle)...)
		requirePython(t, mp)
		logFigures(t, d, id)
		d.umount(t, id, mp)
	})

	t.Run("clipd-written", func(t *testing.T) {
		archive := d.index(t, ref, filepath.Join(work, "by-clipd.clip"))
		done := timed(t, "clip ExtractMetadata")
		meta, err := clip.NewClipArchiver().ExtractMetadata(archive)
		done()
		if err != nil {
			t.Fatalf("clip cannot load the .clip clipd wrote: %v", err)
		}
		if _, ok := meta.StorageInfo.(common.OCIStorageInfo); !ok {
			t.Errorf("clip sees storage info %T, want common.OCIStorageInfo", meta.StorageInfo)
		}
		clipPaths := clipMetadataPaths(meta)
		id, mp := d.mount(t, archive, "by-clipd")
		mounted := snapshot(t, mp)
		d.umount(t, id, mp)
		// Every path of the mount, devices and FIFOs included: clip lists
		// them (as whatever node it makes of them) and clipd's extension
		// adds what clip cannot express about them.
		want := sortedKeys(mounted.Entries)
		t.Logf("clip lists %d paths; the clipd mount has %d", len(clipPaths), len(want))
		if missing, extra := setDiff(want, clipPaths); len(missing) > 0 || len(extra) > 0 {
			t.Errorf("clip's view of the clipd-written index differs from the mount: %d paths only in the mount %v, %d only in clip's view %v",
				len(missing), head(missing, 20), len(extra), head(extra, 20))
		}
	})
}

// clipMetadataPaths lists the paths of clip's index, "/"-rooted.
func clipMetadataPaths(meta *common.ClipArchiveMetadata) []string {
	var out []string
	meta.Index.Ascend(nil, func(a any) bool {
		n := a.(*common.ClipNode)
		p := n.Path
		if p == "" {
			p = "/"
		}
		out = append(out, p)
		return true
	})
	slices.Sort(out)
	return slices.Compact(out)
}

// setDiff returns what is only in a and only in b (both sorted).
func setDiff(a, b []string) (onlyA, onlyB []string) {
	for _, x := range a {
		if _, ok := slices.BinarySearch(b, x); !ok {
			onlyA = append(onlyA, x)
		}
	}
	for _, x := range b {
		if _, ok := slices.BinarySearch(a, x); !ok {
			onlyB = append(onlyB, x)
		}
	}
	return onlyA, onlyB
}

func head(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
