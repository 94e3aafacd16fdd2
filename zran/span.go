package zran

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
)

// Span is the unit of fetch, verification and caching: the uncompressed
// range between two consecutive checkpoints, and the compressed bytes that
// decode it.
type Span struct {
	UOff, USize int64
	// COff and CEnd bound the compressed bytes needed, [COff, CEnd). When
	// the next span starts mid-byte, that byte belongs to both spans.
	COff, CEnd int64
	// Bits, Window and Member are the gzip checkpoint at COff (see
	// Checkpoint); zstd and uncompressed spans need none of them.
	Bits   uint8
	Window []byte
	Member bool
	// Digest is the SHA-256 of the compressed bytes [COff, CEnd).
	Digest [32]byte
}

// LayerIndex is the decompression index of one layer blob.
type LayerIndex struct {
	Compression string
	SpanSize    int64
	CSize       int64 // size of the blob
	USize       int64 // size of the uncompressed stream
	Spans       []Span
}

// Find returns the index of the span holding uncompressed offset off.
func (x *LayerIndex) Find(off int64) int {
	lo, hi := 0, len(x.Spans)
	for hi-lo > 1 {
		m := (lo + hi) / 2
		if x.Spans[m].UOff <= off {
			lo = m
		} else {
			hi = m
		}
	}
	return lo
}

// IndexReader decompresses a layer blob (gzip, zstd or uncompressed, found
// from its first bytes) and builds its LayerIndex on the way, so that an
// indexer reads each layer exactly once.
type IndexReader struct {
	r     io.Reader // uncompressed stream
	close func() error
	tee   *spanHasher
	x     LayerIndex
	uoff  int64
	done  bool
}

// NewIndexReader starts decoding blob with checkpoints about spanSize apart.
func NewIndexReader(blob io.Reader, spanSize int64) (*IndexReader, error) {
	if spanSize <= 0 {
		return nil, fmt.Errorf("zran: span size %d must be positive", spanSize)
	}
	br := bufio.NewReaderSize(blob, 1<<16)
	head, err := br.Peek(4)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("detect compression: %w", err)
	}
	ir := &IndexReader{x: LayerIndex{Compression: Detect(head), SpanSize: spanSize}}
	ir.tee = &spanHasher{}
	src := io.TeeReader(br, ir.tee)
	switch ir.x.Compression {
	case Gzip:
		ir.r = NewGzipReader(src, Options{Span: spanSize, OnCheckpoint: ir.gzipCheckpoint})
	case Zstd:
		var last *Span
		zr, err := NewZstdReader(src, func(f Frame) {
			// Frames are grouped into spans of at least spanSize.
			if last == nil || last.USize >= spanSize {
				ir.x.Spans = append(ir.x.Spans, Span{UOff: f.UOff, COff: f.COff})
				n := len(ir.x.Spans)
				if n > 1 {
					ir.tee.cut(f.COff, ir.x.Spans[n-2].CEnd, ir.x.Spans, 2)
				} else {
					ir.tee.cut(f.COff, f.COff, ir.x.Spans, 1)
				}
				last = &ir.x.Spans[n-1]
			}
			last.USize += f.ULen
			last.CEnd = f.COff + f.CLen
		})
		if err != nil {
			return nil, err
		}
		ir.r, ir.close = zr, zr.Close
	default:
		ir.r = src
	}
	return ir, nil
}

func (ir *IndexReader) gzipCheckpoint(c Checkpoint) {
	end := c.COff
	if c.Bits > 0 {
		end++
	}
	if n := len(ir.x.Spans); n > 0 {
		ir.x.Spans[n-1].CEnd = end
		ir.x.Spans[n-1].USize = c.UOff - ir.x.Spans[n-1].UOff
	}
	ir.x.Spans = append(ir.x.Spans, Span{UOff: c.UOff, COff: c.COff, Bits: c.Bits, Window: c.Window, Member: c.Member})
	if len(ir.x.Spans) > 1 {
		ir.tee.cut(c.COff, end, ir.x.Spans, 2)
	} else {
		ir.tee.cut(c.COff, end, ir.x.Spans, 1)
	}
}

