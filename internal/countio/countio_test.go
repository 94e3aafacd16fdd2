package countio

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"
)

func TestSharedCounter(t *testing.T) {
	var total atomic.Int64
	a := &Reader{R: strings.NewReader("hello"), N: &total}
	b := &Reader{R: strings.NewReader(" world!"), N: &total}
	io.ReadAll(a)
	io.ReadAll(b)
	if total.Load() != 12 || a.Count() != 12 {
		t.Fatalf("shared counter %d, want 12", total.Load())
	}
	own := NewReader(strings.NewReader("abc"))
	io.CopyN(io.Discard, own, 2)
	if own.Count() != 2 {
		t.Fatalf("own counter %d, want 2", own.Count())
	}
}
