package index

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/clipd/clipd/zran"
	"github.com/klauspost/compress/zstd"
)

// The decompression index of a layer travels in the clipd extension in a
// compact binary form: per span its offsets, gzip checkpoint state, the
// SHA-256 of its compressed bytes and its 32 KiB window compressed with zstd.
// Windows stay compressed in memory and are expanded only when a span is
// fetched (a 10 GiB image has about 2,500 of them).

const spanRecordSize = 8*4 + 1 + 1 + 32 + 4

var compressionCodes = []string{zran.None, zran.Gzip, zran.Zstd}

// SpanIndex is a layer's decompression index as kept in an Archive.
type SpanIndex struct {
	Compression string
	SpanSize    int64
	CSize       int64
	USize       int64
	// Spans have their Window zstd-compressed; use Span(i).
	Spans []zran.Span
	// Refs, when not nil, says where each span's compressed window lies in
	// the archive's windows blob (Archive.Windows): the windows are not in
	// Spans then, and a reader fetches each with the span that needs it
	// (ExpandSpan). Refs[i].Length is 0 for a span that needs no window.
	Refs []WindowRef
}

// WindowRef locates one span's compressed window in a windows blob.
type WindowRef struct {
	Offset int64
	Length int64
	Digest [32]byte // SHA-256 of the Length compressed bytes
}

// External reports whether the windows of x live in a windows blob.
func (x *SpanIndex) External() bool { return x.Refs != nil }

// Span returns span i with its window expanded by d.
func (x *SpanIndex) Span(i int, d *zran.SpanDecoder) (zran.Span, error) {
	s := x.Spans[i]
	if len(s.Window) == 0 {
		return s, nil
	}
	w, err := d.ExpandWindow(s.Window)
	if err != nil {
		return s, fmt.Errorf("span %d: %w", i, err)
	}
	s.Window = w
	return s, nil
}

// ExpandSpan returns span i of an index with external windows, its window
// expanded from window, the compressed bytes of Refs[i] (already verified
// against Refs[i].Digest by the caller).
func (x *SpanIndex) ExpandSpan(i int, d *zran.SpanDecoder, window []byte) (zran.Span, error) {
	s := x.Spans[i]
	if x.Refs == nil || x.Refs[i].Length == 0 {
		return x.Span(i, d)
	}
	if int64(len(window)) != x.Refs[i].Length {
		return s, fmt.Errorf("span %d: window of %d bytes, index says %d", i, len(window), x.Refs[i].Length)
	}
	w, err := d.ExpandWindow(window)
	if err != nil {
		return s, fmt.Errorf("span %d: %w", i, err)
	}
	s.Window = w
	return s, nil
}

// Find returns the index of the span holding uncompressed offset off.
func (x *SpanIndex) Find(off int64) int {
	return (&zran.LayerIndex{Spans: x.Spans}).Find(off)
}

// NewSpanIndex compresses the windows of a freshly built zran index.
func NewSpanIndex(li *zran.LayerIndex) (*SpanIndex, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	x := &SpanIndex{Compression: li.Compression, SpanSize: li.SpanSize, CSize: li.CSize, USize: li.USize, Spans: make([]zran.Span, len(li.Spans))}
	for i, s := range li.Spans {
		if len(s.Window) > 0 {
			s.Window = enc.EncodeAll(s.Window, nil)
		}
		x.Spans[i] = s
	}
	return x, nil
}

// EncodedSize is the number of bytes MarshalBinary writes: the index's
// overhead in the .clip file.
func (x *SpanIndex) EncodedSize() int64 {
	if x.Refs != nil {
		return int64(29 + len(x.Spans)*spanRefRecordSize)
	}
	n := int64(29 + len(x.Spans)*spanRecordSize)
	for _, s := range x.Spans {
		n += int64(len(s.Window))
	}
	return n
}

// WindowBytes is the number of compressed window bytes of x, wherever they
// are kept.
func (x *SpanIndex) WindowBytes() int64 {
	var n int64
	if x.Refs != nil {
		for _, r := range x.Refs {
			n += r.Length
		}
		return n
	}
	for _, s := range x.Spans {
		n += int64(len(s.Window))
	}
	return n
}

