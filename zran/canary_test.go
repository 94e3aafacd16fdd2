package zran

import (
	"bytes"
	stdflate "compress/flate"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/flate"
)

// klauspost/compress/flate has a checkpoint API (WithEobCallback reports
// where each block ends, WithResumeFrom starts decoding there), but the
// compressed offsets it reports drift by whole bytes after a stored block
// (dataBlock counts the bytes it takes back from its bit buffer a second
// time), so resuming from a later checkpoint decodes garbage. That is why
// clipd has its own inflate decoder (doc.go). This test fails the day the
// library resumes correctly, so the choice can be reconsidered.
func TestCanaryKlauspostFlateResume(t *testing.T) {
	// Text (Huffman blocks), random data (stored blocks), text again.
	rng := rand.New(rand.NewPCG(11, 12))
	var raw bytes.Buffer
	text := func(n int) {
		for i := 0; raw.Len() < n; i++ {
			fmt.Fprintf(&raw, "line %d: the quick brown fox jumps over the lazy dog %d\n", i, rng.IntN(1000))
		}
	}
	text(1 << 20)
	storedFrom := int64(raw.Len())
	random := make([]byte, 512<<10)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	raw.Write(random)
	text(raw.Len() + 1<<20)
	data := raw.Bytes()

	var comp bytes.Buffer
	w, _ := stdflate.NewWriter(&comp, 6)
	w.Write(data)
	w.Close()
	if comp.Len() < len(random) {
		t.Fatalf("compressed to %d bytes: the random part did not make stored blocks", comp.Len())
	}

	var cps []flate.InflateCheckpoint
	r := flate.NewReaderOpts(bytes.NewReader(comp.Bytes()), flate.WithEobCallback(func(cp flate.InflateCheckpoint) {
		cp.Window = bytes.Clone(cp.Window)
		cps = append(cps, cp)
	}))
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("klauspost flate from the start: %d bytes, %v", len(got), err)
	}

	resumes := func(cp flate.InflateCheckpoint) bool {
		if cp.CompressedOffset < 0 || cp.CompressedOffset > int64(comp.Len()) {
			return false
		}
		rr := flate.NewReaderOpts(bytes.NewReader(comp.Bytes()[cp.CompressedOffset:]), flate.WithResumeFrom(cp))
		want := data[cp.UncompressedOffset:]
		out, err := io.ReadAll(io.LimitReader(rr, int64(len(want))+1))
		return err == nil && bytes.Equal(out, want)
	}
	var before, after, wrongAfter int
	for _, cp := range cps {
		if cp.UncompressedOffset <= storedFrom {
			before++
			if !resumes(cp) {
				t.Fatalf("resume from %+v (before any stored block) is wrong: the API itself changed; rewrite this canary", cp.UncompressedOffset)
			}
			continue
		}
		after++
		if !resumes(cp) {
			wrongAfter++
			if wrongAfter == 1 {
				// The diagnosis: the offset is off by whole bytes.
				for k := int64(1); k <= 64; k++ {
					c := cp
					c.CompressedOffset -= k
					if resumes(c) {
						t.Logf("resume at uncompressed %d is right from %d bytes before the reported compressed offset", cp.UncompressedOffset, k)
						break
					}
				}
			}
		}
	}
	if before == 0 || after == 0 {
		t.Fatalf("%d checkpoints before the stored blocks, %d after: want some of each", before, after)
	}
	if wrongAfter == 0 {
		t.Fatalf("klauspost/compress/flate now resumes correctly from all %d checkpoints after stored blocks: "+
			"its checkpoint API could replace clipd's own inflate decoder (see zran/doc.go); reconsider the choice", after)
	}
	t.Logf("%d of %d resumes after stored blocks are wrong (%d before them are right)", wrongAfter, after, before)
}
