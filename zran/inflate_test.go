package zran

import (
	"bytes"
	"compress/gzip"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"testing"
)

// corpus returns uncompressed test data that mixes text (long matches,
// dynamic blocks) with random bytes (stored blocks).
func corpus(t testing.TB, size int, seed int64) []byte {
	t.Helper()
	rng := rand.New(rand.NewSource(seed))
	words := []string{"layer ", "span ", "checkpoint ", "window ", "deflate\n", "gzip ", "clipd ", "registry "}
	var b bytes.Buffer
	for b.Len() < size {
		if rng.Intn(8) == 0 {
			chunk := make([]byte, rng.Intn(100<<10))
			rng.Read(chunk)
			b.Write(chunk)
			continue
		}
		for i := rng.Intn(5000); i > 0; i-- {
			b.WriteString(words[rng.Intn(len(words))])
		}
	}
	return b.Bytes()[:size]
}

func gzipGo(t testing.TB, data []byte, level int) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := gzip.NewWriterLevel(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Name = "layer.tar"
	w.Extra = []byte("clipd-extra")
	w.Comment = "test"
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func gzipCLI(t testing.TB, tool string, data []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v (install the %s package)", tool, args, err, tool)
	}
	return out
}

type sample struct {
	name string
	gz   []byte
	raw  []byte
}

func samples(t testing.TB) []sample {
	data := corpus(t, 6<<20, 1)
	small := corpus(t, 300<<10, 2)
	random := make([]byte, 2<<20)
	rand.New(rand.NewSource(3)).Read(random)
	multi := append(append(gzipGo(t, small, 6), gzipGo(t, nil, 6)...), gzipGo(t, data[:1<<20], 1)...)
	multiRaw := append(append([]byte(nil), small...), data[:1<<20]...)
	padded := append(gzipGo(t, small, 9), make([]byte, 1024)...)
	s := []sample{
		{"go-1", gzipGo(t, data, 1), data},
		{"go-6-fname-fextra", gzipGo(t, data, 6), data},
		{"go-9", gzipGo(t, data, 9), data},
		{"go-huffman-only", gzipGo(t, data, gzip.HuffmanOnly), data},
		{"go-stored", gzipGo(t, data, gzip.NoCompression), data},
		{"random-stored", gzipGo(t, random, 6), random},
		{"three-members-one-empty", multi, multiRaw},
		{"zero-padding", padded, small},
		{"empty", gzipGo(t, nil, 6), nil},
		{"gzip-1", gzipCLI(t, "gzip", data, "-1", "-c"), data},
		{"gzip-6", gzipCLI(t, "gzip", data, "-6", "-c"), data},
		{"gzip-9", gzipCLI(t, "gzip", data, "-9", "-c"), data},
		{"pigz", gzipCLI(t, "pigz", data, "-c", "-p", "2"), data},
		{"pigz-independent", gzipCLI(t, "pigz", data, "-c", "-i", "-b", "128"), data},
	}
	return s
}

func TestGzipMatchesStdlib(t *testing.T) {
	for _, s := range samples(t) {
		t.Run(s.name, func(t *testing.T) {
			got, err := io.ReadAll(NewGzipReader(bytes.NewReader(s.gz), Options{}))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !bytes.Equal(got, s.raw) {
				t.Fatalf("decoded %d bytes, want %d (contents differ)", len(got), len(s.raw))
			}
		})
	}
}

