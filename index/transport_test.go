package index

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// A .clip compressed for the registry comes back byte for byte, opens, and
// is smaller; garbage is refused.
func TestCompressClipRoundTrip(t *testing.T) {
	a := windowsTestArchive(t)
	p := filepath.Join(t.TempDir(), "x.clip")
	if _, err := WriteFileWith(p, a, WriteOptions{Windows: WindowsSeparate}); err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	if err := CompressClip(&z, bytes.NewReader(orig)); err != nil {
		t.Fatal(err)
	}
	if n, err := CompressedSize(p); err != nil || n != int64(z.Len()) || n >= int64(len(orig)) {
		t.Fatalf("CompressedSize = %d, %v; compressed %d of %d bytes", n, err, z.Len(), len(orig))
	}
	var back bytes.Buffer
	if n, err := DecompressClip(&back, &z); err != nil || n != int64(len(orig)) || !bytes.Equal(back.Bytes(), orig) {
		t.Fatalf("DecompressClip = %d, %v; same bytes: %v", n, err, bytes.Equal(back.Bytes(), orig))
	}
	q := filepath.Join(t.TempDir(), "y.clip")
	os.WriteFile(q, back.Bytes(), 0o644)
	if _, err := Open(q); err != nil {
		t.Fatal(err)
	}
	if _, err := DecompressClip(&back, bytes.NewReader([]byte("not zstd at all"))); err == nil {
		t.Fatal("garbage decompressed")
	}
}
