package zran

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// WindowSize is the deflate history a checkpoint must carry (RFC 1951).
const WindowSize = 32 << 10

// Checkpoint is a place in a gzip stream where decoding can start again.
type Checkpoint struct {
	// COff is the compressed offset of the byte that holds the next unread
	// bit; Bits is how many low bits of that byte are already consumed.
	COff int64
	Bits uint8
	// UOff is the uncompressed offset of the first byte decoded from here.
	UOff int64
	// Window holds the (up to 32 KiB of) output just before UOff that
	// back-references of the following blocks may reach.
	Window []byte
	// Member is true when COff is the start of a gzip member header; Bits
	// is then 0 and Window empty.
	Member bool
}

// Options tune a Reader.
type Options struct {
	// Span is the least uncompressed distance between two checkpoints.
	Span int64
	// OnCheckpoint, when set, receives a checkpoint at the first block
	// boundary (or member start) at least Span bytes after the previous one.
	// The first one is at offset 0. Window is the callee's to keep.
	OnCheckpoint func(Checkpoint)
}

var (
	// ErrCorrupt reports input that is not a valid gzip/deflate stream.
	ErrCorrupt = errors.New("zran: corrupt gzip stream")
	// ErrChecksum reports a gzip member whose CRC-32 or size does not match.
	ErrChecksum = errors.New("zran: gzip checksum mismatch")
)

const (
	stMember = iota
	stBlock
	stStored
	stHuffman
	stTrailer
	stDone
)

const (
	inBufSize  = 64 << 10
	outBufSize = 256 << 10
	maxMatch   = 258
)

// Reader decodes a gzip stream (RFC 1952, multi-member, trailing zero padding
// tolerated) with a deflate decoder (RFC 1951) that can report checkpoints
// and resume from one. Decoding from the start verifies every member's CRC-32
// and size; a resumed Reader cannot (it starts mid-member) and relies on the
// caller verifying the compressed bytes instead.
type Reader struct {
	src    io.Reader
	srcErr error
	in     []byte
	ip, ie int
	inOff  int64 // compressed offset of in[0]
	bits   uint64
	nb     uint

	out       []byte
	wpos      int   // next output byte goes here
	rpos      int   // next byte Read hands out
	histStart int   // out[histStart:wpos] is valid history
	ubase     int64 // uncompressed offset of out[0]

	state  int
	final  bool
	stored int
	lit    huffman
	dist   huffman
	fixed  bool // lit/dist hold the fixed tables

	verify bool
	crc    uint32
	isize  uint32
	first  bool // no member decoded yet

	opts   Options
	lastCP int64
	haveCP bool

	err error
}

// NewGzipReader decodes the gzip stream r from its start.
func NewGzipReader(r io.Reader, opts Options) *Reader {
	z := newReader(r, opts)
	z.state = stMember
	z.first = true
	return z
}

// Resume decodes from checkpoint cp: r must yield the compressed bytes that
// start at cp.COff. Offsets reported by the Reader continue from cp.UOff.
func Resume(r io.Reader, cp Checkpoint, opts Options) (*Reader, error) {
	if cp.Bits > 7 || len(cp.Window) > WindowSize || (cp.Member && (cp.Bits != 0 || len(cp.Window) != 0)) {
		return nil, fmt.Errorf("%w: bad checkpoint at %d", ErrCorrupt, cp.COff)
	}
	z := newReader(r, opts)
	z.inOff = cp.COff
	z.ubase = cp.UOff - int64(len(cp.Window))
	z.wpos = copy(z.out, cp.Window)
	z.rpos = z.wpos
	z.lastCP, z.haveCP = cp.UOff, true
	if cp.Member {
		z.state = stMember
		return z, nil
	}
	z.state = stBlock
	if cp.Bits > 0 {
		z.refillSlow()
		if z.nb < uint(cp.Bits) {
			return nil, fmt.Errorf("resume at %d: %w", cp.COff, io.ErrUnexpectedEOF)
		}
		z.bits >>= cp.Bits
		z.nb -= uint(cp.Bits)
	}
	return z, nil
}

