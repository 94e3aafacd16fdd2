package index

import "fmt"

// gob bounds what it allocates for a slice to about 10 MiB before it has
// seen the elements (internal/saferio), but a hostile index of 100 bytes that
// claims 2^40 nodes would still cost those 10 MiB. Every encoded *ClipNode
// takes at least one byte, so a count larger than the bytes left in the
// message is corrupt: clipGobCheckIndexCount rejects it before gob runs.
//
// The walk follows the gob wire format: a stream of messages, each a uint
// byte count then a signed type id; negative ids define types, the first
// positive id carries the value. A top-level slice is sent as a singleton
// field: a zero field delta, then the element count.
func clipGobCheckIndexCount(b []byte) error {
	for len(b) > 0 {
		n, rest, ok := gobUint(b)
		if !ok || n > uint64(len(rest)) {
			return nil // let gob report the framing error itself
		}
		msg := rest[:n]
		b = rest[n:]
		u, msg, ok := gobUint(msg)
		if !ok {
			return nil
		}
		if u&1 == 1 { // negative type id: a type definition
			continue
		}
		delta, msg, ok := gobUint(msg)
		if !ok || delta != 0 {
			return nil
		}
		count, msg, ok := gobUint(msg)
		if !ok {
			return nil
		}
		if count > uint64(len(msg)) {
			return fmt.Errorf("index claims %d nodes in %d bytes", count, len(msg))
		}
		return nil
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
