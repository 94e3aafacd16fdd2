package fetcher

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/internal/testenv"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestResolveRegistry(t *testing.T) {
	reg := testenv.StartRegistry(t)
	f := makeFixture(t)
	f.push(t, reg+"/test/img:v1")
	want, _ := f.img.Digest()

	img, src, err := ResolveImage(t.Context(), reg+"/test/img:v1", nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := img.Digest(); d != want {
		t.Fatalf("digest %s, want %s", d, want)
	}
	wantSrc := index.Source{Registry: reg, Repository: "test/img", Reference: "v1", Manifest: want.String()}
	if src != wantSrc {
		t.Fatalf("source %+v, want %+v", src, wantSrc)
	}
	ls, err := img.Layers()
	if err != nil || len(ls) != 3 {
		t.Fatalf("layers: %d, %v", len(ls), err)
	}

	_, src, err = ResolveImage(t.Context(), reg+"/test/img@"+want.String(), nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if src.Reference != want.String() || src.Manifest != want.String() {
		t.Fatalf("by digest: source %+v", src)
	}

	// A single-platform image is not indexed for another platform.
	other := &v1.Platform{OS: "linux", Architecture: otherArch()}
	if _, _, err := ResolveImage(t.Context(), reg+"/test/img:v1", other, Options{}); err == nil ||
		!strings.Contains(err.Error(), "no manifest for platform "+other.String()+" (has: linux/"+runtime.GOARCH+")") {
		t.Fatalf("single-platform image for %s: %v", other, err)
	}
	// Nor is an index missing the platform; the error lists those it has.
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: f.img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}})
	ir, err := name.ParseReference(reg + "/test/img:multi")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(ir, idx); err != nil {
		t.Fatal(err)
	}
	if img, _, err := ResolveImage(t.Context(), reg+"/test/img:multi", nil, Options{}); err != nil || digestOf(t, img) != want.String() {
		t.Fatalf("index for the default platform: %v", err)
	}
	if _, _, err := ResolveImage(t.Context(), reg+"/test/img:multi", other, Options{}); err == nil ||
		!strings.Contains(err.Error(), "no manifest for platform "+other.String()+" (has: linux/"+runtime.GOARCH+")") {
		t.Fatalf("index without %s: %v", other, err)
	}

	if _, _, err := ResolveImage(t.Context(), reg+"/test/img:nope", nil, Options{}); err == nil || !strings.Contains(err.Error(), reg+"/test/img:nope") {
		t.Fatalf("missing tag: %v, want an error naming the source", err)
	}
}

// otherArch is an architecture other than the one the tests run on.
func otherArch() string {
	if runtime.GOARCH == "arm64" {
		return "amd64"
	}
	return "arm64"
}

func TestResolveRegistryDown(t *testing.T) {
	addr := deadAddr(t)
	_, _, err := ResolveImage(t.Context(), addr+"/test/img:v1", nil, Options{})
	if err == nil || !strings.Contains(err.Error(), addr+"/test/img:v1") || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("down registry: %v", err)
	}
}

// writeLayout writes a layout whose tag "v1" is a single image, "multi" an
// index of two platforms; it returns the images.
func writeLayout(t *testing.T, dir string) (v1img, amd, s390 v1.Image) {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(arch string) v1.Image {
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		img, err = mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: arch})
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	v1img = mk(runtime.GOARCH)
	if err := p.AppendImage(v1img, layout.WithAnnotations(map[string]string{RefNameAnnotation: "v1"})); err != nil {
		t.Fatal(err)
	}
	amd, s390 = mk(runtime.GOARCH), mk("s390x")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
		mutate.IndexAddendum{Add: s390, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "s390x"}}},
	)
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{RefNameAnnotation: "multi"})); err != nil {
		t.Fatal(err)
	}
	return v1img, amd, s390
}