func newReader(r io.Reader, opts Options) *Reader {
	return &Reader{
		src:  r,
		in:   make([]byte, inBufSize),
		out:  make([]byte, outBufSize),
		opts: opts,
	}
}

// Read implements io.Reader. Bytes decoded before an error are returned
// before the error.
func (z *Reader) Read(p []byte) (int, error) {
	for z.rpos == z.wpos {
		if z.err != nil {
			return 0, z.err
		}
		z.decode()
	}
	n := copy(p, z.out[z.rpos:z.wpos])
	z.rpos += n
	return n, nil
}

// UOff is the uncompressed offset of the next byte Read returns.
func (z *Reader) UOff() int64 { return z.ubase + int64(z.rpos) }

// bitPos is the compressed position of the next unread bit, in bits.
func (z *Reader) bitPos() int64 { return (z.inOff+int64(z.ip))*8 - int64(z.nb) }

// decode produces at least one byte of output or sets z.err.
func (z *Reader) decode() {
	if z.wpos > len(z.out)-maxMatch-1 {
		z.slide()
	}
	start := z.wpos
	for z.wpos == start && z.err == nil {
		switch z.state {
		case stMember:
			z.memberHeader()
		case stBlock:
			z.blockHeader()
		case stStored:
			z.copyStored()
		case stHuffman:
			z.inflate()
		case stTrailer:
			z.trailer()
		case stDone:
			z.err = io.EOF
		}
	}
	if z.verify && z.wpos > start {
		z.crc = crc32.Update(z.crc, crc32.IEEETable, z.out[start:z.wpos])
		z.isize += uint32(z.wpos - start)
	}
}

// slide keeps the last WindowSize bytes of history at the front of out.
func (z *Reader) slide() {
	keep := WindowSize
	if z.wpos-z.histStart < keep {
		keep = z.wpos - z.histStart
	}
	copy(z.out, z.out[z.wpos-keep:z.wpos])
	z.ubase += int64(z.wpos - keep)
	z.wpos, z.rpos, z.histStart = keep, keep, 0
}

func (z *Reader) fail(format string, args ...any) {
	if z.err == nil {
		z.err = fmt.Errorf("%w: %s (compressed offset %d)", ErrCorrupt, fmt.Sprintf(format, args...), z.bitPos()/8)
	}
}

// fillInput reads more compressed bytes, keeping the unread ones.
func (z *Reader) fillInput() bool {
	if z.srcErr != nil {
		return false
	}
	if z.ip > 0 {
		n := copy(z.in, z.in[z.ip:z.ie])
		z.inOff += int64(z.ip)
		z.ip, z.ie = 0, n
	}
	for i := 0; i < 100; i++ {
		n, err := z.src.Read(z.in[z.ie:])
		z.ie += n
		if err != nil {
			z.srcErr = err
			return n > 0
		}
		if n > 0 {
			return true
		}
	}
	z.srcErr = io.ErrNoProgress
	return false
}

// refillSlow tops up the bit buffer one byte at a time (near the end of the
// input buffer or of the stream).
func (z *Reader) refillSlow() {
	for z.nb <= 56 {
		if z.ip == z.ie && !z.fillInput() {
			return
		}
		z.bits |= uint64(z.in[z.ip]) << z.nb
		z.ip++
		z.nb += 8
	}
}

func (z *Reader) need(n uint) bool {
	if z.nb < n {
		z.refillSlow()
		if z.nb < n {
			z.eof()
			return false
		}
	}
	return true
}

func (z *Reader) eof() {
	if z.err != nil {
		return
	}
	if z.srcErr != nil && z.srcErr != io.EOF {
		z.err = z.srcErr
		return
	}
	z.err = io.ErrUnexpectedEOF
}

func (z *Reader) getBits(n uint) uint32 {
	v := uint32(z.bits & (1<<n - 1))
	z.bits >>= n
	z.nb -= n
	return v
}

