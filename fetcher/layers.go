package fetcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clipd/clipd/index"
	"github.com/clipd/clipd/zran"
	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sys/unix"
)

// Layers gives one io.ReaderAt of uncompressed bytes per layer of an archive.
type Layers interface {
	// ReaderAt returns the reader of a.Layers[i].
	ReaderAt(i int) io.ReaderAt
	Stats() Stats
	Close() error
}

// ContextReaderAt is implemented by the readers of Layers: ReadAt bounded by
// ctx, for callers (FUSE requests) that can be interrupted.
type ContextReaderAt interface {
	io.ReaderAt
	ReadAtContext(ctx context.Context, p []byte, off int64) (int, error)
}

// OpenLayers returns readers for every layer of a: blobs come from the
// registry or layout named by a.Source (or the archive file itself for a v1
// archive) and are kept in the store. Nothing is fetched until a read; ctx
// only bounds opening, reads run until Close.
func (f *Fetcher) OpenLayers(ctx context.Context, a *index.Archive) (Layers, error) {
	return f.OpenLayersWith(ctx, a, nil)
}

// OpenFunc opens a local blob file read-only.
type OpenFunc func(path string) (*os.File, error)

// OpenLayersWith is OpenLayers with layout blobs opened by open (nil:
// os.Open): a serving process opens them with the rights of the peer that
// asked for the mount, since the archive names the layout.
func (f *Fetcher) OpenLayersWith(ctx context.Context, a *index.Archive, open OpenFunc) (Layers, error) {
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &layerSet{f: f, ctx: rctx, cancel: cancel}
	s.rec.start = time.Now()
	if a.Windows != nil {
		w, c, err := f.openWindows(a, &s.stats)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("open layers of %s: %w", archiveName(a), err)
		}
		s.windows = w
		if c != nil {
			s.extra = append(s.extra, c)
		}
	}
	var embedded Blob
	for i, l := range a.Layers {
		var (
			b   Blob
			err error
		)
		switch {
		case l.Embedded || a.Format == 1:
			if embedded == nil {
				if embedded, err = openFileBlob(a.Path, "archive "+a.Path, &s.stats); err == nil {
					s.extra = append(s.extra, embedded)
				}
			}
			b = embedded
		case a.Source.Layout != "":
			b, err = openLayoutBlob(a.Source.Layout, l.Digest, open, &s.stats)
		case a.Source.Registry != "":
			b, err = f.observed(f.registryBlob(a.Source, l, &s.stats))
		default:
			err = fmt.Errorf("open layer %s: the archive names no registry or layout", short(l.Digest))
		}
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("open layers of %s: layer %d: %w", archiveName(a), i, err)
		}
		lr := &layerReader{set: s, n: i, layer: l, blob: b, sharedBlob: b == embedded, index: l.Spans, ahead: readAhead{last: -1, upto: -1},
			origin: origin(a, l)}
		switch {
		case l.Embedded || a.Format == 1:
			// v1 data is stored raw inside the archive.
			lr.comp = zran.None
		case a.Extension > 0 && l.Compression != "":
			// clipd detected it from the bytes when it built the index;
			// files written by clip only know the media type.
			lr.comp = l.Compression
		}
		s.readers = append(s.readers, lr)
	}
	f.host.track(s)
	return s, nil
}

// origin names the source of layer l's blob for cache keys: the registry
// repository or the layout directory, or for data embedded in the archive
// the archive file itself (by device and inode: its path is a descriptor).
func origin(a *index.Archive, l index.Layer) string {
	switch {
	case l.Embedded || a.Format == 1:
		var st unix.Stat_t
		if err := unix.Stat(a.Path, &st); err == nil {
			return fmt.Sprintf("archive:%d:%d", st.Dev, st.Ino)
		}
		return "archive:" + a.Path
	case a.Source.Layout != "":
		return "layout:" + a.Source.Layout
	}
	return "registry:" + a.Source.Registry + "/" + a.Source.Repository
}

