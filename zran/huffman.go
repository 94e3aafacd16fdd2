package zran

import "errors"

// A Huffman decoder for one deflate alphabet. Codes of up to primaryBits bits
// are decoded with one table lookup; longer codes, which by construction are
// the rare ones, fall back to a canonical bit-by-bit walk (as in zlib's puff).
const (
	primaryBits = 10
	maxCodeBits = 15
)

var (
	errOversubscribed = errors.New("zran: invalid huffman code: oversubscribed")
	errIncomplete     = errors.New("zran: invalid huffman code: incomplete")
)

type huffman struct {
	// primary[bits & (1<<primaryBits-1)] = sym<<4 | codeLen, or 0 when the
	// code is longer than primaryBits (or the bit pattern is unused).
	primary [1 << primaryBits]uint32
	count   [maxCodeBits + 1]uint16 // number of codes of each length
	symbol  []uint16                // symbols ordered by code
}

// init builds the decoder from code lengths (0 = unused symbol). An
// incomplete code is accepted only when allowIncomplete (deflate permits it
// for a distance alphabet with a single code).
func (h *huffman) init(lengths []uint8, allowIncomplete bool) error {
	h.count = [maxCodeBits + 1]uint16{}
	for _, l := range lengths {
		h.count[l]++
	}
	h.count[0] = 0
	left := 1
	for l := 1; l <= maxCodeBits; l++ {
		left <<= 1
		left -= int(h.count[l])
		if left < 0 {
			return errOversubscribed
		}
	}
	if left > 0 {
		used := 0
		for l := 1; l <= maxCodeBits; l++ {
			used += int(h.count[l])
		}
		if !allowIncomplete || used > 1 {
			return errIncomplete
		}
	}

	var offs [maxCodeBits + 2]uint16
	for l := 1; l <= maxCodeBits; l++ {
		offs[l+1] = offs[l] + h.count[l]
	}
	if cap(h.symbol) < len(lengths) {
		h.symbol = make([]uint16, len(lengths))
	}
	h.symbol = h.symbol[:offs[maxCodeBits+1]]
	for s, l := range lengths {
		if l != 0 {
			h.symbol[offs[l]] = uint16(s)
			offs[l]++
		}
	}

	h.primary = [1 << primaryBits]uint32{}
	code := 0
	idx := 0
	for l := 1; l <= primaryBits; l++ {
		for i := 0; i < int(h.count[l]); i++ {
			sym := h.symbol[idx]
			idx++
			rev := reverseBits(code, l)
			entry := uint32(sym)<<4 | uint32(l)
			for k := rev; k < 1<<primaryBits; k += 1 << l {
				h.primary[k] = entry
			}
			code++
		}
		code <<= 1
	}
	return nil
}

func reverseBits(code, n int) int {
	r := 0
	for i := 0; i < n; i++ {
		r = r<<1 | code&1
		code >>= 1
	}
	return r
}
