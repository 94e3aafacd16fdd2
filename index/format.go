package index

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"

	"github.com/beam-cloud/clip/pkg/common"
)

// Layout of a .clip file as clip writes it (pkg/clip/archive.go):
//
//	header (54 bytes, little-endian common.ClipArchiveHeader)
//	v1 only: data blocks (1 byte block type | file bytes | 8 byte CRC64)
//	index: gob []*common.ClipNode, sorted by path
//	v2 only: gob common.StorageInfoWrapper{Type, Data: gob(storage info)}
//
// clipd appends its extension after these sections (see extension.go); clip
// reads only the ranges its header names, so it ignores the extra bytes.

// Format versions of an opened archive (Archive.Format).
const (
	FormatEmbedded = 1 // clip v1: file data inside the archive
	FormatOCI      = 2 // clip v2: metadata only, data in OCI layers
)

// clipDecodeHeader reads and checks the fixed header at the start of a file.
func clipDecodeHeader(b []byte) (common.ClipArchiveHeader, error) {
	var h common.ClipArchiveHeader
	if len(b) < common.ClipHeaderLength {
		return h, fmt.Errorf("file too short for a clip header: %d bytes, need %d", len(b), common.ClipHeaderLength)
	}
	if err := binary.Read(bytes.NewReader(b[:common.ClipHeaderLength]), binary.LittleEndian, &h); err != nil {
		return h, fmt.Errorf("decode clip header: %w", err)
	}
	if !bytes.Equal(h.StartBytes[:], common.ClipFileStartBytes) {
		// Never quote the bytes: whoever names a path must not learn its
		// content from the error.
		return h, errors.New("not a .clip file (bad magic)")
	}
	if h.ClipFileFormatVersion != common.ClipFileFormatVersion {
		return h, fmt.Errorf("unsupported clip header version %d (want %d)", h.ClipFileFormatVersion, common.ClipFileFormatVersion)
	}
	return h, nil
}

// clipEncodeHeader is clip's EncodeHeader: binary.Write of the struct.
func clipEncodeHeader(h *common.ClipArchiveHeader) ([]byte, error) {
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, h); err != nil {
		return nil, fmt.Errorf("encode clip header: %w", err)
	}
	return buf.Bytes(), nil
}

// clipSection is a byte range named by the header.
type clipSection struct {
	name     string // "index", "storage info"
	pos, len int64
	max      int64 // the bound of doc.go on len
}

func (s clipSection) end() int64 { return s.pos + s.len }

// clipCheckSection checks that a header-declared range is non-negative, does
// not overflow, lies between the header and limit (the file size, or the
// start of the clipd trailer when there is one) and is within its bound. It runs before anything is
// allocated, so a hostile length never turns into a huge make([]byte).
func clipCheckSection(s clipSection, limit, size int64) error {
	switch {
	case s.pos < 0:
		return fmt.Errorf("%s position %d is negative", s.name, s.pos)
	case s.len < 0:
		return fmt.Errorf("%s length %d is negative", s.name, s.len)
	case s.len > size:
		return fmt.Errorf("%s length %d exceeds file size %d", s.name, s.len, size)
	case s.pos < common.ClipHeaderLength:
		return fmt.Errorf("%s position %d overlaps the %d-byte header", s.name, s.pos, common.ClipHeaderLength)
	case s.pos > size-s.len: // no overflow: both are in [0, size]
		return fmt.Errorf("%s at %d+%d runs past end of file (size %d)", s.name, s.pos, s.len, size)
	case s.pos > limit-s.len:
		return fmt.Errorf("%s at %d+%d runs into the clipd trailer at %d", s.name, s.pos, s.len, limit)
	case s.len > s.max:
		return fmt.Errorf("%s length %d exceeds the limit of %d bytes", s.name, s.len, s.max)
	}
	return nil
}

func clipOverlap(a, b clipSection) bool {
	return a.len > 0 && b.len > 0 && a.pos < b.end() && b.pos < a.end()
}

// clipReadSection reads a checked section into a buffer that grows with
// what is read (never one of the claimed length up front).
func clipReadSection(r io.ReaderAt, s clipSection) ([]byte, error) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.NewSectionReader(r, s.pos, s.len)); err != nil {
		return nil, fmt.Errorf("read %s at %d+%d: %w", s.name, s.pos, s.len, err)
	}
	if int64(buf.Len()) != s.len {
		return nil, fmt.Errorf("read %s at %d+%d: %w", s.name, s.pos, s.len, io.ErrUnexpectedEOF)
	}
	return buf.Bytes(), nil
}

// exactReadBytes is the largest index section read into a buffer of its
// declared length at once (doc.go); a larger one grows with what is read.
const exactReadBytes = 32 << 20

