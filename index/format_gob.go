package index

import (
	"errors"
	"fmt"
)

// gob bounds what it allocates for a slice to about 10 MiB before it has
// seen the elements (internal/saferio), and reads a message in chunks as its
// bytes arrive, but a hostile index of 100 bytes that claims 2^40 nodes would
// still cost those 10 MiB, and a run of zeros (a hole of a sparse file) is a
// stream of empty messages gob reads one byte at a time. Every encoded
// *ClipNode takes at least one byte, so a count larger than the message is
// corrupt, and a count over MaxNodes is refused: clipGobCheckIndexCount
// rejects both before gob runs, on the first maxGobPrologue bytes of the
// section (head), given the section's length.
//
// The walk follows the gob wire format: a stream of messages, each a uint
// byte count then a signed type id; negative ids define types, the first
// positive id carries the value. A top-level slice is sent as a singleton
// field: a zero field delta, then the element count. The encoder never
// writes an empty message.
func clipGobCheckIndexCount(head []byte, sectionLen int64) error {
	b, left := head, uint64(sectionLen)
	for {
		n, rest, ok := gobUint(b)
		if !ok {
			if len(head) == maxGobPrologue {
				return fmt.Errorf("no node list within the first %d bytes of the index", maxGobPrologue)
			}
			return errors.New("index ends inside a gob message header")
		}
		left -= uint64(len(b) - len(rest))
		switch {
		case n == 0:
			return errors.New("empty gob message (zeros where the index should be)")
		case n > left:
			return fmt.Errorf("gob message of %d bytes runs past the index section (%d bytes left)", n, left)
		}
		u, msg, ok := gobUint(rest[:min(n, uint64(len(rest)))])
		if !ok {
			return errors.New("gob message without a type id")
		}
		if u&1 == 1 { // negative type id: a type definition
			if n > uint64(len(rest)) {
				return fmt.Errorf("gob type definitions exceed %d bytes", maxGobPrologue)
			}
			b, left = rest[n:], left-n
			continue
		}
		delta, msg, ok := gobUint(msg)
		if !ok || delta != 0 {
			return errors.New("the index is not a list of nodes")
		}
		count, _, ok := gobUint(msg)
		if !ok {
			return errors.New("the index's node count is cut off")
		}
		if count > n {
			return fmt.Errorf("index claims %d nodes in %d bytes", count, n)
		}
		if count > MaxNodes {
			return fmt.Errorf("index claims %d nodes, more than the limit of %d", count, MaxNodes)
		}
		return nil
	}
}

// gobCheckFraming walks the messages of a gob stream held in b and rejects
// empty messages and messages running past its end, before gob reads them
// one byte at a time or waits for bytes that are not there.
func gobCheckFraming(b []byte) error {
	for len(b) > 0 {
		n, rest, ok := gobUint(b)
		switch {
		case !ok:
			return errors.New("truncated gob message header")
		case n == 0:
			return errors.New("empty gob message (zeros where gob data should be)")
		case n > uint64(len(rest)):
			return fmt.Errorf("gob message of %d bytes runs past the %d bytes left", n, len(rest))
		}
		b = rest[n:]
	}
	return nil
}

// gobUint decodes gob's unsigned integer encoding: a byte < 0x80 is the
// value; otherwise it is the negated count (1..8) of big-endian bytes that
// follow.
func gobUint(b []byte) (uint64, []byte, bool) {
	if len(b) == 0 {
		return 0, b, false
	}
	if b[0] < 0x80 {
		return uint64(b[0]), b[1:], true
	}
	n := int(-int8(b[0]))
	if n < 1 || n > 8 || len(b) < 1+n {
		return 0, b, false
	}
	var v uint64
	for _, c := range b[1 : 1+n] {
		v = v<<8 | uint64(c)
	}
	return v, b[1+n:], true
}

// clipOCIInfoWire receives a gob-encoded common.OCIStorageInfo. gob matches
// fields by name, so this mirror reads clip's bytes unchanged; it exists
// because it leaves out every map: gob sizes a map from the count in the
// stream (reflect.MakeMapWithSize) before reading any entry, so a hostile
// count would allocate gigabytes. Fields absent here are skipped by gob
// without allocating. clipd writes with the real common types (write.go).
type clipOCIInfoWire struct {
	RegistryURL   string
	Repository    string
	Reference     string
	Layers        []string
	ImageMetadata *clipImageMetaWire
}

// clipImageMetaWire mirrors the map-free part of common.ImageMetadata.
type clipImageMetaWire struct {
	Name         string
	Digest       string
	Architecture string
	Os           string
	Variant      string
	Env          []string
	Cmd          []string
	Entrypoint   []string
	User         string
	WorkingDir   string
	LayersData   []clipLayerMetaWire
}

// clipLayerMetaWire mirrors common.LayerMetadata without Annotations.
type clipLayerMetaWire struct {
	MIMEType string
	Digest   string
	Size     int64
}
