package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"
)

// byteProgress prints how far the current layer's download has come while
// clipd index streams it: a line at most every interval on a log or pipe,
// or one line rewritten in place (\r) on a terminal.
type byteProgress struct {
	w        io.Writer
	terminal bool
	interval time.Duration
	now      func() time.Time

	mu            sync.Mutex
	layer, layers int
	digest        string
	total, done   int64
	last          time.Time
	pending       bool // a \r line is on screen, not yet ended
}

func newByteProgress(w io.Writer) *byteProgress {
	p := &byteProgress{w: w, interval: time.Second, now: time.Now}
	if isTerminal(w) {
		p.terminal, p.interval = true, 200*time.Millisecond
	}
	return p
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// start begins layer n of layers, of total compressed bytes.
func (p *byteProgress) start(n, layers int, digest string, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.layer, p.layers, p.digest, p.total, p.done = n, layers, digest, total, 0
	p.last = p.now()
}

// add counts n more bytes of the current layer and prints when it is time.
func (p *byteProgress) add(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += int64(n)
	if now := p.now(); now.Sub(p.last) >= p.interval {
		p.last = now
		line := fmt.Sprintf("layer %d/%d %s %s", p.layer, p.layers, shortDigest(p.digest), megabytes(p.done, p.total))
		if p.terminal {
			fmt.Fprintf(p.w, "\r\033[K%s", line)
			p.pending = true
		} else {
			fmt.Fprintln(p.w, line)
		}
	}
}

// println prints a line of its own, after ending a \r line on screen.
func (p *byteProgress) println(s string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending {
		fmt.Fprint(p.w, "\r\033[K")
		p.pending = false
	}
	fmt.Fprintln(p.w, s)
}

func megabytes(done, total int64) string {
	return fmt.Sprintf("%.1f/%.1f MB", float64(done)/1e6, float64(total)/1e6)
}

// progressImage is an image whose layers count the compressed bytes read
// from them (index.Build reads each layer once, from Compressed).
type progressImage struct {
	v1.Image
	p *byteProgress
}

func (i progressImage) Layers() ([]v1.Layer, error) {
	ls, err := i.Image.Layers()
	if err != nil {
		return nil, err
	}
	out := make([]v1.Layer, len(ls))
	for j, l := range ls {
		out[j] = progressLayer{Layer: l, p: i.p}
	}
	return out, nil
}

type progressLayer struct {
	v1.Layer
	p *byteProgress
}

func (l progressLayer) Compressed() (io.ReadCloser, error) {
	rc, err := l.Layer.Compressed()
	if err != nil {
		return nil, err
	}
	return &countingReadCloser{ReadCloser: rc, p: l.p}, nil
}

type countingReadCloser struct {
	io.ReadCloser
	p *byteProgress
}

func (c *countingReadCloser) Read(b []byte) (int, error) {
	n, err := c.ReadCloser.Read(b)
	c.p.add(n)
	return n, err
}