func archiveName(a *index.Archive) string {
	if a.Path != "" {
		return a.Path
	}
	return "archive"
}

func (f *Fetcher) registryBlob(src index.Source, l index.Layer, stats *counters) (*registryBlob, error) {
	var nopts []name.Option
	if slices.Contains(f.opts.Insecure, src.Registry) {
		nopts = append(nopts, name.Insecure)
	}
	repo, err := name.NewRepository(src.Registry+"/"+src.Repository, nopts...)
	if err != nil {
		return nil, fmt.Errorf("open layer %s: repository: %w", short(l.Digest), err)
	}
	return &registryBlob{f: f, repo: repo, digest: l.Digest, size: l.Size, stats: stats}, nil
}

// layerSet is what OpenLayers returns: the readers of one archive.
type layerSet struct {
	f       *Fetcher
	ctx     context.Context
	cancel  context.CancelFunc
	stats   counters
	readers []*layerReader
	extra   []io.Closer // shared blobs
	// windows reads the archive's windows blob; nil when its windows are
	// inline.
	windows index.Windows
	// rec records the spans demand reads touch (record.go).
	rec recording
	// predict is the plan of the replay running now, by span (replay.go):
	// nil when none runs.
	predict atomic.Pointer[map[SpanRef]int]
	// replaying says that replay has started fetching.
	replaying atomic.Bool
}

func (s *layerSet) ReaderAt(i int) io.ReaderAt {
	if i < 0 || i >= len(s.readers) {
		return errReaderAt{fmt.Errorf("layer %d of %d does not exist", i, len(s.readers))}
	}
	return s.readers[i]
}

func (s *layerSet) Stats() Stats { return s.stats.snapshot() }

