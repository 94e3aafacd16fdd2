package cache

import (
	"bytes"
	"fmt"
	"testing"
)

// BenchmarkFirstRead is the first read of 32 entries of 1 MiB (a span
// each) by a process that has not opened them yet: each is verified whole,
// as a fresh serving process does on a warm cache.
func BenchmarkFirstRead(b *testing.B) {
	dir := b.TempDir()
	s, err := Open(dir)
	if err != nil {
		b.Fatal(err)
	}
	data := payload(9, 1<<20)
	for i := range 32 {
		if _, err := s.Put(fmt.Sprintf("l/e%d", i), bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
	}
	s.Close()
	buf := make([]byte, 4096)
	b.SetBytes(32 << 20)
	for b.Loop() {
		s, err := Open(dir)
		if err != nil {
			b.Fatal(err)
		}
		for i := range 32 {
			if _, err := s.ReadAt(fmt.Sprintf("l/e%d", i), buf, 0); err != nil {
				b.Fatal(err)
			}
		}
		s.Close()
	}
}