func (z *Reader) readByte() (byte, bool) {
	if !z.need(8) {
		return 0, false
	}
	return byte(z.getBits(8)), true
}

func (z *Reader) checkpoint(member bool) {
	if z.opts.OnCheckpoint == nil {
		return
	}
	uoff := z.ubase + int64(z.wpos)
	if z.haveCP && uoff-z.lastCP < z.opts.Span {
		return
	}
	bp := z.bitPos()
	cp := Checkpoint{COff: bp / 8, Bits: uint8(bp % 8), UOff: uoff, Member: member}
	if !member {
		from := z.wpos - WindowSize
		if from < z.histStart {
			from = z.histStart
		}
		cp.Window = append([]byte(nil), z.out[from:z.wpos]...)
	}
	z.lastCP, z.haveCP = uoff, true
	z.opts.OnCheckpoint(cp)
}

// memberHeader parses a gzip member header (RFC 1952 section 2.3).
func (z *Reader) memberHeader() {
	z.refillSlow()
	if z.nb == 0 {
		if z.first {
			z.eof()
		} else {
			z.state, z.err = stDone, io.EOF
		}
		return
	}
	z.checkpoint(true)
	var h [10]byte
	for i := range h {
		b, ok := z.readByte()
		if !ok {
			return
		}
		h[i] = b
	}
	if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
		z.fail("bad gzip header")
		return
	}
	flg := h[3]
	if flg&0xe0 != 0 {
		z.fail("reserved gzip flags set")
		return
	}
	if flg&4 != 0 { // FEXTRA
		lo, ok1 := z.readByte()
		hi, ok2 := z.readByte()
		if !ok1 || !ok2 {
			return
		}
		for n := int(lo) | int(hi)<<8; n > 0; n-- {
			if _, ok := z.readByte(); !ok {
				return
			}
		}
	}
	for _, f := range []byte{8, 16} { // FNAME, FCOMMENT: zero-terminated
		if flg&f == 0 {
			continue
		}
		for {
			b, ok := z.readByte()
			if !ok {
				return
			}
			if b == 0 {
				break
			}
		}
	}
	if flg&2 != 0 { // FHCRC
		if !z.need(16) {
			return
		}
		z.getBits(16)
	}
	z.first = false
	z.verify, z.crc, z.isize = true, 0, 0
	// A member's back-references cannot reach into the previous member.
	z.histStart = z.wpos
	z.state = stBlock
}

func (z *Reader) trailer() {
	z.getBits(z.nb % 8)
	if !z.need(32) {
		return
	}
	crc := z.getBits(32)
	if !z.need(32) {
		return
	}
	size := z.getBits(32)
	if z.verify && (crc != z.crc || size != z.isize) {
		z.err = fmt.Errorf("%w at compressed offset %d", ErrChecksum, z.bitPos()/8)
		return
	}
	// Another member, zero padding, or the end.
	z.refillSlow()
	if z.nb == 0 {
		z.state = stDone
		return
	}
	if z.bits&0xff == 0x1f {
		z.state = stMember
		return
	}
	for {
		for z.nb >= 8 {
			if z.getBits(8) != 0 {
				z.fail("trailing garbage after gzip member")
				return
			}
		}
		z.refillSlow()
		if z.nb == 0 {
			z.state = stDone
			return
		}
	}
}

func (z *Reader) blockHeader() {
	if z.final {
		z.final = false
		z.state = stTrailer
		return
	}
	z.checkpoint(false)
	if !z.need(3) {
		return
	}
	z.final = z.getBits(1) == 1
	switch z.getBits(2) {
	case 0:
		z.getBits(z.nb % 8)
		if !z.need(32) {
			return
		}
		n := z.getBits(16)
		if z.getBits(16) != ^n&0xffff {
			z.fail("stored block length check")
			return
		}
		z.stored = int(n)
		z.state = stStored
	case 1:
		if !z.fixed {
			var l [288]uint8
			for i := range l {
				switch {
				case i < 144:
					l[i] = 8
				case i < 256:
					l[i] = 9
				case i < 280:
					l[i] = 7
				default:
					l[i] = 8
				}
			}
			// 32 codes make the fixed distance code complete; 30 and 31
			// never occur in valid data and are rejected when decoded.
			var d [32]uint8
			for i := range d {
				d[i] = 5
			}
			if z.lit.init(l[:], false) != nil || z.dist.init(d[:], true) != nil {
				z.fail("fixed tables")
				return
			}
			z.fixed = true
		}
		z.state = stHuffman
	case 2:
		z.fixed = false
		z.dynamicTables()
	default:
		z.fail("invalid block type 3")
	}
}

