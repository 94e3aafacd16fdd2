package index

import (
	"bytes"
	"testing"
)

// FuzzOpen feeds arbitrary bytes to the parser. Whatever the input, Open
// must return an archive that keeps its promises or an error: never panic,
// never allocate in proportion to a length the file only claims. The seed
// corpus in testdata/fuzz/FuzzOpen holds a small valid clipd file, a clip v1
// archive and a clip v2 index, plus hostile headers.
func FuzzOpen(f *testing.F) {
	_, valid := clipWriteTestFile(f, clipTestArchive())
	f.Add(valid)
	f.Add(append(clipHeaderBytes(f, 54, 1<<62, 0, 0), make([]byte, 46)...))
	// The memory bomb's 170-byte header (claiming a 4 GiB index), and a
	// claim that fits the input but covers only zeros (a sparse file's hole).
	f.Add(append(clipHeaderBytes(f, 54, 4<<30, 0, 0), make([]byte, 170-54)...))
	f.Add(append(clipHeaderBytes(f, 54, 4096, 0, 0), make([]byte, 4096)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := openClip(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		clipCheckInvariants(t, a, int64(len(b)))
		if a.Format == FormatOCI {
			// What was read can be written back and read again.
			out, err := clipEncodeArchive(a)
			if err != nil {
				return // e.g. a clip file whose regular file has no layer
			}
			if _, err := openClip(bytes.NewReader(out), int64(len(out))); err != nil {
				t.Fatalf("re-encoded archive does not open: %v", err)
			}
		}
	})
}
