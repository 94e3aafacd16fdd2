package bench

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/klauspost/compress/gzip"
)

// TestGenerateScaleImage generates a small scale image twice: the layouts
// must be byte-identical (seeded), readable as an OCI layout, and hold the
// counts and bytes asked for.
func TestGenerateScaleImage(t *testing.T) {
	o := ScaleOptions{Files: 600, Bytes: 3 << 20, Layers: 3, Seed: 7, Workers: 2, Tag: "t"}
	a, err := GenerateScaleImage(context.Background(), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := GenerateScaleImage(context.Background(), t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	if a.Manifest != b.Manifest || a.Compressed != b.Compressed {
		t.Fatalf("not deterministic: manifests %s and %s", a.Manifest, b.Manifest)
	}
	if a.Files != 600 || a.Uncompressed != 3<<20 || a.Layers != 3 || a.Symlinks == 0 || a.Hardlinks == 0 {
		t.Errorf("counts %+v", a)
	}

	idx, err := layout.ImageIndexFromPath(a.Dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "t" {
		t.Fatalf("index.json: %+v, %v", im, err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil || len(ls) != 3 {
		t.Fatalf("layers: %d, %v", len(ls), err)
	}
	var files, links, symlinks, maxDepth int
	var contents, compressed int64
	for _, l := range ls {
		// Layer digests and diff IDs are verified by go-containerregistry
		// as the layer is read to its end.
		n, _ := l.Size()
		compressed += n
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			switch h.Typeflag {
			case tar.TypeReg:
				files++
				contents += h.Size
			case tar.TypeLink:
				links++
			case tar.TypeSymlink:
				symlinks++
			}
			maxDepth = max(maxDepth, strings.Count(strings.TrimSuffix(h.Name, "/"), "/")+1)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		rc.Close()
	}
	if files != a.Files || contents != a.Uncompressed || links != a.Hardlinks || symlinks != a.Symlinks || compressed != a.Compressed {
		t.Errorf("read back %d files, %d bytes, %d hard links, %d symlinks, %d compressed; generator said %+v", files, contents, links, symlinks, compressed, a)
	}
	if maxDepth < 7 {
		t.Errorf("deepest entry at depth %d, want a realistic tree (≥ 7)", maxDepth)
	}
	// Text and random contents: the layers compress, but not to nothing.
	if r := float64(a.Compressed) / float64(a.Uncompressed); r < 0.25 || r > 0.8 {
		t.Errorf("compressed / uncompressed = %.2f, want a mixture (0.25–0.8)", r)
	}
	// Each layer is one gzip member that a plain gzip reader accepts.
	f, err := os.Open(a.LayerBlobs[0])
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := gzip.NewReader(f); err != nil {
		t.Errorf("layer blob %s: %v", filepath.Base(a.LayerBlobs[0]), err)
	}
}
