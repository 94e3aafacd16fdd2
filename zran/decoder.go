package zran

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// SpanDecoder decodes spans and expands the zstd-compressed windows of
// checkpoints. It keeps its zstd decoders for every call (building one
// allocates its tables, which costs more than decoding a small frame) and
// is safe for concurrent use: DecodeAll runs as many calls at once as the
// decoder has concurrency, further calls wait.
type SpanDecoder struct {
	spans   *zstd.Decoder
	windows *zstd.Decoder // refuses anything larger than a window
}

// NewSpanDecoder returns a decoder; Close releases it.
func NewSpanDecoder() (*SpanDecoder, error) {
	spans, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	windows, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(WindowSize*2))
	if err != nil {
		spans.Close()
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &SpanDecoder{spans: spans, windows: windows}, nil
}

// Close releases the decoders.
func (d *SpanDecoder) Close() {
	d.spans.Close()
	d.windows.Close()
}

// ExpandWindow returns the window that compressed, a zstd frame, holds.
func (d *SpanDecoder) ExpandWindow(compressed []byte) ([]byte, error) {
	w, err := d.windows.DecodeAll(compressed, make([]byte, 0, WindowSize))
	if err != nil {
		return nil, fmt.Errorf("zran: corrupt window: %w", err)
	}
	if len(w) > WindowSize {
		return nil, fmt.Errorf("zran: corrupt window: %d bytes", len(w))
	}
	return w, nil
}

// Decode returns the USize uncompressed bytes of span s from exactly its
// compressed bytes [COff, CEnd), which it verifies first. s.Window must be
// expanded.
func (d *SpanDecoder) Decode(compression string, s Span, compressed []byte) ([]byte, error) {
	if int64(len(compressed)) != s.CEnd-s.COff {
		return nil, fmt.Errorf("zran: span at %d: got %d compressed bytes, want %d", s.UOff, len(compressed), s.CEnd-s.COff)
	}
	if sha256.Sum256(compressed) != s.Digest {
		return nil, fmt.Errorf("%w: span at uncompressed %d (compressed %d-%d)", ErrDigest, s.UOff, s.COff, s.CEnd-1)
	}
	switch compression {
	case None:
		return bytes.Clone(compressed), nil
	case Gzip:
		zr, err := Resume(bytes.NewReader(compressed), Checkpoint{COff: s.COff, Bits: s.Bits, UOff: s.UOff, Window: s.Window, Member: s.Member}, Options{})
		if err != nil {
			return nil, err
		}
		out := make([]byte, s.USize)
		if _, err := io.ReadFull(zr, out); err != nil {
			return nil, fmt.Errorf("zran: decode span at uncompressed %d: %w", s.UOff, err)
		}
		return out, nil
	case Zstd:
		// A span is whole frames (and maybe skippable ones): DecodeAll
		// decodes them all.
		out, err := d.spans.DecodeAll(compressed, make([]byte, 0, s.USize))
		if err != nil {
			return nil, fmt.Errorf("zran: decode span at uncompressed %d: %w: %v", s.UOff, ErrZstdCorrupt, err)
		}
		if int64(len(out)) < s.USize {
			return nil, fmt.Errorf("zran: decode span at uncompressed %d: %w", s.UOff, io.ErrUnexpectedEOF)
		}
		return out[:s.USize], nil
	default:
		return nil, fmt.Errorf("zran: unknown compression %q", compression)
	}
}