// MarshalBinary encodes x. An index with external windows sets the high
// bit of the compression code and records, instead of each window, its
// offset, length and SHA-256 in the windows blob.
func (x *SpanIndex) MarshalBinary() ([]byte, error) {
	code := -1
	for i, c := range compressionCodes {
		if c == x.Compression {
			code = i
		}
	}
	if code < 0 {
		return nil, fmt.Errorf("span index: unknown compression %q", x.Compression)
	}
	if x.Refs != nil && len(x.Refs) != len(x.Spans) {
		return nil, fmt.Errorf("span index: %d window references for %d spans", len(x.Refs), len(x.Spans))
	}
	b := make([]byte, 0, x.EncodedSize())
	if x.Refs != nil {
		code |= externalWindows
	}
	b = append(b, byte(code))
	b = binary.LittleEndian.AppendUint64(b, uint64(x.SpanSize))
	b = binary.LittleEndian.AppendUint64(b, uint64(x.CSize))
	b = binary.LittleEndian.AppendUint64(b, uint64(x.USize))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.Spans)))
	for i, s := range x.Spans {
		for _, v := range []int64{s.UOff, s.USize, s.COff, s.CEnd} {
			b = binary.LittleEndian.AppendUint64(b, uint64(v))
		}
		member := byte(0)
		if s.Member {
			member = 1
		}
		b = append(b, s.Bits, member)
		b = append(b, s.Digest[:]...)
		if x.Refs != nil {
			r := x.Refs[i]
			b = binary.LittleEndian.AppendUint64(b, uint64(r.Offset))
			b = binary.LittleEndian.AppendUint32(b, uint32(r.Length))
			b = append(b, r.Digest[:]...)
			continue
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s.Window)))
		b = append(b, s.Window...)
	}
	return b, nil
}

var errSpanIndex = errors.New("corrupt span index")

// externalWindows is the flag bit of the compression code byte.
const externalWindows = 0x80

// spanRefRecordSize is the record of a span with an external window: the
// common part, then window offset, length and digest.
const spanRefRecordSize = spanRecordSize - 4 + 8 + 4 + 32

// UnmarshalBinary decodes what MarshalBinary wrote, checking every length
// against the input before it allocates.
func (x *SpanIndex) UnmarshalBinary(b []byte) error {
	if len(b) < 29 {
		return fmt.Errorf("%w: %d bytes", errSpanIndex, len(b))
	}
	external := b[0]&externalWindows != 0
	code := b[0] &^ externalWindows
	if int(code) >= len(compressionCodes) {
		return fmt.Errorf("%w: compression code %d", errSpanIndex, b[0])
	}
	record := uint64(spanRecordSize)
	if external {
		record = spanRefRecordSize
	}
	x.Compression = compressionCodes[code]
	x.SpanSize = int64(binary.LittleEndian.Uint64(b[1:]))
	x.CSize = int64(binary.LittleEndian.Uint64(b[9:]))
	x.USize = int64(binary.LittleEndian.Uint64(b[17:]))
	n := binary.LittleEndian.Uint32(b[25:])
	b = b[29:]
	if uint64(n)*record > uint64(len(b)) {
		return fmt.Errorf("%w: %d spans do not fit in %d bytes", errSpanIndex, n, len(b))
	}
	if x.SpanSize <= 0 || x.CSize < 0 || x.USize < 0 {
		return fmt.Errorf("%w: negative sizes", errSpanIndex)
	}
	x.Spans = make([]zran.Span, n)
	x.Refs = nil
	if external {
		x.Refs = make([]WindowRef, n)
	}
	var next int64
	for i := range x.Spans {
		if uint64(len(b)) < record {
			return fmt.Errorf("%w: span %d truncated", errSpanIndex, i)
		}
		s := &x.Spans[i]
		s.UOff = int64(binary.LittleEndian.Uint64(b))
		s.USize = int64(binary.LittleEndian.Uint64(b[8:]))
		s.COff = int64(binary.LittleEndian.Uint64(b[16:]))
		s.CEnd = int64(binary.LittleEndian.Uint64(b[24:]))
		s.Bits, s.Member = b[32], b[33] == 1
		copy(s.Digest[:], b[34:66])
		if external {
			r := &x.Refs[i]
			off := binary.LittleEndian.Uint64(b[66:])
			wl := binary.LittleEndian.Uint32(b[74:])
			copy(r.Digest[:], b[78:110])
			b = b[spanRefRecordSize:]
			// The blob's size bounds the offset (extApply); here only
			// what fits an int64 and a window.
			if off > 1<<62 || wl > zran.WindowSize*2 {
				return fmt.Errorf("%w: span %d window at %d+%d", errSpanIndex, i, off, wl)
			}
			r.Offset, r.Length = int64(off), int64(wl)
		} else {
			wl := binary.LittleEndian.Uint32(b[66:])
			b = b[spanRecordSize:]
			if uint64(wl) > uint64(len(b)) || wl > zran.WindowSize*2 {
				return fmt.Errorf("%w: span %d window of %d bytes", errSpanIndex, i, wl)
			}
			if wl > 0 {
				s.Window = b[:wl:wl]
			}
			b = b[wl:]
		}
		// Spans must tile the layer in order, inside the blob.
		if s.UOff != next || s.USize < 0 || s.COff < 0 || s.CEnd < s.COff || s.CEnd > x.CSize || s.Bits > 7 {
			return fmt.Errorf("%w: span %d out of order or out of bounds", errSpanIndex, i)
		}
		next += s.USize
	}
	if len(x.Spans) > 0 && next != x.USize {
		return fmt.Errorf("%w: spans cover %d of %d bytes", errSpanIndex, next, x.USize)
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errSpanIndex, len(b))
	}
	return nil
}