var clOrder = [19]uint8{16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15}

func (z *Reader) dynamicTables() {
	if !z.need(14) {
		return
	}
	nlit := int(z.getBits(5)) + 257
	ndist := int(z.getBits(5)) + 1
	nclen := int(z.getBits(4)) + 4
	if nlit > 286 || ndist > 30 {
		z.fail("too many length or distance codes")
		return
	}
	var cl [19]uint8
	for i := 0; i < nclen; i++ {
		if !z.need(3) {
			return
		}
		cl[clOrder[i]] = uint8(z.getBits(3))
	}
	var clh huffman
	if err := clh.init(cl[:], false); err != nil {
		z.fail("code length code: %v", err)
		return
	}
	var lengths [286 + 30]uint8
	for i := 0; i < nlit+ndist; {
		sym, ok := z.decodeSlow(&clh)
		if !ok {
			return
		}
		switch {
		case sym < 16:
			lengths[i] = uint8(sym)
			i++
			continue
		case sym == 16:
			if i == 0 {
				z.fail("repeat with no previous length")
				return
			}
			if !z.need(2) {
				return
			}
			n := 3 + int(z.getBits(2))
			if i+n > nlit+ndist {
				z.fail("code lengths overflow")
				return
			}
			prev := lengths[i-1]
			for ; n > 0; n-- {
				lengths[i] = prev
				i++
			}
		default:
			var n int
			if sym == 17 {
				if !z.need(3) {
					return
				}
				n = 3 + int(z.getBits(3))
			} else {
				if !z.need(7) {
					return
				}
				n = 11 + int(z.getBits(7))
			}
			if i+n > nlit+ndist {
				z.fail("code lengths overflow")
				return
			}
			i += n // lengths are already zero
		}
	}
	if lengths[256] == 0 {
		z.fail("no end-of-block code")
		return
	}
	if err := z.lit.init(lengths[:nlit], false); err != nil {
		z.fail("literal/length code: %v", err)
		return
	}
	if err := z.dist.init(lengths[nlit:nlit+ndist], true); err != nil {
		z.fail("distance code: %v", err)
		return
	}
	z.state = stHuffman
}

// decodeSlow decodes one symbol walking the canonical code bit by bit; it
// serves codes longer than the primary table and the end of the input.
func (z *Reader) decodeSlow(h *huffman) (int, bool) {
	z.refillSlow()
	code, first, index := 0, 0, 0
	bits, nb := z.bits, z.nb
	for l := 1; l <= maxCodeBits; l++ {
		if nb == 0 {
			z.eof()
			return 0, false
		}
		code |= int(bits & 1)
		bits >>= 1
		nb--
		count := int(h.count[l])
		if code-first < count {
			z.bits, z.nb = bits, nb
			return int(h.symbol[index+code-first]), true
		}
		index += count
		first += count
		first <<= 1
		code <<= 1
	}
	z.fail("invalid huffman code")
	return 0, false
}

func (z *Reader) copyStored() {
	for z.stored > 0 && z.nb >= 8 && z.wpos < len(z.out) {
		z.out[z.wpos] = byte(z.bits)
		z.bits >>= 8
		z.nb -= 8
		z.wpos++
		z.stored--
	}
	if z.nb == 0 {
		// The bytes below are taken from the input buffer directly, so bits
		// preloaded past nb would go stale: the refill invariant needs zeros.
		z.bits = 0
	}
	for z.stored > 0 && z.wpos < len(z.out) {
		if z.ip == z.ie && !z.fillInput() {
			z.eof()
			return
		}
		n := copy(z.out[z.wpos:min(len(z.out), z.wpos+z.stored)], z.in[z.ip:z.ie])
		z.ip += n
		z.wpos += n
		z.stored -= n
	}
	if z.stored == 0 {
		z.state = stBlock
	}
}

