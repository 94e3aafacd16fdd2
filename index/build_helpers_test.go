package index

import (
	"archive/tar"
	"bytes"
	"context"
	"sort"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

var tm = time.Unix(1500000000, 123456789)

// te is one hand-made tar entry.
type te struct {
	h    tar.Header
	data string
}

func dirE(name string, mode int64) te {
	return te{h: tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: mode, ModTime: tm, Format: tar.FormatPAX}}
}

func fileE(name, data string) te {
	return te{h: tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data)), ModTime: tm, Format: tar.FormatPAX}, data: data}
}

func linkE(name, target string) te {
	return te{h: tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target, ModTime: tm, Format: tar.FormatPAX}}
}

func symE(name, target string) te {
	return te{h: tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777, ModTime: tm, Format: tar.FormatPAX}}
}

func tarBytes(t *testing.T, ents []te) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := e.h
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("write header %s: %v", h.Name, err)
		}
		if _, err := tw.Write([]byte(e.data)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// imageOf makes an OCI image of uncompressed layer blobs.
func imageOf(t *testing.T, blobs ...[]byte) v1.Image {
	t.Helper()
	var ls []v1.Layer
	for _, b := range blobs {
		ls = append(ls, static.NewLayer(b, types.OCIUncompressedLayer))
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), ls...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// buildLayers builds an image of the given layers and returns its nodes by path.
func buildLayers(t *testing.T, layers ...[]te) map[string]*Node {
	t.Helper()
	a, err := Build(context.Background(), imageOf(t, tarsOf(t, layers)...), BuildOptions{})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	checkSorted(t, a)
	return byPath(a)
}

// buildError builds the layers and returns Build's error, failing if there is none.
func buildError(t *testing.T, layers ...[]te) error {
	t.Helper()
	_, err := Build(context.Background(), imageOf(t, tarsOf(t, layers)...), BuildOptions{})
	if err == nil {
		t.Fatal("Build succeeded, want an error")
	}
	return err
}

func tarsOf(t *testing.T, layers [][]te) [][]byte {
	var blobs [][]byte
	for _, l := range layers {
		blobs = append(blobs, tarBytes(t, l))
	}
	return blobs
}

func byPath(a *Archive) map[string]*Node {
	m := map[string]*Node{}
	for _, n := range a.Nodes {
		m[n.Path] = n
	}
	return m
}

func checkSorted(t *testing.T, a *Archive) {
	t.Helper()
	if len(a.Nodes) == 0 || a.Nodes[0].Path != "/" {
		t.Fatalf("first node is not the root")
	}
	for i := 1; i < len(a.Nodes); i++ {
		if a.Nodes[i-1].Path >= a.Nodes[i].Path {
			t.Fatalf("nodes not sorted: %q before %q", a.Nodes[i-1].Path, a.Nodes[i].Path)
		}
	}
}

func paths(m map[string]*Node) []string {
	var out []string
	for p := range m {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

func wantPaths(t *testing.T, m map[string]*Node, want ...string) {
	t.Helper()
	got := paths(m)
	sort.Strings(want)
	if len(got) != len(want) {
		t.Fatalf("tree %q, want %q", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("tree %q, want %q", got, want)
		}
	}
}

func mustNode(t *testing.T, m map[string]*Node, p string) *Node {
	t.Helper()
	n := m[p]
	if n == nil {
		t.Fatalf("%s missing from tree %q", p, paths(m))
	}
	return n
}
