package fetcher

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/zran"
)

// A span far larger than the index's span size is a layer that could not be
// cut: a single zstd frame (or a deflate stream without block boundaries).
// Waiting for all of it before serving the first read would make a cold read
// cost the whole layer's transfer time, so such a span is streamed: one
// fetch, decoded into a scratch file as it arrives, reads served as soon as
// their bytes are there. The span's digest can only be checked at its end:
// a mismatch fails the stream and nothing is cached (bytes already served
// came from the registry unverified, as with any non-lazy pull; zstd's frame
// checksum, when present, is checked by the decoder).
func oversized(x *index.SpanIndex, s zran.Span) bool { return s.USize > 2*x.SpanSize }

// spanStream is one streamed span, shared by every reader that needs it.
type spanStream struct {
	mu      sync.Mutex
	file    *os.File // decoded bytes, unlinked: gone once closed
	decoded int64    // bytes of the span in file
	err     error    // final error; io.EOF once complete and verified
	changed chan struct{}
	readers int
}

// readStreamed serves [off, off+len(p)) from span i while it streams.
func (l *layerReader) readStreamed(ctx context.Context, x *index.SpanIndex, i int, p []byte, off int64) (int, error) {
	s := x.Spans[i]
	st, err := l.set.f.joinStream(l, x, i)
	if err != nil {
		return 0, err
	}
	defer l.set.f.leaveStream(st)
	rel := off - s.UOff
	need := min(rel+int64(len(p)), s.USize)
	for {
		st.mu.Lock()
		decoded, serr, changed := st.decoded, st.err, st.changed
		st.mu.Unlock()
		if decoded >= need {
			n, err := st.file.ReadAt(p[:need-rel], rel)
			if err == nil && need-rel < int64(len(p)) {
				err = io.EOF
			}
			return n, err
		}
		if serr != nil && serr != io.EOF {
			return 0, serr
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return 0, fmt.Errorf("read layer %s: %w", short(l.layer.Digest), ctx.Err())
		}
	}
}

// joinStream returns the live stream of span i, starting it if needed.
func (f *Fetcher) joinStream(l *layerReader, x *index.SpanIndex, i int) (*spanStream, error) {
	key := l.spanKey(x, i)
	f.mu.Lock()
	defer f.mu.Unlock()
	if st := f.streams[key]; st != nil {
		st.mu.Lock()
		st.readers++
		st.mu.Unlock()
		return st, nil
	}
	tmp, err := os.CreateTemp(f.scratchDir(), ".stream-*")
	if err != nil {
		return nil, fmt.Errorf("read layer %s: scratch file: %w", short(l.layer.Digest), err)
	}
	os.Remove(tmp.Name())
	st := &spanStream{file: tmp, changed: make(chan struct{}), readers: 1 + 1} // the streamer holds one
	f.streams[key] = st
	go func() {
		err := l.stream(l.set.ctx, x, i, st)
		st.mu.Lock()
		st.err = err
		close(st.changed)
		st.changed = make(chan struct{})
		st.mu.Unlock()
		f.mu.Lock()
		delete(f.streams, key)
		f.mu.Unlock()
		f.leaveStream(st)
	}()
	return st, nil
}

func (f *Fetcher) leaveStream(st *spanStream) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.readers--
	if st.readers == 0 {
		st.file.Close()
	}
}

func (f *Fetcher) scratchDir() string {
	if f.store != nil {
		return f.store.Dir()
	}
	return os.TempDir()
}

// progressWriter appends decoded bytes to the scratch file and wakes the
// readers waiting for them.
type progressWriter struct{ st *spanStream }

func (w progressWriter) Write(b []byte) (int, error) {
	st := w.st
	st.mu.Lock()
	off := st.decoded
	st.mu.Unlock()
	n, err := st.file.WriteAt(b, off)
	st.mu.Lock()
	st.decoded += int64(n)
	close(st.changed)
	st.changed = make(chan struct{})
	st.mu.Unlock()
	return n, err
}

// stream fetches span i with one request, decodes it into st as it arrives,
// checks its digest at the end and then caches it.
func (l *layerReader) stream(ctx context.Context, x *index.SpanIndex, i int, st *spanStream) (err error) {
	start := time.Now()
	var windows map[int][]byte
	if x.External() {
		if windows, err = l.fetchWindows(ctx, x, i, i, nil); err != nil {
			return err
		}
	}
	s, err := l.span(x, i, windows[i])
	if err != nil {
		return err
	}
	var body io.ReadCloser
	if size, serr := l.blob.Size(ctx); serr == nil && s.COff == 0 && s.CEnd == size {
		body, err = l.blob.Open(ctx)
	} else {
		body, err = l.blob.ReadRange(ctx, s.COff, s.CEnd-s.COff)
	}
	if err != nil {
		return err
	}
	defer body.Close()
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(body, s.CEnd-s.COff), h)
	var dec io.Reader
	switch x.Compression {
	case zran.Zstd:
		zr, err := zran.ResumeZstd(src, s.UOff)
		if err != nil {
			return err
		}
		defer zr.Close()
		dec = zr
	case zran.Gzip:
		zr, err := zran.Resume(src, zran.Checkpoint{COff: s.COff, Bits: s.Bits, UOff: s.UOff, Window: s.Window, Member: s.Member}, zran.Options{})
		if err != nil {
			return err
		}
		dec = zr
	default:
		dec = src
	}
	if _, err := io.CopyN(progressWriter{st}, dec, s.USize); err != nil {
		return fmt.Errorf("read layer %s: stream span %d: %w", short(l.layer.Digest), i, err)
	}
	io.Copy(h, src) // bytes after the last decoded one belong to the span too
	if [32]byte(h.Sum(nil)) != s.Digest {
		l.set.f.log.Error("span unusable", "layer", l.layer.Digest, "span", i, "error", "digest mismatch after streaming")
		return fmt.Errorf("read layer %s: span %d: %w", short(l.layer.Digest), i, zran.ErrDigest)
	}
	if l.set.f.store != nil {
		if _, err := l.set.f.store.Put(l.spanKey(x, i), io.NewSectionReader(st.file, 0, s.USize)); err != nil {
			l.set.f.log.Warn("could not cache span", "layer", l.layer.Digest, "span", i, "error", err)
		}
	}
	l.set.f.log.Info("streamed span", "layer", l.layer.Digest, "span", i, "bytes", s.CEnd-s.COff,
		"uncompressed", s.USize, "duration", time.Since(start).Round(time.Millisecond))
	return io.EOF
}
