package fetcher

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"github.com/clipd/clipd/index"
)

// An archive whose decompression indexes keep their checkpoint windows in
// a windows blob (index.WindowsBlob) needs a span's window only when it
// fetches that span: the windows of the spans being fetched are read with
// one Range request, at the same time as the spans' compressed bytes, each
// verified against its SHA-256 and kept in the store, so that refetching
// an evicted span does not fetch its window again.

// windowKey is the cache entry of span i's compressed window.
func windowKey(digest string, spanSize int64, i int) string {
	return fmt.Sprintf("%s/window-%d/%d", digest, spanSize, i)
}

// openWindows returns the source of a's windows blob: the one the caller
// set (a registry blob of a published index, say), else the file beside the
// .clip, else the blob by digest in the image's repository, where a
// publisher pushes it. The closer is nil when the caller owns the source.
func (f *Fetcher) openWindows(a *index.Archive, stats *counters) (index.Windows, io.Closer, error) {
	w := a.Windows
	if w.Source != nil {
		return w.Source, nil, nil
	}
	file, err := a.OpenWindowsFile()
	if err == nil {
		b := &fileBlob{digest: w.Digest, f: file, size: w.Size, stats: stats}
		return b, b, nil
	}
	if !errors.Is(err, fs.ErrNotExist) || a.Source.Registry == "" || a.Source.Layout != "" {
		return nil, nil, fmt.Errorf("open windows blob %s: %w", short(w.Digest), err)
	}
	b, err := f.registryBlob(a.Source, index.Layer{Digest: w.Digest, Size: w.Size}, stats)
	if err != nil {
		return nil, nil, fmt.Errorf("open windows blob %s: %w", short(w.Digest), err)
	}
	f.log.Debug("windows file absent, reading windows from the registry", "archive", a.Path, "windows", w.Digest)
	return b, b, nil
}

// fetchWindows returns the verified compressed windows of spans lo..hi of x
// (those in only, every one when only is nil) that have one: from the
// store, or with one Range request of the windows blob. A window that fails
// verification is fetched once more on its own; bad bytes are never used or
// stored.
func (l *layerReader) fetchWindows(ctx context.Context, x *index.SpanIndex, lo, hi int, only map[int]bool) (map[int][]byte, error) {
	out := make(map[int][]byte)
	var need []int
	for i := lo; i <= hi; i++ {
		if (only != nil && !only[i]) || x.Refs[i].Length == 0 {
			continue
		}
		if w, ok := l.cachedWindow(x, i); ok {
			out[i] = w
			continue
		}
		need = append(need, i)
	}
	if len(need) == 0 {
		return out, nil
	}
	src := l.set.windows
	if src == nil {
		return nil, fmt.Errorf("read layer %s: its index keeps windows in a blob, and no windows source is open", short(l.layer.Digest))
	}
	from, to := x.Refs[need[0]].Offset, x.Refs[need[0]].Offset+x.Refs[need[0]].Length
	for _, i := range need[1:] {
		r := x.Refs[i]
		from, to = min(from, r.Offset), max(to, r.Offset+r.Length)
	}
	buf, err := readWindowRange(ctx, src, from, to-from)
	if err != nil {
		return nil, fmt.Errorf("read layer %s: windows: %w", short(l.layer.Digest), err)
	}
	for _, i := range need {
		r := x.Refs[i]
		w := buf[r.Offset-from : r.Offset-from+r.Length]
		if err := index.VerifyWindow(r, w); err != nil {
			l.set.f.log.Warn("window failed verification, fetching it again", "layer", l.layer.Digest, "span", i, "error", err)
			if w, err = readWindowRange(ctx, src, r.Offset, r.Length); err == nil {
				err = index.VerifyWindow(r, w)
			}
			if err != nil {
				l.set.f.log.Error("window unusable", "layer", l.layer.Digest, "span", i, "error", err)
				return nil, fmt.Errorf("read layer %s: span %d: %w", short(l.layer.Digest), i, err)
			}
		}
		if store := l.set.f.store; store != nil {
			if _, err := store.Put(windowKey(l.layer.Digest, x.SpanSize, i), bytes.NewReader(w)); err != nil {
				l.set.f.log.Debug("could not cache window", "layer", l.layer.Digest, "span", i, "error", err)
			}
		}
		out[i] = w
	}
	return out, nil
}

// cachedWindow returns span i's window from the store when it is there and
// still matches its digest.
func (l *layerReader) cachedWindow(x *index.SpanIndex, i int) ([]byte, bool) {
	store := l.set.f.store
	if store == nil {
		return nil, false
	}
	r := x.Refs[i]
	w := make([]byte, r.Length)
	n, err := store.ReadAt(windowKey(l.layer.Digest, x.SpanSize, i), w, 0)
	if n != len(w) || (err != nil && !errors.Is(err, io.EOF)) {
		return nil, false
	}
	if index.VerifyWindow(r, w) != nil {
		return nil, false
	}
	return w, true
}

func readWindowRange(ctx context.Context, src index.Windows, off, n int64) ([]byte, error) {
	rc, err := src.ReadRange(ctx, off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("range %d-%d: %w", off, off+n-1, err)
	}
	return buf, nil
}