// Every checkpoint must resume, and 1,000 random reads through the nearest
// checkpoint must equal compress/gzip's bytes.
func TestCheckpointsResume(t *testing.T) {
	rng := rand.New(rand.NewSource(4))
	for _, s := range samples(t) {
		t.Run(s.name, func(t *testing.T) {
			var cps []Checkpoint
			r := NewGzipReader(bytes.NewReader(s.gz), Options{Span: 256 << 10, OnCheckpoint: func(c Checkpoint) { cps = append(cps, c) }})
			if _, err := io.Copy(io.Discard, r); err != nil {
				t.Fatal(err)
			}
			if len(s.raw) > 0 && len(cps) < 2 && len(s.raw) > 1<<20 {
				t.Fatalf("only %d checkpoints for %d bytes", len(cps), len(s.raw))
			}
			if len(cps) == 0 || cps[0].UOff != 0 || cps[0].COff != 0 {
				t.Fatalf("first checkpoint %+v, want one at 0", cps)
			}
			for i, cp := range cps {
				end := int64(len(s.raw))
				if i+1 < len(cps) {
					end = cps[i+1].UOff
				}
				got := resumeRead(t, s.gz, cp, end-cp.UOff)
				if !bytes.Equal(got, s.raw[cp.UOff:end]) {
					t.Fatalf("checkpoint %d (%+v): resumed bytes differ", i, cp.UOff)
				}
			}
			if len(s.raw) == 0 {
				return
			}
			for i := 0; i < 1000; i++ {
				off := rng.Int63n(int64(len(s.raw)))
				n := rng.Int63n(64<<10) + 1
				if off+n > int64(len(s.raw)) {
					n = int64(len(s.raw)) - off
				}
				j := len(cps) - 1
				for cps[j].UOff > off {
					j--
				}
				got := resumeRead(t, s.gz, cps[j], off+n-cps[j].UOff)
				if !bytes.Equal(got[off-cps[j].UOff:], s.raw[off:off+n]) {
					t.Fatalf("read %d+%d via checkpoint %d differs", off, n, j)
				}
			}
		})
	}
}

func resumeRead(t *testing.T, gz []byte, cp Checkpoint, n int64) []byte {
	t.Helper()
	r, err := Resume(bytes.NewReader(gz[cp.COff:]), cp, Options{})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatalf("resume at %d (bits %d, uoff %d): %v", cp.COff, cp.Bits, cp.UOff, err)
	}
	return buf
}

func TestCorruptInputErrors(t *testing.T) {
	data := corpus(t, 1<<20, 5)
	gz := gzipGo(t, data, 6)
	rng := rand.New(rand.NewSource(6))
	for i := 0; i < 300; i++ {
		bad := append([]byte(nil), gz...)
		switch i % 3 {
		case 0:
			bad[rng.Intn(len(bad))] ^= byte(1 + rng.Intn(255))
		case 1:
			bad = bad[:rng.Intn(len(bad))]
		case 2:
			for k := 0; k < 20; k++ {
				bad[10+rng.Intn(len(bad)-10)] = byte(rng.Intn(256))
			}
		}
		got, err := io.ReadAll(NewGzipReader(bytes.NewReader(bad), Options{}))
		if err == nil && !bytes.Equal(got, data) {
			t.Fatalf("case %d: corrupt input decoded without error to different bytes", i)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	gz, size := benchInput(b)
	b.Run("zran", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			if _, err := io.Copy(io.Discard, NewGzipReader(bytes.NewReader(gz), Options{})); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("compress-gzip", func(b *testing.B) {
		b.SetBytes(size)
		for i := 0; i < b.N; i++ {
			r, err := gzip.NewReader(bytes.NewReader(gz))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// benchInput is the base layer of ../shared/images/debian-python when present
// (set ZRAN_BENCH_LAYER to another gzip file), else generated data.
func benchInput(b *testing.B) ([]byte, int64) {
	path := os.Getenv("ZRAN_BENCH_LAYER")
	if path == "" {
		path = "../../shared/images/debian-python/blobs/sha256/" + baseLayerHex
	}
	gz, err := os.ReadFile(path)
	if err != nil {
		b.Logf("bench input: %v; using generated data", err)
		gz = gzipGo(b, corpus(b, 32<<20, 7), 6)
	}
	n, err := io.Copy(io.Discard, NewGzipReader(bytes.NewReader(gz), Options{}))
	if err != nil {
		b.Fatal(err)
	}
	return gz, n
}
