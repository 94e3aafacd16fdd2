package mounter

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/clipd/clipd/daemon"
	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/profile"
)

// With "prefetch", every span is fetched in the background before anything
// is read; reading the files afterwards fetches nothing more. Without it,
// nothing is fetched until a read.
func TestPrefetch(t *testing.T) {
	clip, big := fixture(t)
	a, err := index.Open(clip)
	if err != nil {
		t.Fatal(err)
	}
	var blobs int64
	for _, l := range a.Layers {
		blobs += l.Size
	}
	m := newMounter(t)

	// A mount without prefetch, beside one with: by the time the second
	// has fetched the whole image, the first has fetched nothing.
	lazy, err := m.Mount(context.Background(), daemon.MountRequest{Archive: clip, Mountpoint: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		lazy.Unmount(true)
		waitDone(t, lazy)
	}()

	mp := t.TempDir()
	mt, err := m.Mount(context.Background(), daemon.MountRequest{Archive: clip, Mountpoint: mp, Prefetch: true})
	if err != nil {
		t.Fatal(err)
	}
	defer mt.Unmount(true)
	deadline := time.Now().Add(20 * time.Second)
	for mt.Stats().BytesFetched < blobs {
		if time.Now().After(deadline) {
			t.Fatalf("prefetch fetched %d of %d bytes", mt.Stats().BytesFetched, blobs)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := lazy.Stats(); st.BytesFetched != 0 {
		t.Fatalf("a mount without prefetch fetched %d bytes before any read", st.BytesFetched)
	}
	before := mt.Stats()
	got, err := os.ReadFile(filepath.Join(mp, "data/big"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read data/big: %v", err)
	}
	if after := mt.Stats(); after.BytesFetched != before.BytesFetched {
		t.Fatalf("reading after the prefetch fetched %d more bytes", after.BytesFetched-before.BytesFetched)
	}
	// The prefetch's reads are not the workload's: only data/big's read
	// is recorded.
	touches, _ := layerTouches(mt.layers)
	big0 := a.Layers[1].Spans.Find(nodeOf(t, a, "/data/big").Offset)
	if len(touches) == 0 || touches[0].Ref != (profile.Ref{Layer: 1, Span: big0}) {
		t.Fatalf("touches %v, want data/big's from span %d of layer 1 first", touches, big0)
	}
}