var (
	lenBase  = [29]uint16{3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258}
	lenExtra = [29]uint8{0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0}
	dstBase  = [30]uint32{1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577}
	dstExtra = [30]uint8{0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13}
)

// inflate decodes symbols of a Huffman block until the block ends or the
// output buffer cannot take another full match. The hot loop keeps the bit
// buffer in locals and refills it eight bytes at a time.
func (z *Reader) inflate() {
	out := z.out
	wpos := z.wpos
	limit := len(out) - maxMatch
	bits, nb := z.bits, z.nb
	lit, dist := &z.lit, &z.dist
	const mask = 1<<primaryBits - 1

	for wpos < limit {
		if nb < 48 {
			if z.ie-z.ip >= 8 {
				bits |= binary.LittleEndian.Uint64(z.in[z.ip:]) << nb
				k := (63 - nb) >> 3
				z.ip += int(k)
				nb |= 56
			} else {
				z.bits, z.nb = bits, nb
				z.refillSlow()
				bits, nb = z.bits, z.nb
			}
		}
		var sym int
		if e := lit.primary[bits&mask]; e&15 != 0 && uint(e&15) <= nb {
			sym = int(e >> 4)
			bits >>= e & 15
			nb -= uint(e & 15)
		} else {
			z.bits, z.nb = bits, nb
			s, ok := z.decodeSlow(lit)
			if !ok {
				z.wpos = wpos
				return
			}
			sym = s
			bits, nb = z.bits, z.nb
		}
		if sym < 256 {
			out[wpos] = byte(sym)
			wpos++
			continue
		}
		if sym == 256 {
			z.state = stBlock
			break
		}
		sym -= 257
		if sym >= 29 {
			z.bits, z.nb, z.wpos = bits, nb, wpos
			z.fail("invalid length symbol %d", sym+257)
			return
		}
		n := uint(lenExtra[sym])
		if nb < n {
			z.bits, z.nb, z.wpos = bits, nb, wpos
			z.eof()
			return
		}
		length := int(lenBase[sym]) + int(bits&(1<<n-1))
		bits >>= n
		nb -= n

		var ds int
		if e := dist.primary[bits&mask]; e&15 != 0 && uint(e&15) <= nb {
			ds = int(e >> 4)
			bits >>= e & 15
			nb -= uint(e & 15)
		} else {
			z.bits, z.nb = bits, nb
			s, ok := z.decodeSlow(dist)
			if !ok {
				z.wpos = wpos
				return
			}
			ds = s
			bits, nb = z.bits, z.nb
		}
		if ds >= 30 {
			z.bits, z.nb, z.wpos = bits, nb, wpos
			z.fail("invalid distance symbol %d", ds)
			return
		}
		n = uint(dstExtra[ds])
		if nb < n {
			z.bits, z.nb, z.wpos = bits, nb, wpos
			z.eof()
			return
		}
		d := int(dstBase[ds]) + int(bits&(1<<n-1))
		bits >>= n
		nb -= n
		src := wpos - d
		if src < z.histStart {
			z.bits, z.nb, z.wpos = bits, nb, wpos
			z.fail("distance %d too far back", d)
			return
		}
		if d >= length {
			copy(out[wpos:wpos+length], out[src:src+length])
			wpos += length
		} else {
			for end := wpos + length; wpos < end; {
				wpos += copy(out[wpos:end], out[src:wpos])
			}
		}
	}
	z.bits, z.nb, z.wpos = bits, nb, wpos
}

// ErrDigest reports compressed bytes whose SHA-256 is not the one recorded.
var ErrDigest = errors.New("zran: span digest mismatch")
