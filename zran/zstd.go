package zran

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/clipd/clipd/internal/countio"
	"github.com/klauspost/compress/zstd"
)

// Frame is one zstd frame of a layer: frames are independent, so every frame
// start is a checkpoint that needs no window.
type Frame struct {
	COff, CLen int64 // compressed offset and length
	UOff, ULen int64 // uncompressed offset and length
}

// ErrZstdCorrupt reports a zstd stream whose frame structure is invalid.
var ErrZstdCorrupt = errors.New("zran: corrupt zstd stream")

const (
	zstdMagic0     = 0xFD2FB528
	skippableMask  = 0xFFFFFFF0
	skippableMagic = 0x184D2A50
)

// ZstdReader decodes a zstd stream frame by frame and reports each frame's
// compressed and uncompressed extent.
type ZstdReader struct {
	src     *countio.Reader
	dec     *zstd.Decoder
	frame   *frameReader
	onFrame func(Frame)
	cur     Frame
	uoff    int64
	err     error
}

// NewZstdReader decodes the zstd stream r, calling onFrame (if set) after each
// frame.
func NewZstdReader(r io.Reader, onFrame func(Frame)) (*ZstdReader, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, fmt.Errorf("zstd decoder: %w", err)
	}
	return &ZstdReader{src: countio.NewReader(r), dec: dec, onFrame: onFrame}, nil
}

// ResumeZstd decodes from the frame that starts at the first byte of r; the
// uncompressed offsets it reports start at uoff.
func ResumeZstd(r io.Reader, uoff int64) (*ZstdReader, error) {
	z, err := NewZstdReader(r, nil)
	if err != nil {
		return nil, err
	}
	z.uoff = uoff
	return z, nil
}

func (z *ZstdReader) Read(p []byte) (int, error) {
	for z.err == nil {
		if z.frame == nil {
			if !z.nextFrame() {
				break
			}
		}
		n, err := z.dec.Read(p)
		z.cur.ULen += int64(n)
		z.uoff += int64(n)
		if err == io.EOF {
			if z.frame.err != nil {
				z.err = z.frame.err
				return n, nil
			}
			z.cur.CLen = z.src.Count() - z.cur.COff
			if z.onFrame != nil {
				z.onFrame(z.cur)
			}
			z.frame = nil
		} else if err != nil {
			z.err = fmt.Errorf("%w: frame at %d: %v", ErrZstdCorrupt, z.cur.COff, err)
		}
		if n > 0 {
			return n, nil
		}
	}
	return 0, z.err
}

// Close releases the decoder.
func (z *ZstdReader) Close() error {
	z.dec.Close()
	return nil
}

// nextFrame skips skippable frames and positions the decoder on the next
// data frame; false at the end of the stream or on error.
func (z *ZstdReader) nextFrame() bool {
	for {
		start := z.src.Count()
		var m [4]byte
		n, err := io.ReadFull(z.src, m[:])
		if err == io.EOF {
			z.err = io.EOF
			return false
		}
		if err != nil {
			z.err = fmt.Errorf("%w: truncated frame magic at %d (%d bytes)", ErrZstdCorrupt, start, n)
			return false
		}
		magic := binary.LittleEndian.Uint32(m[:])
		if magic&skippableMask == skippableMagic {
			var sz [4]byte
			if _, err := io.ReadFull(z.src, sz[:]); err != nil {
				z.err = fmt.Errorf("%w: truncated skippable frame at %d", ErrZstdCorrupt, start)
				return false
			}
			if _, err := io.CopyN(io.Discard, z.src, int64(binary.LittleEndian.Uint32(sz[:]))); err != nil {
				z.err = fmt.Errorf("%w: truncated skippable frame at %d", ErrZstdCorrupt, start)
				return false
			}
			continue
		}
		if magic != zstdMagic0 {
			z.err = fmt.Errorf("%w: bad frame magic %#x at %d", ErrZstdCorrupt, magic, start)
			return false
		}
		z.frame = &frameReader{src: z.src, pending: m[:], state: fsHeader}
		z.cur = Frame{COff: start, UOff: z.uoff}
		if err := z.dec.Reset(z.frame); err != nil {
			z.err = fmt.Errorf("%w: frame at %d: %v", ErrZstdCorrupt, start, err)
			return false
		}
		return true
	}
}

