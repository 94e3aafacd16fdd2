package fetcher

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/zran"
)

// DefaultSpanSize is the span size of decompression indexes the fetcher
// builds itself, for layers whose .clip file carries none.
const DefaultSpanSize = 4 << 20

// spanKey is the cache entry of one decompressed span. The span size is
// part of the key: indexes with other geometry cut other spans.
func spanKey(digest string, spanSize int64, i int) string {
	return fmt.Sprintf("%s/span-%d/%d", digest, spanSize, i)
}

// indexKey is the cache entry of a decompression index the fetcher built by
// streaming a layer whose .clip file had none.
func indexKey(digest string) string {
	return fmt.Sprintf("%s/zindex-%d", digest, DefaultSpanSize)
}

// readSpans serves [off, off+len(p)) of the uncompressed layer through its
// spans: cached spans are read from the store; the missing ones are fetched
// with one Range request, verified, decoded and stored. streamed says the
// spans were just fetched by streaming the layer (so not a cache hit).
func (l *layerReader) readSpans(ctx context.Context, x *index.SpanIndex, p []byte, off int64, streamed bool) (int, error) {
	if off >= x.USize {
		return 0, io.EOF
	}
	end := min(off+int64(len(p)), x.USize)
	first, last := x.Find(off), x.Find(end-1)
	fresh, err := l.fetchMissing(ctx, x, first, last)
	if err != nil {
		return 0, err
	}
	n := 0
	for i := first; i <= last; i++ {
		s := x.Spans[i]
		from := max(off, s.UOff)
		to := min(end, s.UOff+s.USize)
		dst := p[from-off : to-off]
		if data, ok := fresh[i]; ok {
			copy(dst, data[from-s.UOff:])
		} else if err := l.readCachedSpan(x, i, dst, from-s.UOff); err != nil {
			return n, err
		} else if !streamed {
			l.set.stats.cacheHits.Add(1)
		}
		n += len(dst)
	}
	if end < off+int64(len(p)) {
		return n, io.EOF
	}
	return n, nil
}

func (l *layerReader) readCachedSpan(x *index.SpanIndex, i int, dst []byte, at int64) error {
	f, err := l.set.f.store.Get(spanKey(l.layer.Digest, x.SpanSize, i))
	if err != nil {
		return fmt.Errorf("read layer %s: span %d: %w", short(l.layer.Digest), i, err)
	}
	defer f.Close()
	if _, err := f.ReadAt(dst, at); err != nil {
		return fmt.Errorf("read layer %s: span %d from cache: %w", short(l.layer.Digest), i, err)
	}
	return nil
}

// fetchMissing makes sure spans first..last are in the store and returns
// the ones it decoded itself (so that this read need not read them back).
// Concurrent readers of the same spans share one fetch.
func (l *layerReader) fetchMissing(ctx context.Context, x *index.SpanIndex, first, last int) (map[int][]byte, error) {
	store := l.set.f.store
	if store == nil {
		return nil, fmt.Errorf("read layer %s: span reads need a cache", short(l.layer.Digest))
	}
	lo, hi := -1, -1
	for i := first; i <= last; i++ {
		if !store.Has(spanKey(l.layer.Digest, x.SpanSize, i)) {
			if lo < 0 {
				lo = i
			}
			hi = i
		}
	}
	if lo < 0 {
		return nil, nil
	}
	key := fmt.Sprintf("%s/%d-%d", spanKey(l.layer.Digest, x.SpanSize, lo), lo, hi)
	for {
		ch := l.set.f.group.DoChan(key, func() (any, error) {
			return l.fetchSpans(ctx, x, lo, hi)
		})
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read layer %s: %w", short(l.layer.Digest), ctx.Err())
		case r := <-ch:
			if r.Err != nil && r.Shared && isCtxErr(r.Err) && ctx.Err() == nil {
				continue // the reader that led the fetch gave up; this one has not
			}
			if r.Err != nil {
				return nil, r.Err
			}
			return r.Val.(map[int][]byte), nil
		}
	}
}

// fetchSpans fetches the compressed bytes of spans lo..hi with one Range
// request, then verifies, decodes and stores each span. A span whose bytes
// fail verification is fetched once more on its own; bad bytes are never
// stored.
func (l *layerReader) fetchSpans(ctx context.Context, x *index.SpanIndex, lo, hi int) (map[int][]byte, error) {
	start := time.Now()
	base := x.Spans[lo].COff
	buf, err := l.fetchRange(ctx, base, x.Spans[hi].CEnd-base)
	if err != nil {
		return nil, err
	}
	out := make(map[int][]byte, hi-lo+1)
	for i := lo; i <= hi; i++ {
		s, err := x.Span(i)
		if err != nil {
			return nil, fmt.Errorf("read layer %s: %w", short(l.layer.Digest), err)
		}
		data, err := zran.DecodeSpan(x.Compression, s, buf[s.COff-base:s.CEnd-base])
		if errors.Is(err, zran.ErrDigest) {
			l.set.f.log.Warn("span failed verification, fetching it again", "layer", l.layer.Digest, "span", i, "error", err)
			again, ferr := l.fetchRange(ctx, s.COff, s.CEnd-s.COff)
			if ferr != nil {
				return nil, ferr
			}
			data, err = zran.DecodeSpan(x.Compression, s, again)
		}
		if err != nil {
			l.set.f.log.Error("span unusable", "layer", l.layer.Digest, "span", i, "error", err)
			return nil, fmt.Errorf("read layer %s: span %d: %w", short(l.layer.Digest), i, err)
		}
		if _, err := l.set.f.store.Put(spanKey(l.layer.Digest, x.SpanSize, i), bytes.NewReader(data)); err != nil {
			// Serving matters more than caching: this read still gets its
			// bytes; the next one fetches again.
			l.set.f.log.Warn("could not cache span", "layer", l.layer.Digest, "span", i, "error", err)
		}
		out[i] = data
	}
	l.set.f.log.Debug("fetched spans", "layer", l.layer.Digest, "spans", fmt.Sprintf("%d-%d", lo, hi),
		"bytes", x.Spans[hi].CEnd-base, "duration", time.Since(start).Round(time.Microsecond))
	return out, nil
}

