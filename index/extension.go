package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// The clipd extension holds what clip's format cannot express. It is a body
// appended after clip's sections and found through a fixed trailer in the
// last 64 bytes of the file (all integers little-endian):
//
//	magic "CLIPDEXT" (8) | version uint32 | JSON length uint32 |
//	body offset uint64 | body length uint64 | SHA-256 of the body (32)
//
// The body is a JSON document followed (from version 2) by a binary section
// holding each layer's decompression index (see SpanIndex.MarshalBinary):
// thousands of 32 KiB windows are too many for JSON's base64. The JSON says
// where in that section each layer's index lies. In version 1 the JSON
// length field was reserved (0) and the body was JSON only.
//
// Version 3 keeps the checkpoint windows out of the file, in a windows blob
// (see windows.go): the JSON names the blob (digest, size) and each span
// record holds its window's offset, length and SHA-256 there. A node then
// downloads only the tree and the span records before a mount is ready.
// Files with inline windows are still written as version 2, so that older
// readers keep reading them.
//
// clip reads only the ranges its header names, so it never sees these bytes.
// A file without the magic at the end was written by clip (Extension 0).
// Readers ignore unknown JSON fields, so adding a field and bumping
// ExtensionVersion is a compatible change.
const (
	ExtensionVersion = 2 // the version written when the windows are inline
	// ExtensionVersionWindows is the version written when the windows are
	// in a windows blob, and the newest Open reads.
	ExtensionVersionWindows = 3
	extTrailerSize          = 64 // bytes
	extMagic                = "CLIPDEXT"
)

// extTrailer is the decoded fixed-size trailer.
type extTrailer struct {
	Version uint32
	JSONLen uint32 // version >= 2: the JSON part of the body; 0 in version 1
	Offset  uint64
	Length  uint64
	Sum     [sha256.Size]byte
}

// extBody is the JSON document of the extension.
type extBody struct {
	Version int       `json:"version"`
	Source  extSource `json:"source"`
	// Image is the image configuration; it wins over clip's ImageMetadata.
	Image  *ImageInfo `json:"image,omitempty"`
	Layers []extLayer `json:"layers"`
	// Xattrs maps a node path to its extended attributes (name → raw value;
	// JSON encodes the bytes as base64 so any value survives).
	Xattrs map[string]map[string][]byte `json:"xattrs,omitempty"`
	// Windows names the windows blob (version 3).
	Windows *extWindows `json:"windows,omitempty"`

	// spans is the binary section after the JSON (not part of the JSON).
	spans []byte
}

// extSource is what clip's OCIStorageInfo cannot say about the source.
type extSource struct {
	// Registry is kept here for layout sources, whose clip RegistryURL is "".
	Registry string `json:"registry,omitempty"`
	Layout   string `json:"layout,omitempty"`
	Manifest string `json:"manifest,omitempty"`
}

// extLayer records one layer; the order is the order of clip's Layers.
type extLayer struct {
	Digest      string `json:"digest"`
	MediaType   string `json:"media_type,omitempty"`
	Size        int64  `json:"size"`
	Compression string `json:"compression,omitempty"`
	DiffID      string `json:"diff_id,omitempty"`
	// Zran locates the layer's decompression index in the binary section.
	Zran *extRange `json:"zran,omitempty"`
}

// extWindows names the blob that holds the checkpoint windows.
type extWindows struct {
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	MediaType string `json:"media_type,omitempty"`
}

// extRange is a byte range of the binary section.
type extRange struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

func extEncodeTrailer(t extTrailer) []byte {
	b := make([]byte, extTrailerSize)
	copy(b[0:8], extMagic)
	binary.LittleEndian.PutUint32(b[8:12], t.Version)
	binary.LittleEndian.PutUint32(b[12:16], t.JSONLen)
	binary.LittleEndian.PutUint64(b[16:24], t.Offset)
	binary.LittleEndian.PutUint64(b[24:32], t.Length)
	copy(b[32:64], t.Sum[:])
	return b
}

