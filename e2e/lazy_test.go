package e2e

import (
	"bytes"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// smallFile picks a regular file of 1-4 KiB of the first layer that lies
// inside one span, and returns it with that span.
func smallFile(t testing.TB, a *index.Archive) (*index.Node, int64) {
	t.Helper()
	x := a.Layers[0].Spans
	if x == nil {
		t.Fatalf("%s: layer 0 has no decompression index", a.Path)
	}
	for _, n := range a.Nodes {
		if n.Layer != 0 || n.Attr.Mode&0o170000 != 0o100000 || n.Attr.Size < 1024 || n.Attr.Size > 4096 || n.Attr.Nlink != 1 {
			continue
		}
		i := x.Find(n.Offset)
		s := x.Spans[i]
		// Prefer a file in the middle of the layer, away from the ends.
		if i > 0 && i < len(x.Spans)-1 && n.Offset+int64(n.Attr.Size) <= s.UOff+s.USize {
			return n, s.CEnd - s.COff
		}
	}
	t.Fatalf("%s: no small file inside one span", a.Path)
	return nil, 0
}

// lazyMinbase pushes debian-python:minbase to a registry behind a counting
// proxy, indexes it through the proxy and mounts it through a daemon.
type lazyMinbase struct {
	layout string
	proxy  *testenv.CountingProxy
	d      *daemon
	a      *index.Archive
	mp     string
}

func mountMinbaseBehindProxy(t *testing.T) *lazyMinbase {
	requireE2ETools(t)
	m := &lazyMinbase{layout: testenv.DebianPythonLayout(t)}
	host := testenv.StartRegistry(t)
	skopeoPush(t, m.layout, "minbase", host+"/debian:minbase")
	m.proxy = testenv.StartCountingProxy(t, host)
	m.d = startDaemon(t)
	archive := m.d.index(t, m.proxy.Addr+"/debian:minbase", filepath.Join(t.TempDir(), "minbase.clip"))
	var err error
	if m.a, err = index.Open(archive); err != nil {
		t.Fatal(err)
	}
	_, m.mp = m.d.mount(t, archive, "minbase")
	return m
}

// TestLazySmallRead: reading one small file of the 51 MB base layer moves
// at most one span's compressed bytes plus 64 KiB from the registry, with
// Range requests only.
func TestLazySmallRead(t *testing.T) {
	m := mountMinbaseBehindProxy(t)
	a, proxy, mp, layoutDir := m.a, m.proxy, m.mp, m.layout
	n, spanBytes := smallFile(t, a)

	proxy.Reset()
	got, err := os.ReadFile(filepath.Join(mp, n.Path))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != int(n.Attr.Size) {
		t.Fatalf("read %d bytes of %s, want %d", len(got), n.Path, n.Attr.Size)
	}
	moved := proxy.Bytes()
	t.Logf("reading %s (%d bytes) moved %d bytes in %d requests; its span is %d compressed bytes; layer is %d",
		n.Path, n.Attr.Size, moved, proxy.Requests(), spanBytes, a.Layers[0].Size)
	if moved > spanBytes+64<<10 {
		t.Errorf("moved %d bytes, want at most one span (%d) + 64 KiB", moved, spanBytes)
	}
	for _, r := range proxy.Blob(a.Layers[0].Digest) {
		if r.Range == "" || r.Status != http.StatusPartialContent {
			t.Errorf("blob request without a range answered 206: %+v", r)
		}
	}
	// The file's bytes are the layer's: compare with a direct extraction.
	want := run(t, "tar", "-xzOf", filepath.Join(layoutDir, "blobs", "sha256", strings.TrimPrefix(a.Layers[0].Digest, "sha256:")), strings.TrimPrefix(n.Path, "/"))
	if !bytes.Equal(got, []byte(want)) {
		t.Errorf("%s: mounted bytes differ from the layer's", n.Path)
	}
}

// TestLazyCompressions: zstd and uncompressed copies of the base image,
// every byte served through verified spans, equal umoci's extraction of the
// gzip original (umoci 0.4.7 cannot read zstd layers; the content is the
// same).
func TestLazyCompressions(t *testing.T) {
	requireE2ETools(t)
	layoutDir := testenv.DebianPythonLayout(t)
	host := testenv.StartRegistry(t)
	oracle := snapshot(t, umociUnpack(t, layoutDir, "minbase"))

	// zstd: skopeo recompresses on the way into a fresh repository.
	run(t, "skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-compress", "--dest-compress-format", "zstd",
		"oci:"+layoutDir+":minbase", "docker://"+host+"/debian-zstd:minbase")
	// Uncompressed: skopeo would recompress, so push with remote.Write,
	// which sends blobs as they are.
	pushUncompressed(t, layoutDir, "minbase", host+"/debian-raw:minbase")

	d := startDaemon(t)
	work := t.TempDir()
	for _, c := range []struct{ repo, compression string }{{"debian-zstd", "zstd"}, {"debian-raw", "none"}} {
		archive := d.index(t, host+"/"+c.repo+":minbase", filepath.Join(work, c.repo+".clip"))
		a, err := index.Open(archive)
		if err != nil {
			t.Fatal(err)
		}
		if l := a.Layers[0]; l.Compression != c.compression || l.Spans == nil || len(l.Spans.Spans) == 0 {
			t.Fatalf("%s: layer 0 is %q with %v spans, want %s with a decompression index", c.repo, l.Compression, l.Spans, c.compression)
		}
		t.Logf("%s: %d spans", c.repo, len(a.Layers[0].Spans.Spans))
		id, mp := d.mount(t, archive, c.repo)
		requireEqual(t, c.repo, oracle, snapshot(t, mp))
		logFigures(t, d, id)
		d.umount(t, id, mp)
	}
}

// pushUncompressed pushes layout:tag to ref with every layer decompressed.
func pushUncompressed(t *testing.T, layoutDir, tag, ref string) {
	t.Helper()
	defer timed(t, "push uncompressed "+tag)()
	img, _, err := fetcher.ResolveImage(t.Context(), fetcher.LayoutPrefix+layoutDir+":"+tag, nil, fetcher.Options{})
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	out := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	out = mutate.ConfigMediaType(out, types.OCIConfigJSON)
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if _, err := b.ReadFrom(rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		if out, err = mutate.AppendLayers(out, static.NewLayer(b.Bytes(), types.OCIUncompressedLayer)); err != nil {
			t.Fatal(err)
		}
	}
	cf = cf.DeepCopy()
	cf.RootFS.DiffIDs = nil
	out, err = mutate.ConfigFile(out, cf)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, out); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// TestCorruptSpan: a proxy that flips one byte of every range answer for
// the base layer makes a read fail cleanly (EIO) after one refetch; the
// daemon keeps serving, and other files keep reading.
func TestCorruptSpan(t *testing.T) {
	m := mountMinbaseBehindProxy(t)
	a, proxy, mp, d := m.a, m.proxy, m.mp, m.d
	n, _ := smallFile(t, a)
	// A file of another span reads before the corruption starts.
	good := "/etc/debian_version"
	if _, err := os.ReadFile(filepath.Join(mp, good)); err != nil {
		t.Fatal(err)
	}

	proxy.Reset()
	digest := a.Layers[0].Digest
	proxy.SetCorrupt(func(r *http.Request) int64 {
		if testenv.BlobDigest(r.URL.Path) == digest && r.Header.Get("Range") != "" {
			return 100
		}
		return -1
	})
	_, err := os.ReadFile(filepath.Join(mp, n.Path))
	if err == nil || !strings.Contains(err.Error(), "input/output error") {
		t.Fatalf("read of %s through a corrupting proxy: %v, want EIO", n.Path, err)
	}
	// The kernel may retry a failed read; each attempt is one fetch and
	// one refetch, then a log line naming layer and span.
	reqs := proxy.Blob(digest)
	log, _ := os.ReadFile(d.log)
	failed := bytes.Count(log, []byte("span unusable"))
	if failed == 0 || !bytes.Contains(log, []byte(digest)) {
		t.Fatalf("daemon log does not name the unusable span of layer %s", digest)
	}
	if len(reqs) != 2*failed {
		t.Errorf("%d requests for %d failed reads of the corrupt span, want a fetch and one refetch each: %+v", len(reqs), failed, reqs)
	}
	t.Logf("%d read attempts failed, %d range requests", failed, len(reqs))
	// The daemon and the mount keep serving.
	if status, _, err := d.request(http.MethodGet, "/v1/health", nil); err != nil || status != http.StatusOK {
		t.Fatalf("health after a corrupt span: %d %v", status, err)
	}
	if _, err := os.ReadFile(filepath.Join(mp, good)); err != nil {
		t.Fatalf("cached file after a corrupt span: %v", err)
	}
	// Once the registry answers right again, the same read succeeds with
	// the layer's bytes (a direct extraction, not through clipd): bad bytes
	// were not cached.
	proxy.SetCorrupt(nil)
	out, err := exec.Command("cat", filepath.Join(mp, n.Path)).Output()
	if err != nil {
		t.Fatalf("read after the registry healed: %v", err)
	}
	want := run(t, "tar", "-xzOf", filepath.Join(m.layout, "blobs", "sha256", strings.TrimPrefix(digest, "sha256:")), strings.TrimPrefix(n.Path, "/"))
	if len(want) != int(n.Attr.Size) {
		t.Fatalf("oracle extraction of %s: %d bytes, the index says %d", n.Path, len(want), n.Attr.Size)
	}
	if !bytes.Equal(out, []byte(want)) {
		t.Fatalf("read after the registry healed: %d bytes differ from the layer's %d bytes of %s", len(out), len(want), n.Path)
	}
}
