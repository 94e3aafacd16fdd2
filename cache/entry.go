package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"sync"
)

// headerSize is the length of the header before an entry's payload.
const headerSize = 32

var (
	headerMagic = [4]byte{'C', 'L', 'P', 'S'}
	castagnoli  = crc32.MakeTable(crc32.Castagnoli)
)

// ErrCorrupt marks an entry whose file does not match its header: torn by a
// crash, truncated or changed on disk. The store removes such a file.
var ErrCorrupt = errors.New("corrupt cache entry")

// header is the fixed start of an entry file:
//
//	0  magic "CLPS"
//	4  version (uint16, 1), reserved (uint16)
//	8  payload length (uint64)
//	16 CRC32C of the payload
//	20 CRC32C of bytes 0-19
//	24 zero padding
func encodeHeader(n int64, sum uint32) []byte {
	h := make([]byte, headerSize)
	copy(h, headerMagic[:])
	binary.LittleEndian.PutUint16(h[4:], 1)
	binary.LittleEndian.PutUint64(h[8:], uint64(n))
	binary.LittleEndian.PutUint32(h[16:], sum)
	binary.LittleEndian.PutUint32(h[20:], crc32.Checksum(h[:20], castagnoli))
	return h
}

func decodeHeader(h []byte) (n int64, sum uint32, err error) {
	if len(h) < headerSize || [4]byte(h[:4]) != headerMagic {
		return 0, 0, fmt.Errorf("%w: bad magic", ErrCorrupt)
	}
	if crc32.Checksum(h[:20], castagnoli) != binary.LittleEndian.Uint32(h[20:]) {
		return 0, 0, fmt.Errorf("%w: header checksum", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint16(h[4:]); v != 1 {
		return 0, 0, fmt.Errorf("%w: version %d", ErrCorrupt, v)
	}
	return int64(binary.LittleEndian.Uint64(h[8:])), binary.LittleEndian.Uint32(h[16:]), nil
}

// readHeader reads f's header and checks the file's length against it. It
// returns the payload length and checksum.
func readHeader(f *os.File) (int64, uint32, error) {
	h := make([]byte, headerSize)
	if _, err := f.ReadAt(h, 0); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, 0, fmt.Errorf("%w: shorter than its header", ErrCorrupt)
		}
		return 0, 0, err
	}
	n, sum, err := decodeHeader(h)
	if err != nil {
		return 0, 0, err
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, err
	}
	if fi.Size() != headerSize+n {
		return 0, 0, fmt.Errorf("%w: %d bytes, header says %d", ErrCorrupt, fi.Size(), headerSize+n)
	}
	return n, sum, nil
}

// verifyFile checks f against its header (length and payload checksum) and
// returns the payload length. It reads the whole file once: entries are
// verified when a process first opens them, not on every read.
func verifyFile(f *os.File) (int64, error) {
	n, want, err := readHeader(f)
	if err != nil {
		return 0, err
	}
	// One pread per verifyChunk, not per 32 KiB (io.Copy's buffer): a
	// span entry is checked with one or two system calls. The first open
	// of each entry by a serving process is on its first read's path.
	bp := verifyBufs.Get().(*[]byte)
	defer verifyBufs.Put(bp)
	buf := *bp
	var sum uint32
	for off := int64(0); off < n; {
		k, err := f.ReadAt(buf[:min(int64(len(buf)), n-off)], headerSize+off)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return 0, fmt.Errorf("%w: shorter than its header says", ErrCorrupt)
			}
			return 0, err
		}
		sum = crc32.Update(sum, castagnoli, buf[:k])
		off += int64(k)
	}
	if sum != want {
		return 0, fmt.Errorf("%w: payload checksum", ErrCorrupt)
	}
	return n, nil
}

// verifyChunk is the read size of verifyFile: the payload of a span of the
// default span size (1 MiB) in one read.
const verifyChunk = 1 << 20

var verifyBufs = sync.Pool{New: func() any { b := make([]byte, verifyChunk); return &b }}

// Entry is an open, verified entry. Offsets are relative to the payload.
type Entry struct {
	f    *os.File
	size int64
}

// Size returns the payload length.
func (e *Entry) Size() int64 { return e.size }

// ReadAt reads the payload.
func (e *Entry) ReadAt(p []byte, off int64) (int, error) {
	if off >= e.size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > e.size-off {
		p = p[:e.size-off]
	}
	n, err := e.f.ReadAt(p, headerSize+off)
	if err == nil && n < want {
		err = io.EOF
	}
	return n, err
}

// Reader returns a reader of the whole payload.
func (e *Entry) Reader() io.Reader { return io.NewSectionReader(e, 0, e.size) }

// Close releases the entry.
func (e *Entry) Close() error { return e.f.Close() }
