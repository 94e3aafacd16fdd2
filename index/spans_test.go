package index

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"math/rand"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/clipd/clipd/internal/fixture"
	"github.com/clipd/clipd/zran"
)

// gzippedSpans gzips 3 MiB of pseudo-random text drawn from seed and
// indexes it with a span every 512 KiB, so the index has several spans, each
// with a window. It returns the text, the gzip stream, zran's index of it
// and that index as a SpanIndex.
func gzippedSpans(t testing.TB, seed int64) (raw, gz []byte, li *zran.LayerIndex, x *SpanIndex) {
	t.Helper()
	raw = make([]byte, 3<<20)
	rng := rand.New(rand.NewSource(seed))
	for i := range raw {
		raw[i] = "abcdefgh"[rng.Intn(8)]
	}
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	ir, err := zran.NewIndexReader(bytes.NewReader(buf.Bytes()), 512<<10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, ir); err != nil {
		t.Fatal(err)
	}
	if li, err = ir.Index(); err != nil {
		t.Fatal(err)
	}
	if x, err = NewSpanIndex(li); err != nil {
		t.Fatal(err)
	}
	return raw, buf.Bytes(), li, x
}

func TestSpanIndexRoundTrip(t *testing.T) {
	raw, gz, li, x := gzippedSpans(t, 1)
	b, err := x.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var y SpanIndex
	if err := y.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if len(y.Spans) != len(li.Spans) || y.USize != li.USize {
		t.Fatalf("round trip: %d spans, want %d", len(y.Spans), len(li.Spans))
	}
	d, err := zran.NewSpanDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := range y.Spans {
		s, err := y.Span(i, d)
		if err != nil {
			t.Fatal(err)
		}
		out, err := d.Decode(y.Compression, s, gz[s.COff:s.CEnd])
		if err != nil || !bytes.Equal(out, raw[s.UOff:s.UOff+s.USize]) {
			t.Fatalf("span %d after round trip: %v", i, err)
		}
	}
	// Every truncation and a few corruptions fail cleanly.
	for n := 0; n < len(b); n += 1 + n/7 {
		var z SpanIndex
		if z.UnmarshalBinary(b[:n]) == nil {
			t.Fatalf("truncated to %d bytes: no error", n)
		}
	}
	bad := append([]byte(nil), b...)
	bad[25], bad[26], bad[27], bad[28] = 0xff, 0xff, 0xff, 0x7f
	var z SpanIndex
	if z.UnmarshalBinary(bad) == nil {
		t.Fatal("hostile span count: no error")
	}
}

// The decompression index survives WriteFile and Open exactly.
func TestSpanIndexInFile(t *testing.T) {
	img, err := fixture.ImageWith(true)
	if err != nil {
		t.Fatal(err)
	}
	a, err := Build(context.Background(), img, BuildOptions{SpanSize: MinSpanSize, Source: Source{Registry: "127.0.0.1:5000", Repository: "fx", Reference: "v1"}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "x.clip")
	if err := WriteFile(path, a); err != nil {
		t.Fatal(err)
	}
	b, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Layers {
		if a.Layers[i].Spans == nil || !reflect.DeepEqual(a.Layers[i].Spans, b.Layers[i].Spans) {
			t.Fatalf("layer %d: decompression index differs after a round trip", i)
		}
	}
	var out bytes.Buffer
	if err := Describe(&out, b); err != nil || !strings.Contains(out.String(), "with a decompression index") || !strings.Contains(out.String(), "per GiB") {
		t.Fatalf("describe: %v\n%s", err, out.String())
	}
}