func (s *layerSet) Close() error {
	s.cancel()
	s.f.host.untrack(s)
	var errs []error
	for _, r := range s.readers {
		errs = append(errs, r.close())
	}
	for _, c := range s.extra {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

type errReaderAt struct{ err error }

func (e errReaderAt) ReadAt([]byte, int64) (int, error) { return 0, e.err }

// layerReader serves uncompressed bytes of one layer through its spans in
// the store; an uncompressed layer in a local file (a layout, a v1
// archive) is read from the file directly.
type layerReader struct {
	set   *layerSet
	n     int // position of the layer in the archive
	layer index.Layer
	blob  Blob

	sharedBlob bool // closed by the set, not by this reader
	ahead      readAhead

	// origin names where the blob comes from (registry repository,
	// layout, archive file), for the cache keys of unverified spans.
	origin string

	// touched has a bit for every span a demand read touched, prefetched
	// one for every span prefetch fetched and no demand read has touched
	// since (record.go); nil until needed.
	touched, prefetched atomic.Pointer[spanBits]

	mu    sync.Mutex
	comp  string           // "" until known
	index *index.SpanIndex // nil until known
}

// spanKey is the cache entry of span i of x, an index of this layer.
func (l *layerReader) spanKey(x *index.SpanIndex, i int) string {
	return spanKey(l.layer.Digest, x, i, l.origin)
}

func (l *layerReader) ReadAt(p []byte, off int64) (int, error) {
	return l.ReadAtContext(l.set.ctx, p, off)
}

func (l *layerReader) ReadAtContext(ctx context.Context, p []byte, off int64) (int, error) {
	n, _, err := l.read(ctx, p, off)
	return n, err
}

// read is ReadAtContext that also says whether the read missed the cache
// (read-ahead follows a miss further).
func (l *layerReader) read(ctx context.Context, p []byte, off int64) (n int, missed bool, err error) {
	s := &l.set.stats
	s.reads.Add(1)
	if off < 0 {
		return 0, false, fmt.Errorf("read layer %s: negative offset %d", short(l.layer.Digest), off)
	}
	if err := l.set.ctx.Err(); err != nil {
		return 0, false, fmt.Errorf("read layer %s: layers closed", short(l.layer.Digest))
	}
	if x := l.spans(); x != nil {
		return l.readSpans(ctx, x, p, off, false)
	}
	// A layer another mount or process streamed before is lazy already.
	if x, err := l.loadIndex(indexKey(l.layer.Digest)); err == nil {
		l.setSpans(x)
		return l.readSpans(ctx, x, p, off, false)
	}
	comp, err := l.compression(ctx)
	if err != nil {
		return 0, false, err
	}
	if comp == zran.None {
		if _, local := l.blob.(*fileBlob); local || l.set.f.store == nil {
			// A local file is as fast as the cache, and without a
			// cache a span would be fetched for every read.
			n, err := l.readRange(ctx, p, off)
			return n, false, err
		}
		size, err := l.blob.Size(ctx)
		if err != nil {
			return 0, false, err
		}
		x := plainIndex(size)
		l.setSpans(x)
		return l.readSpans(ctx, x, p, off, false)
	}
	x, err := l.streamedIndex(ctx)
	if err != nil {
		return 0, false, err
	}
	l.setSpans(x)
	return l.readSpans(ctx, x, p, off, true)
}

// plainIndex cuts an uncompressed layer of size bytes into spans of
// DefaultSpanSize, the spans an index built by streaming the layer would
// have. It knows no digest of them (the .clip file carried no index): their
// bytes are served as the registry sends them, as Range reads of the blob
// would be.
func plainIndex(size int64) *index.SpanIndex {
	x := &index.SpanIndex{Compression: zran.None, SpanSize: DefaultSpanSize, CSize: size, USize: size}
	for off := int64(0); off < size; off += DefaultSpanSize {
		n := min(DefaultSpanSize, size-off)
		x.Spans = append(x.Spans, zran.Span{UOff: off, USize: n, COff: off, CEnd: off + n})
	}
	return x
}

func (l *layerReader) setSpans(x *index.SpanIndex) {
	l.mu.Lock()
	l.index = x
	l.mu.Unlock()
}

// spans returns the layer's decompression index once one is known: from the
// .clip file, or built by streaming the layer.
func (l *layerReader) spans() *index.SpanIndex {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.index
}

// compression returns how the blob is compressed, reading its first bytes
// when neither the index nor an earlier fetch said so.
func (l *layerReader) compression(ctx context.Context) (string, error) {
	l.mu.Lock()
	c := l.comp
	l.mu.Unlock()
	if c != "" {
		return c, nil
	}
	if c = l.set.f.knownCompression(l.layer.Digest); c == "" {
		rc, err := l.blob.ReadRange(ctx, 0, 4)
		if err != nil {
			return "", err
		}
		head, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return "", fmt.Errorf("read layer %s: detect compression: %w", short(l.layer.Digest), err)
		}
		c = zran.Detect(head)
		l.set.f.rememberCompression(l.layer.Digest, c)
	}
	l.mu.Lock()
	l.comp = c
	l.mu.Unlock()
	return c, nil
}

// readRange serves an uncompressed layer straight from the blob.
func (l *layerReader) readRange(ctx context.Context, p []byte, off int64) (int, error) {
	size, err := l.blob.Size(ctx)
	if err != nil {
		return 0, err
	}
	if off >= size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), size-off)
	if n == 0 {
		return 0, nil
	}
	rc, err := l.blob.ReadRange(ctx, off, n)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	k, err := io.ReadFull(rc, p[:n])
	if err != nil {
		return k, fmt.Errorf("read layer %s: range %d-%d: %w", short(l.layer.Digest), off, off+n-1, err)
	}
	if n < int64(len(p)) {
		return k, io.EOF
	}
	return k, nil
}

func (l *layerReader) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.sharedBlob {
		return l.blob.Close()
	}
	return nil
}
