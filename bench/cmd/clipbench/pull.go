package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
)

// goPull is the full pull without lazy loading, done as fast as Go allows:
// every layer is downloaded at once, and each is unpacked into root (in
// layer order) while its bytes arrive, so download and unpacking overlap.
func goPull(ctx context.Context, ref, root string, tr http.RoundTripper) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("pull %s: %w", ref, err)
	}
	if tr == nil {
		tr = remote.DefaultTransport
	}
	img, err := remote.Image(r, remote.WithContext(ctx), remote.WithTransport(tr))
	if err != nil {
		return fmt.Errorf("pull %s: manifest: %w", ref, err)
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("pull %s: layers: %w", ref, err)
	}
	bufs := make([]*growBuf, len(layers))
	for i := range bufs {
		bufs[i] = newGrowBuf()
	}
	g, gctx := errgroup.WithContext(ctx)
	for i, l := range layers {
		g.Go(func() error {
			rc, err := l.Compressed()
			if err != nil {
				bufs[i].finish(err)
				return fmt.Errorf("pull %s: layer %d: %w", ref, i, err)
			}
			defer rc.Close()
			_, err = io.Copy(bufs[i], rc)
			bufs[i].finish(err)
			if err != nil {
				return fmt.Errorf("pull %s: layer %d: %w", ref, i, err)
			}
			return nil
		})
	}
	g.Go(func() error {
		for i, b := range bufs {
			if err := applyLayer(gctx, root, b.reader()); err != nil {
				return fmt.Errorf("pull %s: unpack layer %d: %w", ref, i, err)
			}
		}
		return nil
	})
	return g.Wait()
}

// skopeoUmociPull is the full pull as the Debian tools do it: skopeo copy
// to an OCI layout, then umoci unpack. The rootfs is <bundle>/rootfs.
func skopeoUmociPull(ctx context.Context, ref, dir string) (rootfs string, err error) {
	layout := filepath.Join(dir, "layout")
	bundle := filepath.Join(dir, "bundle")
	if _, err := run(ctx, "skopeo", "copy", "--quiet", "--src-tls-verify=false", "docker://"+ref, "oci:"+layout+":bench"); err != nil {
		return "", err
	}
	if _, err := run(ctx, "umoci", "unpack", "--image", layout+":bench", bundle); err != nil {
		return "", err
	}
	return filepath.Join(bundle, "rootfs"), nil
}

// growBuf is an in-memory file written by one goroutine and read by
// another while it grows: the unpacker follows the download.
type growBuf struct {
	mu   sync.Mutex
	cond *sync.Cond
	data []byte
	done bool
	err  error
}

func newGrowBuf() *growBuf {
	b := &growBuf{}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *growBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.data = append(b.data, p...)
	b.mu.Unlock()
	b.cond.Broadcast()
	return len(p), nil
}

func (b *growBuf) finish(err error) {
	b.mu.Lock()
	b.done, b.err = true, err
	b.mu.Unlock()
	b.cond.Broadcast()
}

func (b *growBuf) reader() io.Reader { return &growReader{b: b} }

type growReader struct {
	b   *growBuf
	off int
}

func (r *growReader) Read(p []byte) (int, error) {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	for r.off >= len(b.data) && !b.done {
		b.cond.Wait()
	}
	if r.off >= len(b.data) {
		if b.err != nil {
			return 0, b.err
		}
		return 0, io.EOF
	}
	n := copy(p, b.data[r.off:])
	r.off += n
	return n, nil
}