func digestOf(t *testing.T, img v1.Image) string {
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func TestResolveLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lay:out") // a colon in DIR must not confuse TAG parsing
	v1img, amd, s390 := writeLayout(t, dir)

	img, src, err := ResolveImage(t.Context(), "oci-layout:"+dir+":v1", nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := index.Source{Layout: dir, Reference: "v1", Manifest: digestOf(t, v1img)}
	if src != want || digestOf(t, img) != want.Manifest {
		t.Fatalf("source %+v, want %+v", src, want)
	}

	// A relative DIR becomes absolute.
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, src, err := ResolveImage(t.Context(), "oci-layout:"+rel+":v1", nil, Options{}); err != nil || src.Layout != dir {
		t.Fatalf("relative layout: %+v, %v", src, err)
	}

	// A nested index chooses the platform.
	if img, _, err := ResolveImage(t.Context(), "oci-layout:"+dir+":multi", nil, Options{}); err != nil || digestOf(t, img) != digestOf(t, amd) {
		t.Fatalf("multi for default platform: %v", err)
	}
	img, src, err = ResolveImage(t.Context(), "oci-layout:"+dir+":multi", &v1.Platform{OS: "linux", Architecture: "s390x"}, Options{})
	if err != nil || digestOf(t, img) != digestOf(t, s390) || src.Manifest != digestOf(t, s390) {
		t.Fatalf("multi for s390x: %+v %v", src, err)
	}
	if _, _, err := ResolveImage(t.Context(), "oci-layout:"+dir+":multi", &v1.Platform{OS: "linux", Architecture: "riscv64"}, Options{}); err == nil || !strings.Contains(err.Error(), "riscv64") {
		t.Fatalf("missing platform: %v", err)
	}

	// A single-platform image is not taken for another platform.
	other := &v1.Platform{OS: "linux", Architecture: otherArch()}
	if _, _, err := ResolveImage(t.Context(), "oci-layout:"+dir+":v1", other, Options{}); err == nil ||
		!strings.Contains(err.Error(), "no manifest for platform "+other.String()+" (has: linux/"+runtime.GOARCH+")") {
		t.Fatalf("single-platform layout for %s: %v", other, err)
	}

	// Without TAG, two manifests are ambiguous; the error lists the tags.
	_, _, err = ResolveImage(t.Context(), "oci-layout:"+dir, nil, Options{})
	if err == nil || !strings.Contains(err.Error(), "v1") || !strings.Contains(err.Error(), "multi") {
		t.Fatalf("untagged, ambiguous: %v", err)
	}
	_, _, err = ResolveImage(t.Context(), "oci-layout:"+dir+":nope", nil, Options{})
	if err == nil || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "v1, multi") {
		t.Fatalf("bad tag: %v", err)
	}
	if _, _, err = ResolveImage(t.Context(), "oci-layout:"+filepath.Join(dir, "missing")+":v1", nil, Options{}); err == nil {
		t.Fatal("missing layout resolved")
	}

	// A layout with one manifest needs no TAG.
	one := t.TempDir()
	p, err := layout.Write(one, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(v1img); err != nil {
		t.Fatal(err)
	}
	_, src, err = ResolveImage(t.Context(), "oci-layout:"+one, nil, Options{})
	if err != nil || src.Layout != one || src.Reference != "" || src.Manifest != digestOf(t, v1img) {
		t.Fatalf("single manifest: %+v, %v", src, err)
	}
}

func TestSplitLayout(t *testing.T) {
	for in, want := range map[string][2]string{
		"dir":            {"dir", ""},
		"dir:tag":        {"dir", "tag"},
		"/a/b:c/d":       {"/a/b:c/d", ""},
		"../x/y:python":  {"../x/y", "python"},
		"/a:b/c:minbase": {"/a:b/c", "minbase"},
	} {
		if d, tag := splitLayout(in); d != want[0] || tag != want[1] {
			t.Errorf("splitLayout(%q) = %q, %q; want %q", in, d, tag, want)
		}
	}
}
