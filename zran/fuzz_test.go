package zran

import (
	"bytes"
	"compress/gzip"
	"io"
	"testing"
)

// FuzzGzip feeds arbitrary bytes to the decoder, from the start and resumed
// at an arbitrary bit: it must return an error or data, never panic or hang,
// and whatever it accepts from the start must agree with compress/gzip.
func FuzzGzip(f *testing.F) {
	for _, s := range []string{"", "hello", "hello hello hello hello, clipd"} {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		w.Write([]byte(s))
		w.Close()
		f.Add(b.Bytes(), uint16(0))
	}
	f.Fuzz(func(t *testing.T, data []byte, at uint16) {
		got, err := io.ReadAll(io.LimitReader(NewGzipReader(bytes.NewReader(data), Options{}), 64<<20))
		if err == nil {
			zr, zerr := gzip.NewReader(bytes.NewReader(data))
			if zerr == nil {
				want, werr := io.ReadAll(zr)
				if werr == nil && !bytes.Equal(got, want) {
					t.Fatalf("decoded %q, compress/gzip %q", got, want)
				}
			}
		}
		if len(data) == 0 {
			return
		}
		off := int64(at) % int64(len(data))
		r, err := Resume(bytes.NewReader(data[off:]), Checkpoint{COff: off, Bits: uint8(at % 8), UOff: 0, Window: data[:min(len(data), WindowSize)]}, Options{})
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(r, 64<<20))
		}
	})
}

// FuzzZstd checks that the frame splitter never panics or hangs.
func FuzzZstd(f *testing.F) {
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x24, 0x05, 0x29, 0x00, 0x00, 'h', 'e', 'l', 'l', 'o'})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewZstdReader(bytes.NewReader(data), nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, io.LimitReader(r, 64<<20))
		r.Close()
	})
}
