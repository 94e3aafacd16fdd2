package zran

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func checkIndex(t *testing.T, blob, raw []byte, span int64, wantComp string) *LayerIndex {
	t.Helper()
	ir, err := NewIndexReader(bytes.NewReader(blob), span)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(ir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, raw) {
		t.Fatalf("IndexReader output differs (%d vs %d bytes)", len(got), len(raw))
	}
	x, err := ir.Index()
	if err != nil {
		t.Fatal(err)
	}
	if x.Compression != wantComp || x.USize != int64(len(raw)) || x.CSize != int64(len(blob)) {
		t.Fatalf("index %s usize %d csize %d", x.Compression, x.USize, x.CSize)
	}
	d := newSpanDecoder(t)
	var next int64
	for i, s := range x.Spans {
		if s.UOff != next {
			t.Fatalf("span %d starts at %d, want %d", i, s.UOff, next)
		}
		next += s.USize
		out, err := d.Decode(x.Compression, s, blob[s.COff:s.CEnd])
		if err != nil {
			t.Fatalf("span %d (%+v): %v", i, s.UOff, err)
		}
		if !bytes.Equal(out, raw[s.UOff:s.UOff+s.USize]) {
			t.Fatalf("span %d decodes to different bytes", i)
		}
	}
	if next != int64(len(raw)) {
		t.Fatalf("spans cover %d bytes, want %d", next, len(raw))
	}
	return x
}

func TestIndexReaderGzip(t *testing.T) {
	for _, s := range samples(t) {
		t.Run(s.name, func(t *testing.T) {
			x := checkIndex(t, s.gz, s.raw, 512<<10, Gzip)
			if len(s.raw) > 2<<20 && len(x.Spans) < 3 {
				t.Fatalf("%d spans for %d bytes", len(x.Spans), len(s.raw))
			}
		})
	}
}

func TestIndexReaderZstdAndNone(t *testing.T) {
	data := corpus(t, 3<<20, 21)
	multi := zstdFrames(t, data[:1<<20], data[1<<20:2<<20], data[2<<20:])
	x := checkIndex(t, multi, data, 1<<20, Zstd)
	if len(x.Spans) != 3 {
		t.Fatalf("%d zstd spans, want 3", len(x.Spans))
	}
	single := zstdFrames(t, data)
	if x := checkIndex(t, single, data, 1<<20, Zstd); len(x.Spans) != 1 {
		t.Fatalf("single-frame layer: %d spans, want 1", len(x.Spans))
	}
	tarLike := append([]byte("not compressed: "), data...)
	if x := checkIndex(t, tarLike, tarLike, 1<<20, None); len(x.Spans) != 4 {
		t.Fatalf("uncompressed: %d spans, want 4", len(x.Spans))
	}
}

func TestDecodeSpanRejectsBadBytes(t *testing.T) {
	data := corpus(t, 2<<20, 22)
	gz := gzipGo(t, data, 6)
	ir, _ := NewIndexReader(bytes.NewReader(gz), 256<<10)
	io.Copy(io.Discard, ir)
	x, _ := ir.Index()
	s := x.Spans[2]
	bad := append([]byte(nil), gz[s.COff:s.CEnd]...)
	bad[len(bad)/2] ^= 0x40
	if _, err := newSpanDecoder(t).Decode(Gzip, s, bad); !errors.Is(err, ErrDigest) {
		t.Fatalf("flipped byte: err %v, want ErrDigest", err)
	}
}

func newSpanDecoder(t *testing.T) *SpanDecoder {
	t.Helper()
	d, err := NewSpanDecoder()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}