// extReadTrailer returns the trailer at the end of a file of size bytes, or
// nil when there is none (a clip-written file). A trailer that is present
// but out of bounds or of an unknown version is an error.
func extReadTrailer(r io.ReaderAt, size int64) (*extTrailer, error) {
	if size < extTrailerSize {
		return nil, nil
	}
	b := make([]byte, extTrailerSize)
	if _, err := r.ReadAt(b, size-extTrailerSize); err != nil {
		return nil, fmt.Errorf("read extension trailer: %w", err)
	}
	if !bytes.Equal(b[0:8], []byte(extMagic)) {
		return nil, nil
	}
	t := &extTrailer{
		Version: binary.LittleEndian.Uint32(b[8:12]),
		JSONLen: binary.LittleEndian.Uint32(b[12:16]),
		Offset:  binary.LittleEndian.Uint64(b[16:24]),
		Length:  binary.LittleEndian.Uint64(b[24:32]),
	}
	copy(t.Sum[:], b[32:64])
	if t.Version < 1 || t.Version > ExtensionVersionWindows {
		return nil, fmt.Errorf("unsupported clipd extension version %d (this build reads 1 to %d)", t.Version, ExtensionVersionWindows)
	}
	limit := uint64(size - extTrailerSize)
	if t.Length > limit {
		return nil, fmt.Errorf("extension length %d exceeds file size %d", t.Length, size)
	}
	if t.Offset > limit-t.Length {
		return nil, fmt.Errorf("extension at %d+%d runs past its trailer at %d", t.Offset, t.Length, limit)
	}
	return t, nil
}

// extReadBody reads, verifies and decodes the body the trailer points to.
// The trailer's bounds were checked against the file size and the limits of
// doc.go; the buffer grows with what is read, and a body that does not start
// like JSON (zeros of a sparse file) is refused after its first bytes.
func extReadBody(r io.ReaderAt, t *extTrailer) (*extBody, error) {
	jsonLen := uint64(t.JSONLen)
	if t.Version < 2 {
		jsonLen = t.Length
	}
	switch {
	case t.Length > MaxExtensionBytes:
		return nil, fmt.Errorf("extension length %d exceeds the limit of %d bytes", t.Length, MaxExtensionBytes)
	case jsonLen > t.Length:
		return nil, fmt.Errorf("extension JSON length %d exceeds body length %d", jsonLen, t.Length)
	case jsonLen > MaxExtensionJSONBytes:
		return nil, fmt.Errorf("extension JSON length %d exceeds the limit of %d bytes", jsonLen, MaxExtensionJSONBytes)
	case jsonLen == 0:
		return nil, errors.New("extension has no JSON part")
	}
	sr := io.NewSectionReader(r, int64(t.Offset), int64(t.Length))
	first := make([]byte, min(jsonLen, 4096))
	if _, err := io.ReadFull(sr, first); err != nil {
		return nil, fmt.Errorf("read extension at %d+%d: %w", t.Offset, t.Length, err)
	}
	if first[0] != '{' {
		return nil, errors.New("extension body is not a JSON object")
	}
	var buf bytes.Buffer
	buf.Write(first)
	if _, err := buf.ReadFrom(sr); err != nil {
		return nil, fmt.Errorf("read extension at %d+%d: %w", t.Offset, t.Length, err)
	}
	if uint64(buf.Len()) != t.Length {
		return nil, fmt.Errorf("read extension at %d+%d: %w", t.Offset, t.Length, io.ErrUnexpectedEOF)
	}
	b := buf.Bytes()
	if sum := sha256.Sum256(b); sum != t.Sum {
		// The body's own sum only: the trailer's bytes are not repeated.
		return nil, fmt.Errorf("extension checksum mismatch (body sha256 %x)", sum)
	}
	var body extBody
	body.spans = b[jsonLen:]
	if err := json.Unmarshal(b[:jsonLen], &body); err != nil {
		return nil, fmt.Errorf("decode extension body: %w", err)
	}
	if body.Version != int(t.Version) {
		return nil, fmt.Errorf("extension body version %d does not match trailer version %d", body.Version, t.Version)
	}
	return &body, nil
}

// extFromArchive collects what the extension must carry for a.
func extFromArchive(a *Archive) (*extBody, error) {
	body := &extBody{
		Version: ExtensionVersion,
		Source: extSource{
			Layout:   a.Source.Layout,
			Manifest: a.Source.Manifest,
		},
		Image:  a.Image,
		Layers: make([]extLayer, 0, len(a.Layers)),
	}
	if a.Source.Layout != "" {
		body.Source.Registry = a.Source.Registry
	}
	for _, l := range a.Layers {
		el := extLayer{
			Digest:      l.Digest,
			MediaType:   l.MediaType,
			Size:        l.Size,
			Compression: l.Compression,
			DiffID:      l.DiffID,
		}
		if l.Spans != nil {
			b, err := l.Spans.MarshalBinary()
			if err != nil {
				return nil, fmt.Errorf("layer %s: %w", l.Digest, err)
			}
			el.Zran = &extRange{Offset: int64(len(body.spans)), Length: int64(len(b))}
			body.spans = append(body.spans, b...)
		}
		body.Layers = append(body.Layers, el)
	}
	external := false
	for _, l := range a.Layers {
		external = external || (l.Spans != nil && l.Spans.External())
	}
	if external {
		w := a.Windows
		if w == nil {
			return nil, errors.New("decompression index refers to a windows blob the archive does not name")
		}
		body.Version = ExtensionVersionWindows
		body.Windows = &extWindows{Digest: w.Digest, Size: w.Size, MediaType: WindowsMediaType}
	}
	for _, n := range a.Nodes {
		if len(n.Xattrs) == 0 {
			continue
		}
		if body.Xattrs == nil {
			body.Xattrs = make(map[string]map[string][]byte)
		}
		x := make(map[string][]byte, len(n.Xattrs))
		for k, v := range n.Xattrs {
			x[k] = []byte(v)
		}
		body.Xattrs[n.Path] = x
	}
	return body, nil
}

