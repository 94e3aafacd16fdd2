package testenv

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestModuleRoot(t *testing.T) {
	root := ModuleRoot(t)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatal(err)
	}
	if filepath.Base(root) == "testenv" {
		t.Fatalf("module root %s", root)
	}
}

func TestRequireToolsFails(t *testing.T) {
	ft := &fakeTB{TB: t}
	func() {
		defer func() { recover() }()
		RequireTools(ft, "sh", "no-such-tool-clipd", "fusermount3-none")
	}()
	if !ft.failed || !bytes.Contains([]byte(ft.msg), []byte("no-such-tool-clipd")) || !bytes.Contains([]byte(ft.msg), []byte("apt-get install")) {
		t.Fatalf("RequireTools: failed=%v msg=%q", ft.failed, ft.msg)
	}
	RequireTools(t, "sh")
}

type fakeTB struct {
	testing.TB
	failed bool
	msg    string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed = true
	f.msg = fmt.Sprintf(format, args...)
	panic("fatal")
}

func TestRegistryPushAndProxy(t *testing.T) {
	reg := StartRegistry(t)

	// An uncompressed layer, to check it is pushed byte for byte.
	raw := bytes.Repeat([]byte("uncompressed layer "), 5000)
	l := static.NewLayer(raw, types.OCIUncompressedLayer)
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	other, err := random.Image(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for tag, im := range map[string]v1.Image{"one": img, "two": other} {
		if err := p.AppendImage(im, layout.WithAnnotations(map[string]string{refNameAnnotation: tag})); err != nil {
			t.Fatal(err)
		}
	}
	PushLayout(t, dir, "one", reg+"/test/one:v1")
	if err := PushLayoutContext(t.Context(), dir, "nope", reg+"/test/one:v1"); err == nil {
		t.Fatal("pushing a missing tag succeeded")
	}

	proxy := StartCountingProxy(t, reg)
	ref, err := name.ParseReference(proxy.Addr + "/test/one:v1")
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	if got, _ := pulled.Digest(); got != want {
		t.Fatalf("pulled digest %s, pushed %s", got, want)
	}
	ld, _ := l.Digest()
	url := fmt.Sprintf("http://%s/v2/test/one/blobs/%s", proxy.Addr, ld)
	get := func() (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Range", "bytes=10-19")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	before := proxy.Requests()
	resp, body := get()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, raw[10:20]) {
		t.Fatalf("range GET: %s %q", resp.Status, body)
	}
	if proxy.Requests() != before+1 {
		t.Fatalf("proxy counted %d requests, want %d", proxy.Requests(), before+1)
	}
	reqs := proxy.Blob(ld.String())
	if last := reqs[len(reqs)-1]; last.Range != "bytes=10-19" || last.Status != 206 {
		t.Fatalf("recorded %+v", last)
	}

	proxy.SetCorrupt(func(r *http.Request) int64 {
		if BlobDigest(r.URL.Path) == ld.String() {
			return 3
		}
		return -1
	})
	if _, body := get(); body[3] != raw[13]^0xff || !bytes.Equal(body[:3], raw[10:13]) || !bytes.Equal(body[4:], raw[14:20]) {
		t.Fatalf("corrupted body %q", body)
	}
	proxy.SetCorrupt(nil)
	proxy.SetFail(func(*http.Request) int { return http.StatusServiceUnavailable })
	if resp, _ := get(); resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("failing proxy answered %s", resp.Status)
	}
	proxy.SetFail(nil)
	proxy.Reset()
	if proxy.Requests() != 0 || proxy.Bytes() != 0 || len(proxy.Blob(ld.String())) != 0 {
		t.Fatal("Reset kept counts")
	}
	get()
	if proxy.Bytes() != 10 {
		t.Fatalf("proxy counted %d body bytes, want 10", proxy.Bytes())
	}
}