// clipDecodeIndex reads the node list of section s: the gob framing and
// the node count are checked in its first window (clipGobCheckIndexCount)
// before anything else is read. The nodes are decoded as the caller walks
// them (clipNodes.each), by the fast decoder (format_gobfast.go) when it
// knows the stream, reading the rest of the section through a window;
// else the section is read whole and decoded by encoding/gob.
func clipDecodeIndex(r io.ReaderAt, s clipSection) (*clipNodes, error) {
	head := make([]byte, min(s.len, maxGobPrologue))
	if n, err := r.ReadAt(head, s.pos); err != nil && (n < len(head) || err != io.EOF) {
		return nil, fmt.Errorf("read index at %d+%d: %w", s.pos, s.len, err)
	}
	if err := clipGobCheckIndexCount(head, s.len); err != nil {
		return nil, fmt.Errorf("decode index: %w", err)
	}
	if int64(len(head)) < s.len {
		// The node list is decoded through a window as it is read
		// (clipNodes.each): a copy of the whole section would be garbage
		// once the nodes are made, and a serving process, which starts
		// without collections, would keep its pages at its peak.
		if d, msg, count, missing, err := clipFastPrepare(head); err == nil &&
			int64(len(head))+missing <= s.len {
			start := s.pos + int64(len(head))
			return &clipNodes{count: count, fast: d, msg: msg, r: r, s: s,
				stream: &gobStream{r: r, pos: start, end: start + missing}}, nil
		}
	}
	b, err := clipReadWhole(r, s, head)
	if err != nil {
		return nil, err
	}
	if d, msg, count, missing, err := clipFastPrepare(b); err == nil && missing == 0 {
		return &clipNodes{count: count, fast: d, msg: msg, raw: b}, nil
	}
	return clipGobNodes(b)
}

// clipReadWhole returns section s, of which head holds the start.
func clipReadWhole(r io.ReaderAt, s clipSection, head []byte) ([]byte, error) {
	switch {
	case int64(len(head)) == s.len:
		return head, nil
	case s.len <= exactReadBytes:
		// One read into a buffer of the section's length: growing a
		// buffer by doubling costs a large index tens of milliseconds.
		b := make([]byte, s.len)
		if n, err := r.ReadAt(b, s.pos); err != nil && (n < len(b) || err != io.EOF) {
			return nil, fmt.Errorf("read index at %d+%d: %w", s.pos, s.len, err)
		}
		return b, nil
	default:
		return clipReadSection(r, s)
	}
}

// clipGobNodes decodes the node list b with encoding/gob.
func clipGobNodes(b []byte) (*clipNodes, error) {
	var cnodes []*common.ClipNode
	if err := clipGobDecodeReader("index", bytes.NewReader(b), &cnodes); err != nil {
		return nil, err
	}
	if len(cnodes) > MaxNodes {
		return nil, fmt.Errorf("decode index: %d nodes exceed the limit of %d", len(cnodes), MaxNodes)
	}
	return &clipNodes{count: len(cnodes), slice: cnodes}, nil
}

// clipNodes is a decoded node list, or one the fast decoder decodes while
// it is walked.
type clipNodes struct {
	count int
	slice []*common.ClipNode // decoded by gob
	// The fast decoder, its reader at the first node, and the whole
	// section, for the fallback; or, when the node list is streamed, the
	// rest of the message (stream) and where to read the section again.
	fast   *clipNodeDecoder
	msg    *gobReader
	raw    []byte
	stream *gobStream
	r      io.ReaderAt
	s      clipSection
}

// each calls fn with every node in order; the node is valid only during
// the call. With the fast decoder, a stream it cannot finish ends the walk
// with errGobFallback: the caller starts again from gob (fallback).
func (c *clipNodes) each(fn func(*common.ClipNode) error) error {
	if c.fast == nil {
		for _, cn := range c.slice {
			if err := fn(cn); err != nil {
				return err
			}
		}
		return nil
	}
	r := *c.msg // each may run again
	if c.stream != nil {
		st := *c.stream
		st.buf = make([]byte, gobWindow)
		r.src = &st
	}
	return c.fast.each(&r, c.count, fn)
}

// fallback is the same list decoded by encoding/gob, for a walk with the
// fast decoder that failed: gob then gives the error, or the walk's own
// error comes again, exactly as without the fast decoder.
func (c *clipNodes) fallback() (*clipNodes, error) {
	if c.raw == nil {
		b, err := clipReadWhole(c.r, c.s, nil)
		if err != nil {
			return nil, err
		}
		return clipGobNodes(b)
	}
	return clipGobNodes(c.raw)
}

// clipGobDecode decodes one gob value from b into v. gob turns its own
// errors into error values, but a runtime fault inside it (a bug reachable
// only by hostile input) must not take the daemon down: it becomes an error.
func clipGobDecode(what string, b []byte, v any) error {
	if err := gobCheckFraming(b); err != nil {
		return fmt.Errorf("decode %s: %w", what, err)
	}
	return clipGobDecodeReader(what, bytes.NewReader(b), v)
}

// clipGobDecodeReader is clipGobDecode reading from r.
func clipGobDecodeReader(what string, r io.Reader, v any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode %s: corrupt gob data (decoder panic: %v)", what, r)
		}
	}()
	if err := gob.NewDecoder(r).Decode(v); err != nil {
		return fmt.Errorf("decode %s: %w", what, err)
	}
	return nil
}