func (l *layerReader) fetchRange(ctx context.Context, off, n int64) ([]byte, error) {
	rc, err := l.blob.ReadRange(ctx, off, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	buf := make([]byte, n)
	if _, err := io.ReadFull(rc, buf); err != nil {
		return nil, fmt.Errorf("fetch layer %s: range %d-%d: %w", short(l.layer.Digest), off, off+n-1, err)
	}
	return buf, nil
}

// streamedIndex returns the decompression index of a layer whose .clip file
// has none: from the store when this host built it before, otherwise by
// streaming the whole blob once (verifying its digest), storing every span
// on the way. Later reads, and later mounts, are lazy.
func (l *layerReader) streamedIndex(ctx context.Context) (*index.SpanIndex, error) {
	key := indexKey(l.layer.Digest)
	for {
		ch := l.set.f.group.DoChan(key, func() (any, error) {
			if x, err := l.loadIndex(key); err == nil {
				return x, nil
			}
			return l.buildIndex(ctx, key)
		})
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read layer %s: %w", short(l.layer.Digest), ctx.Err())
		case r := <-ch:
			if r.Err != nil && r.Shared && isCtxErr(r.Err) && ctx.Err() == nil {
				continue
			}
			if r.Err != nil {
				return nil, r.Err
			}
			return r.Val.(*index.SpanIndex), nil
		}
	}
}

func (l *layerReader) loadIndex(key string) (*index.SpanIndex, error) {
	if l.set.f.store == nil {
		return nil, errNoCache
	}
	f, err := l.set.f.store.Get(key)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 1<<30))
	if err != nil {
		return nil, err
	}
	var x index.SpanIndex
	if err := x.UnmarshalBinary(b); err != nil {
		return nil, fmt.Errorf("cached index of layer %s: %w", short(l.layer.Digest), err)
	}
	return &x, nil
}

var errNoCache = errors.New("no cache")

func (l *layerReader) buildIndex(ctx context.Context, key string) (*index.SpanIndex, error) {
	if l.set.f.store == nil {
		return nil, fmt.Errorf("read layer %s: a compressed layer without a decompression index needs a cache", short(l.layer.Digest))
	}
	digest := l.layer.Digest
	alg, want, _ := strings.Cut(digest, ":")
	if alg != "sha256" {
		return nil, fmt.Errorf("fetch layer %s: unsupported digest algorithm %q", short(digest), alg)
	}
	start := time.Now()
	body, err := l.blob.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	h := sha256.New()
	ir, err := zran.NewIndexReader(io.TeeReader(body, h), DefaultSpanSize)
	if err != nil {
		return nil, fmt.Errorf("fetch layer %s: %w", short(digest), err)
	}
	defer ir.Close()
	// The uncompressed layer goes to a scratch file in the store's
	// directory; spans are cut from it once the digest is known good.
	tmp, err := os.CreateTemp(l.set.f.store.Dir(), ".stream-*")
	if err != nil {
		return nil, fmt.Errorf("fetch layer %s: %w", short(digest), err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if _, err := io.Copy(tmp, ir); err != nil {
		return nil, fmt.Errorf("fetch layer %s: %w", short(digest), err)
	}
	if _, err := io.Copy(h, body); err != nil { // bytes after the compressed stream
		return nil, fmt.Errorf("fetch layer %s: %w", short(digest), err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		return nil, fmt.Errorf("fetch layer %s: digest mismatch: blob hashes to sha256:%s", short(digest), got)
	}
	li, err := ir.Index()
	if err != nil {
		return nil, err
	}
	x, err := index.NewSpanIndex(li)
	if err != nil {
		return nil, err
	}
	for i, s := range x.Spans {
		if _, err := l.set.f.store.Put(spanKey(digest, x.SpanSize, i), io.NewSectionReader(tmp, s.UOff, s.USize)); err != nil {
			return nil, fmt.Errorf("fetch layer %s: cache span %d: %w", short(digest), i, err)
		}
	}
	b, err := x.MarshalBinary()
	if err != nil {
		return nil, err
	}
	if _, err := l.set.f.store.Put(key, bytes.NewReader(b)); err != nil {
		return nil, fmt.Errorf("fetch layer %s: cache index: %w", short(digest), err)
	}
	l.set.f.rememberCompression(digest, li.Compression)
	l.set.f.log.Info("indexed layer while streaming it", "layer", digest, "compression", li.Compression,
		"bytes", li.CSize, "uncompressed", li.USize, "spans", len(x.Spans), "duration", time.Since(start).Round(time.Millisecond))
	return x, nil
}