const (
	fsHeader = iota
	fsBlockHeader
	fsBlockBody
	fsChecksum
	fsEnd
)

// frameReader passes through exactly one zstd frame, following its header
// and block headers (RFC 8878, 3.1.1), and then reports io.EOF, so that the
// decoder never reads into the next frame.
type frameReader struct {
	src     io.Reader
	pending []byte // bytes already read from src, not yet handed out
	state   int
	left    int64 // bytes left in the current block body
	last    bool
	cksum   bool
	err     error
}

func (f *frameReader) Read(p []byte) (int, error) {
	if len(f.pending) > 0 {
		n := copy(p, f.pending)
		f.pending = f.pending[n:]
		return n, nil
	}
	switch f.state {
	case fsHeader:
		return f.header(p)
	case fsBlockHeader:
		var h [3]byte
		if _, err := io.ReadFull(f.src, h[:]); err != nil {
			return f.fail("truncated block header")
		}
		v := uint32(h[0]) | uint32(h[1])<<8 | uint32(h[2])<<16
		f.last = v&1 == 1
		size := int64(v >> 3)
		switch (v >> 1) & 3 {
		case 0, 2: // raw, compressed
			f.left = size
		case 1: // RLE: one byte regenerated size times
			f.left = 1
		default:
			return f.fail("reserved block type")
		}
		f.state = fsBlockBody
		return copy(p, h[:]), nil
	case fsBlockBody:
		if f.left == 0 {
			f.endBlock()
			return f.Read(p)
		}
		if int64(len(p)) > f.left {
			p = p[:f.left]
		}
		n, err := f.src.Read(p)
		f.left -= int64(n)
		if err == io.EOF && f.left > 0 {
			if n > 0 {
				return n, nil
			}
			return f.fail("truncated block")
		}
		if err != nil && err != io.EOF {
			return n, err
		}
		if f.left == 0 {
			f.endBlock()
		}
		return n, nil
	case fsChecksum:
		var c [4]byte
		if _, err := io.ReadFull(f.src, c[:]); err != nil {
			return f.fail("truncated checksum")
		}
		f.state = fsEnd
		return copy(p, c[:]), nil
	}
	return 0, io.EOF
}

func (f *frameReader) endBlock() {
	switch {
	case !f.last:
		f.state = fsBlockHeader
	case f.cksum:
		f.state = fsChecksum
	default:
		f.state = fsEnd
	}
}

func (f *frameReader) fail(msg string) (int, error) {
	f.err = fmt.Errorf("%w: %s", ErrZstdCorrupt, msg)
	f.state = fsEnd
	return 0, io.EOF
}

// header reads the frame header descriptor and the optional fields it
// announces, handing them on.
func (f *frameReader) header(p []byte) (int, error) {
	var d [1]byte
	if _, err := io.ReadFull(f.src, d[:]); err != nil {
		return f.fail("truncated frame header")
	}
	fhd := d[0]
	single := fhd&0x20 != 0
	f.cksum = fhd&0x04 != 0
	if fhd&0x08 != 0 {
		return f.fail("reserved frame header bit set")
	}
	n := 0
	if !single {
		n++ // window descriptor
	}
	n += []int{0, 1, 2, 4}[fhd&3]
	fcs := []int{0, 2, 4, 8}[fhd>>6]
	if fhd>>6 == 0 && single {
		fcs = 1
	}
	n += fcs
	rest := make([]byte, 1+n)
	rest[0] = fhd
	if _, err := io.ReadFull(f.src, rest[1:]); err != nil {
		return f.fail("truncated frame header")
	}
	f.pending = rest
	f.state = fsBlockHeader
	return f.Read(p)
}
