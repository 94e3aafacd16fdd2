package mounter

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/fetcher"
	"github.com/clipd/clipd/index"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

type file struct {
	name string
	data []byte
}

func tarLayer(t *testing.T, files []file) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// fixture writes a two-layer image into an OCI layout, indexes it with the
// real index and fetcher packages and returns the .clip path and the
// content of /data/big.
func fixture(t *testing.T) (string, []byte) {
	t.Helper()
	big := make([]byte, 3<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image,
		tarLayer(t, []file{{"etc/hello", []byte("hello from layer 1\n")}}),
		tarLayer(t, []file{{"data/big", big}}),
	)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Cmd = []string{"/bin/sh"}
	cf.Config.Env = []string{"PATH=/usr/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img, layout.WithAnnotations(map[string]string{fetcher.RefNameAnnotation: "v1"})); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	rimg, src, err := fetcher.ResolveImage(ctx, "oci-layout:"+string(lp)+":v1", nil, fetcher.Options{})
	if err != nil {
		t.Fatalf("resolve: %v", err)
	}
	a, err := index.Build(ctx, rimg, index.BuildOptions{Source: src})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	clip := filepath.Join(dir, "image.clip")
	if err := index.WriteFile(clip, a); err != nil {
		t.Fatalf("write: %v", err)
	}
	return clip, big
}

func newMounter(t *testing.T) *Mounter {
	t.Helper()
	m, err := New(Config{CacheDir: filepath.Join(t.TempDir(), "cache"), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func waitDone(t *testing.T, m *Filesystem) {
	t.Helper()
	select {
	case <-m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done not closed after the filesystem went away")
	}
}

func TestMountReadUnmount(t *testing.T) {
	clip, big := fixture(t)
	m := newMounter(t)
	mp := t.TempDir()
	mt, err := m.Mount(context.Background(), daemon.MountRequest{Archive: clip, Mountpoint: mp, Prefetch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mt.Unmount(true)

	hello, err := os.ReadFile(filepath.Join(mp, "etc/hello"))
	if err != nil || string(hello) != "hello from layer 1\n" {
		t.Fatalf("read etc/hello: %q %v", hello, err)
	}
	got, err := os.ReadFile(filepath.Join(mp, "data/big"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read data/big: %d bytes, %v", len(got), err)
	}
	st := mt.Stats()
	if st.Reads == 0 || st.BytesRead < int64(len(big)) || st.BytesFetched == 0 || st.Requests == 0 {
		t.Errorf("stats do not merge fetcher and mount figures: %+v", st)
	}

	img, ok := mt.Image().(Image)
	if !ok {
		t.Fatalf("image summary %T", mt.Image())
	}
	if img.Format != 2 || img.Layers != 2 || img.Files != 2 || img.OS != "linux" || img.Architecture != runtime.GOARCH ||
		!slices.Equal(img.Cmd, []string{"/bin/sh"}) || !slices.Equal(img.Env, []string{"PATH=/usr/bin"}) ||
		!strings.HasPrefix(img.Digest, "sha256:") || !strings.HasPrefix(img.Source, "oci-layout:") {
		t.Errorf("image summary: %+v", img)
	}

	if err := mt.Unmount(false); err != nil {
		t.Fatal(err)
	}
	waitDone(t, mt)
	if entries, err := os.ReadDir(mp); err != nil || len(entries) != 0 {
		t.Errorf("mountpoint after unmount: %v %v", entries, err)
	}
}

func TestDoneWhenUnmountedFromOutside(t *testing.T) {
	clip, _ := fixture(t)
	m := newMounter(t)
	mp := t.TempDir()
	mt, err := m.Mount(context.Background(), daemon.MountRequest{Archive: clip, Mountpoint: mp})
	if err != nil {
		t.Fatal(err)
	}
	defer mt.Unmount(true)
	if err := unix.Unmount(mp, 0); err != nil {
		t.Fatalf("umount from outside: %v", err)
	}
	waitDone(t, mt)
}

func TestMountErrors(t *testing.T) {
	m := newMounter(t)
	ctx := context.Background()
	bad := filepath.Join(t.TempDir(), "bad.clip")
	if err := os.WriteFile(bad, []byte("not a clip file at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := m.Mount(ctx, daemon.MountRequest{Archive: bad, Mountpoint: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("corrupt archive: %v", err)
	}
	_, err = m.Mount(ctx, daemon.MountRequest{Archive: bad, Mountpoint: t.TempDir(), Writable: true})
	if err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Errorf("writable: %v", err)
	}
	if _, err := New(Config{CacheDir: "/proc/clipd-cannot-be-here"}); err == nil {
		t.Error("a cache in /proc was accepted")
	}
}