func (ir *IndexReader) Read(p []byte) (int, error) {
	n, err := ir.r.Read(p)
	ir.uoff += int64(n)
	if ir.x.Compression == None && n > 0 {
		ir.noneSpans()
	}
	if err == io.EOF && !ir.done {
		ir.finish()
	}
	return n, err
}

// noneSpans cuts an uncompressed stream into plain spans of SpanSize.
func (ir *IndexReader) noneSpans() {
	for {
		n := len(ir.x.Spans)
		if n == 0 {
			ir.x.Spans = append(ir.x.Spans, Span{})
			ir.tee.cut(0, 0, ir.x.Spans, 1)
			continue
		}
		next := ir.x.Spans[n-1].UOff + ir.x.SpanSize
		if ir.uoff <= next {
			return
		}
		ir.x.Spans[n-1].USize, ir.x.Spans[n-1].CEnd = ir.x.SpanSize, next
		ir.x.Spans = append(ir.x.Spans, Span{UOff: next, COff: next})
		ir.tee.cut(next, next, ir.x.Spans, 2)
	}
}

func (ir *IndexReader) finish() {
	ir.done = true
	ir.x.CSize = ir.tee.total
	ir.x.USize = ir.uoff
	if n := len(ir.x.Spans); n > 0 {
		last := &ir.x.Spans[n-1]
		last.USize = ir.uoff - last.UOff
		last.CEnd = ir.tee.total
		last.Digest = ir.tee.finish()
		if last.USize == 0 && n > 1 && ir.x.Compression != Zstd {
			// A checkpoint at the very end (e.g. after a final empty
			// member) starts no data: fold its bytes into the span before.
			prev := &ir.x.Spans[n-2]
			ir.x.Spans = ir.x.Spans[:n-1]
			prev.CEnd = ir.tee.total
			prev.Digest = ir.tee.rehash(prev.COff, prev.CEnd)
		}
	}
}

// Index returns the decompression index; it is complete once Read returned
// io.EOF.
func (ir *IndexReader) Index() (*LayerIndex, error) {
	if !ir.done {
		return nil, fmt.Errorf("zran: index requested before the end of the stream")
	}
	return &ir.x, nil
}

// Compression names what the blob turned out to be.
func (ir *IndexReader) Compression() string { return ir.x.Compression }

// Close releases decoder resources.
func (ir *IndexReader) Close() error {
	if ir.close != nil {
		return ir.close()
	}
	return nil
}

// spanHasher keeps the compressed bytes of the current span (they pass by
// before the decoder announces where the span ends) and hashes them once the
// end is known. It also keeps the previous span's bytes until the end, for
// the rare fold in finish.
type spanHasher struct {
	buf   []byte // compressed bytes from base on
	base  int64
	total int64
	prev  []byte
	pbase int64
}

func (h *spanHasher) Write(p []byte) (int, error) {
	h.buf = append(h.buf, p...)
	h.total += int64(len(p))
	return len(p), nil
}

// cut closes the span before the last one of spans at end (exclusive) and
// starts the new one at start. skip is 2 when a previous span exists, 1 when
// spans holds only the new one.
func (h *spanHasher) cut(start, end int64, spans []Span, skip int) {
	if skip == 2 {
		prev := &spans[len(spans)-2]
		prev.Digest = sha256.Sum256(h.buf[prev.COff-h.base : end-h.base])
		h.prev, h.pbase = append(h.prev[:0], h.buf[:end-h.base]...), h.base
	}
	h.buf = append(h.buf[:0:0], h.buf[start-h.base:]...)
	h.base = start
}

func (h *spanHasher) finish() [32]byte {
	return sha256.Sum256(h.buf)
}

func (h *spanHasher) rehash(from, to int64) [32]byte {
	all := append(append([]byte(nil), h.prev[from-h.pbase:]...), h.buf[h.pbase+int64(len(h.prev))-h.base:to-h.base]...)
	return sha256.Sum256(all)
}
