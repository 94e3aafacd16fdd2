package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/beam-cloud/clip/pkg/clip"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxUpFrontShare is the most of an image's compressed size a node may
// download before a mount is ready: the .clip as it travels (compressed),
// without the checkpoint windows, which come lazily with their spans.
const maxUpFrontShare = 0.015

// TestSeparateWindows indexes debian-python with the windows apart (the
// default), checks what a node must download up front against the image's
// size, pushes the windows blob into the image's repository as a publisher
// does, and mounts the .clip with no windows file beside it: every window
// comes by Range from the registry with its span, and the mount matches
// the oracle exactly. The same image indexed with inline windows (the
// previous extension version) still mounts exactly, and clip's
// ExtractMetadata loads both files.
func TestSeparateWindows(t *testing.T) {
	requireE2ETools(t)
	defer timed(t, "TestSeparateWindows")()
	layout := testenv.DebianPythonLayout(t)
	host := testenv.StartRegistry(t)
	skopeoPush(t, layout, "python", host+"/debian:python")
	proxy := testenv.StartCountingProxy(t, host)
	ref := proxy.Addr + "/debian:python"
	d := startDaemon(t)
	work := t.TempDir()
	oracle := snapshot(t, umociUnpack(t, layout, "python"))
	if err := clip.SetLogLevel("warn"); err != nil {
		t.Fatal(err)
	}

	archive := d.index(t, ref, filepath.Join(work, "separate.clip"))
	a, err := index.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	if a.Windows == nil || a.Extension != index.ExtensionVersionWindows {
		t.Fatalf("clipd index wrote extension version %d, windows %+v: want them apart by default", a.Extension, a.Windows)
	}
	var image int64
	for _, l := range a.Layers {
		image += l.Size
	}
	up, err := index.CompressedSize(archive)
	if err != nil {
		t.Fatal(err)
	}
	share := float64(up) / float64(image)
	t.Logf("figure: up-front index bytes %d (.clip %d as zstd) / image %d compressed = %.2f%%; lazily fetched windows blob %d bytes",
		up, a.FileSize, image, share*100, a.Windows.Size)
	if share > maxUpFrontShare {
		t.Errorf("a node downloads %d bytes up front, %.2f%% of the image; the most allowed is %.1f%%", up, share*100, maxUpFrontShare*100)
	}
	if out := d.clipd(t, "inspect", archive); !strings.Contains(out, "up front:") || !strings.Contains(out, a.Windows.Digest) {
		t.Errorf("clipd inspect does not report up-front and lazy bytes:\n%s", out)
	}
	if _, err := clip.NewClipArchiver().ExtractMetadata(archive); err != nil {
		t.Fatalf("clip cannot load the .clip clipd wrote with separate windows: %v", err)
	}

	// Publish the windows blob as a second blob of the index artifact
	// would be, and leave no file beside the .clip.
	blob, err := os.ReadFile(index.WindowsPath(archive))
	if err != nil {
		t.Fatal(err)
	}
	repo, err := name.NewRepository(host + "/debian")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteLayer(repo, static.NewLayer(blob, types.MediaType(index.WindowsMediaType))); err != nil {
		t.Fatalf("push windows blob: %v", err)
	}
	if err := os.Remove(index.WindowsPath(archive)); err != nil {
		t.Fatal(err)
	}
	proxy.Reset()
	id, mp := d.mount(t, archive, "separate")
	requireEqual(t, "separate windows from the registry", oracle, snapshot(t, mp))
	requirePython(t, mp)
	logFigures(t, d, id)
	d.umount(t, id, mp)
	reqs := proxy.Blob(a.Windows.Digest)
	var moved int64
	for _, r := range reqs {
		if r.Range == "" || r.Status != http.StatusPartialContent {
			t.Fatalf("windows blob request %+v: want Range requests answered 206", r)
		}
		moved += rangeLen(t, r.Range)
	}
	if len(reqs) == 0 {
		t.Fatal("no request for the windows blob: where did the windows come from?")
	}
	t.Logf("windows: %d range requests, %d of %d bytes", len(reqs), moved, a.Windows.Size)

	// The previous format, windows inline, still loads and serves.
	inline := filepath.Join(work, "inline.clip")
	d.clipd(t, "index", "--windows", "inline", "-o", inline, ref)
	if _, err := os.Stat(index.WindowsPath(inline)); err == nil {
		t.Errorf("--windows inline wrote %s", index.WindowsPath(inline))
	}
	b, err := index.Open(inline)
	if err != nil {
		t.Fatal(err)
	}
	if b.Windows != nil || b.Extension != index.ExtensionVersion {
		t.Fatalf("--windows inline wrote extension version %d, windows %+v", b.Extension, b.Windows)
	}
	if _, err := clip.NewClipArchiver().ExtractMetadata(inline); err != nil {
		t.Fatalf("clip cannot load the inline .clip: %v", err)
	}
	id, mp = d.mount(t, inline, "inline")
	requireEqual(t, "inline windows", oracle, snapshot(t, mp))
	d.umount(t, id, mp)
}

// rangeLen is the length of a "bytes=A-B" range.
func rangeLen(t testing.TB, r string) int64 {
	t.Helper()
	var a, b int64
	if _, err := fmt.Sscanf(r, "bytes=%d-%d", &a, &b); err != nil {
		t.Fatalf("range %q: %v", r, err)
	}
	return b - a + 1
}
