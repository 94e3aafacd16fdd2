package fetcher

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/clipd/clipd/zran"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// separateArchive writes the fixture's indexed archive with its windows in
// a windows file and opens it again, as a mount would.
func separateArchive(t *testing.T, e *env) (*index.Archive, []byte) {
	t.Helper()
	a := indexedArchive(t, e.fix, e.src, 256<<10)
	root := &index.Node{Path: "/", Layer: -1}
	root.Attr.Mode = syscall.S_IFDIR | 0o755
	a.Nodes = []*index.Node{root}
	path := filepath.Join(t.TempDir(), "img.clip")
	w, err := index.WriteFileWith(path, a, index.WriteOptions{Windows: index.WindowsSeparate})
	if err != nil {
		t.Fatal(err)
	}
	if w.Windows == nil || w.WindowsPath != index.WindowsPath(path) {
		t.Fatalf("wrote %+v, want a windows file", w)
	}
	blob, err := os.ReadFile(w.WindowsPath)
	if err != nil {
		t.Fatal(err)
	}
	got, err := index.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Windows == nil || got.Windows.Digest != w.Windows.Digest || !got.Layers[1].Spans.External() {
		t.Fatalf("reopened archive has windows %+v, want %s apart", got.Windows, w.Windows.Digest)
	}
	return got, blob
}

// pushWindows stores the windows blob in the fixture's repository, as a
// publisher does.
func pushWindows(t *testing.T, e *env, blob []byte) string {
	t.Helper()
	repo, err := name.NewRepository(e.src.Registry + "/" + e.src.Repository)
	if err != nil {
		t.Fatal(err)
	}
	l := static.NewLayer(blob, types.MediaType(index.WindowsMediaType))
	if err := remote.WriteLayer(repo, l); err != nil {
		t.Fatalf("push windows blob: %v", err)
	}
	d, _ := l.Digest()
	return d.String()
}

// With the windows in the file beside the .clip, every layer reads right
// and a span's window is read with the span, from the local file: the
// registry sees span requests only.
func TestSeparateWindowsLocalFile(t *testing.T) {
	e := newEnv(t)
	f, store := newFetcher(t, t.TempDir(), Options{})
	a, _ := separateArchive(t, e)
	ls := openLayers(t, f, a)
	for i, l := range e.fix.layers {
		checkRandomReads(t, ls, i, l.tar, 20, uint64(i))
	}
	x := a.Layers[1].Spans
	k := len(x.Spans) / 2
	if x.Refs[k].Length == 0 {
		t.Fatalf("gzip span %d has no window", k)
	}
	if !store.Has(windowKey(a.Layers[1].Digest, x.SpanSize, k)) && !store.Has(spanKey(a.Layers[1].Digest, x, k, "")) {
		t.Fatalf("neither span %d nor its window is cached", k)
	}
	if n := len(e.proxy.Blob(a.Windows.Digest)); n != 0 {
		t.Fatalf("%d registry requests for the windows blob, want none (the file is local)", n)
	}
}

// Without the file, the windows come from the blob in the image's
// repository: one range request per span fetch, at the same time as the
// span's. A window corrupted once is fetched again; always corrupted, the
// read fails naming layer and span after one refetch, and nothing is cached.
func TestSeparateWindowsFromRegistry(t *testing.T) {
	e := newEnv(t)
	f, store := newFetcher(t, t.TempDir(), Options{})
	a, blob := separateArchive(t, e)
	if d := pushWindows(t, e, blob); d != a.Windows.Digest {
		t.Fatalf("pushed %s, archive names %s", d, a.Windows.Digest)
	}
	if err := os.Remove(index.WindowsPath(a.Path)); err != nil {
		t.Fatal(err)
	}
	ls := openLayers(t, f, a)
	gz := e.fix.layers[1]
	if gz.comp != zran.Gzip {
		t.Fatal("fixture layer 1 is not gzip")
	}
	x := a.Layers[1].Spans
	k := len(x.Spans) - 1
	s := x.Spans[k]
	e.proxy.Reset()
	buf := make([]byte, 100)
	if _, err := ls.ReaderAt(1).ReadAt(buf, s.UOff); err != nil || !bytes.Equal(buf, gz.tar[s.UOff:s.UOff+100]) {
		t.Fatalf("read of span %d: %v", k, err)
	}
	reqs := e.proxy.Blob(a.Windows.Digest)
	want := "bytes=" + itoa(x.Refs[k].Offset) + "-" + itoa(x.Refs[k].Offset+x.Refs[k].Length-1)
	if len(reqs) != 1 || reqs[0].Range != want || reqs[0].Status != http.StatusPartialContent {
		t.Fatalf("windows requests %+v, want one 206 for %s", reqs, want)
	}
	checkRandomReads(t, ls, 1, gz.tar, 20, 3)

	// Once: the refetch heals it.
	k = len(x.Spans) / 2
	s = x.Spans[k]
	store.Remove(spanKey(gz.digest, x, k, ""))
	store.Remove(windowKey(gz.digest, x.SpanSize, k))
	flips := 1
	e.proxy.SetCorrupt(func(r *http.Request) int64 {
		if testenv.BlobDigest(r.URL.Path) == a.Windows.Digest && flips > 0 {
			flips--
			return 3
		}
		return -1
	})
	if _, err := ls.ReaderAt(1).ReadAt(buf, s.UOff); err != nil || !bytes.Equal(buf, gz.tar[s.UOff:s.UOff+100]) {
		t.Fatalf("one bad window then a good one: %v", err)
	}
	// Always: the read fails cleanly, after one refetch.
	store.Remove(spanKey(gz.digest, x, k, ""))
	store.Remove(windowKey(gz.digest, x.SpanSize, k))
	e.proxy.Reset()
	e.proxy.SetCorrupt(func(r *http.Request) int64 {
		if testenv.BlobDigest(r.URL.Path) == a.Windows.Digest {
			return 3
		}
		return -1
	})
	_, err := ls.ReaderAt(1).ReadAt(buf, s.UOff)
	if err == nil || !strings.Contains(err.Error(), short(gz.digest)) || !strings.Contains(err.Error(), "span "+itoa(int64(k))) {
		t.Fatalf("corrupt window read gave %v, want an error naming layer and span", err)
	}
	if n := len(e.proxy.Blob(a.Windows.Digest)); n != 2 {
		t.Fatalf("%d windows requests, want the fetch and one refetch", n)
	}
	if store.Has(spanKey(gz.digest, x, k, "")) || store.Has(windowKey(gz.digest, x.SpanSize, k)) {
		t.Fatal("a span decoded from a corrupt window, or the window, was cached")
	}
	e.proxy.SetCorrupt(nil)
	checkRandomReads(t, ls, 1, gz.tar, 5, 7)
}

// A windows file that is not the one the index names (another size) is not
// used: the fetcher refuses to open the layers rather than read it.
func TestSeparateWindowsWrongFile(t *testing.T) {
	e := newEnv(t)
	f, _ := newFetcher(t, t.TempDir(), Options{})
	a, blob := separateArchive(t, e)
	if err := os.WriteFile(index.WindowsPath(a.Path), append(blob, 0), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.OpenLayers(t.Context(), a); err == nil || !strings.Contains(err.Error(), "the index says") {
		t.Fatalf("OpenLayers with a windows file of the wrong size: %v", err)
	}
	os.Remove(index.WindowsPath(a.Path))
	if err := os.Symlink(filepath.Join(t.TempDir(), "elsewhere"), index.WindowsPath(a.Path)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.OpenLayers(t.Context(), a); err == nil {
		t.Fatal("OpenLayers followed a symlinked windows file")
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
