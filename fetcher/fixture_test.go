package fetcher

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/zran"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
)

// fixLayer is one test layer: its blob as stored and its uncompressed tar.
type fixLayer struct {
	comp   string
	blob   []byte
	tar    []byte
	digest string
	layer  v1.Layer
}

// makeTar returns a tar of a random file and a text file, about 2.5 MiB.
func makeTar(t testing.TB, seed uint64) []byte {
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed)}))
	random := make([]byte, 1<<20+12345)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	var text bytes.Buffer
	for i := 0; text.Len() < 3<<19; i++ {
		fmt.Fprintf(&text, "line %d of layer %d: the quick brown fox %d\n", i, seed, rng.IntN(1000))
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range []struct {
		name string
		data []byte
	}{{"random.bin", random}, {"text.txt", text.Bytes()}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func makeLayer(t testing.TB, comp string, seed uint64) fixLayer {
	raw := makeTar(t, seed)
	var blob bytes.Buffer
	var mt types.MediaType
	switch comp {
	case zran.None:
		blob.Write(raw)
		mt = types.OCIUncompressedLayer
	case zran.Gzip:
		zw := gzip.NewWriter(&blob)
		zw.Write(raw)
		zw.Close()
		mt = types.OCILayer
	case zran.Zstd:
		zw, err := zstd.NewWriter(&blob)
		if err != nil {
			t.Fatal(err)
		}
		zw.Write(raw)
		zw.Close()
		mt = types.OCILayerZStd
	}
	l := static.NewLayer(blob.Bytes(), mt)
	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return fixLayer{comp: comp, blob: blob.Bytes(), tar: raw, digest: d.String(), layer: l}
}

// fixture is an image of an uncompressed, a gzip and a zstd layer.
type fixture struct {
	layers []fixLayer
	img    v1.Image
}

func makeFixture(t testing.TB) *fixture {
	f := &fixture{}
	for i, c := range []string{zran.None, zran.Gzip, zran.Zstd} {
		f.layers = append(f.layers, makeLayer(t, c, uint64(i+1)))
	}
	img := empty.Image
	for _, l := range f.layers {
		var err error
		if img, err = mutate.AppendLayers(img, l.layer); err != nil {
			t.Fatal(err)
		}
	}
	img, err := mutate.ConfigFile(img, &v1.ConfigFile{OS: "linux", Architecture: runtime.GOARCH})
	if err != nil {
		t.Fatal(err)
	}
	f.img = mutate.MediaType(img, types.OCIManifestSchema1)
	return f
}

func (f *fixture) push(t testing.TB, ref string) {
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, f.img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// archive describes the fixture as clip would: digests and sizes only, no
// trustworthy compression.
func (f *fixture) archive(src index.Source) *index.Archive {
	a := &index.Archive{Format: 2, Source: src}
	for _, l := range f.layers {
		a.Layers = append(a.Layers, index.Layer{Digest: l.digest, Size: int64(len(l.blob)), MediaType: "application/vnd.oci.image.layer.v1.tar+gzip"})
	}
	return a
}