// extApply merges the extension into an archive read from clip's sections.
func extApply(a *Archive, body *extBody) error {
	if len(body.Layers) > 0 {
		if len(body.Layers) != len(a.Layers) {
			return fmt.Errorf("extension records %d layers, index has %d", len(body.Layers), len(a.Layers))
		}
		for i, el := range body.Layers {
			l := &a.Layers[i]
			if el.Digest != l.Digest {
				return fmt.Errorf("extension layer %d is %s, index has %s", i, el.Digest, l.Digest)
			}
			if el.Size < 0 {
				return fmt.Errorf("extension layer %d (%s): negative size %d", i, el.Digest, el.Size)
			}
			l.MediaType, l.Size, l.DiffID = el.MediaType, el.Size, el.DiffID
			if el.Compression != "" {
				l.Compression = el.Compression
			}
			if el.Zran != nil {
				x, err := extSpans(body.spans, el)
				if err == nil && x.External() {
					err = checkRefs(x, body.Windows)
				}
				if err != nil {
					return fmt.Errorf("extension layer %d (%s): decompression index: %w", i, el.Digest, err)
				}
				l.Spans = x
			}
		}
	}
	// clipd wrote both halves, and its own record is the exact one: clip's
	// ImageMetadata always exists in a clipd file, even for an archive
	// without image info, and a layout source has no clip RegistryURL.
	a.Source.Layout, a.Source.Manifest = body.Source.Layout, body.Source.Manifest
	if body.Source.Registry != "" {
		a.Source.Registry = body.Source.Registry
	}
	a.Image = body.Image
	if w := body.Windows; w != nil {
		if body.Version < ExtensionVersionWindows {
			return fmt.Errorf("extension version %d names a windows blob (version %d and later do)", body.Version, ExtensionVersionWindows)
		}
		if err := checkBlobDigest(w.Digest); err != nil {
			return fmt.Errorf("extension windows blob: %w", err)
		}
		if w.Size < 0 {
			return fmt.Errorf("extension windows blob %s: negative size %d", w.Digest, w.Size)
		}
		a.Windows = &WindowsBlob{Digest: w.Digest, Size: w.Size}
	}
	if len(body.Xattrs) > 0 {
		byPath := make(map[string]*Node, len(a.Nodes))
		for _, n := range a.Nodes {
			byPath[n.Path] = n
		}
		for p, x := range body.Xattrs {
			n := byPath[p]
			if n == nil {
				return fmt.Errorf("extension has xattrs for %q, which is not in the index", p)
			}
			if len(x) == 0 {
				continue
			}
			n.Xattrs = make(map[string]string, len(x))
			for k, v := range x {
				n.Xattrs[k] = string(v)
			}
		}
	}
	return nil
}

// extSpans decodes one layer's decompression index from the binary section,
// checking that it fits the section and describes this very blob.
func extSpans(section []byte, el extLayer) (*SpanIndex, error) {
	r := el.Zran
	if r.Offset < 0 || r.Length < 0 || r.Offset > int64(len(section)) || r.Length > int64(len(section))-r.Offset {
		return nil, fmt.Errorf("range %d+%d outside a section of %d bytes", r.Offset, r.Length, len(section))
	}
	var x SpanIndex
	if err := x.UnmarshalBinary(section[r.Offset : r.Offset+r.Length]); err != nil {
		return nil, err
	}
	if x.CSize != el.Size || (el.Compression != "" && x.Compression != el.Compression) {
		return nil, fmt.Errorf("describes a %s blob of %d bytes, layer is %s of %d", x.Compression, x.CSize, el.Compression, el.Size)
	}
	return &x, nil
}
