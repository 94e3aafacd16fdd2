// Package countio counts the bytes a reader delivers: the offset a decoder
// has reached in its input, or the bytes a mount fetched.
package countio

import (
	"io"
	"sync/atomic"
)

// Reader reads R and adds every byte it delivers to N, which several
// readers may share (one counter per mount).
type Reader struct {
	R io.Reader
	N *atomic.Int64
}

// NewReader counts what r delivers in a counter of its own.
func NewReader(r io.Reader) *Reader { return &Reader{R: r, N: new(atomic.Int64)} }

func (c *Reader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N.Add(int64(n))
	return n, err
}

// Count returns the bytes counted so far.
func (c *Reader) Count() int64 { return c.N.Load() }
