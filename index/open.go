package index

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/beam-cloud/clip/pkg/common"
)

// Open reads a .clip file of any kind clip or clipd writes: clip v1 archives
// with embedded data (Format 1), clip v2 OCI indexes whose Reference is a tag
// or a digest (Format 2), and clipd's files, which add the extension.
// Every length in the file is checked against the file size and the bounds
// of doc.go before anything is allocated; a corrupt or hostile file gives an
// error naming the file (never quoting its bytes).
func Open(path string) (*Archive, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err // *PathError already reads "open PATH: ..."
	}
	defer f.Close()
	return OpenFile(f, path)
}

// OpenFile reads the .clip file already open as f; name is what errors and
// Archive.Path call it. f is read with ReadAt only, so its offset is left
// alone, and it stays open: the caller closes it.
func OpenFile(f *os.File, name string) (*Archive, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("open %s: not a regular file", name)
	}
	a, err := openClip(f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	a.Path, a.FileSize = name, fi.Size()
	noteArchiveFile(a, fi)
	return a, nil
}

// openClip parses an archive of size bytes read through r.
func openClip(r io.ReaderAt, size int64) (*Archive, error) {
	if size < common.ClipHeaderLength {
		return nil, fmt.Errorf("file too short for a clip header: %d bytes, need %d", size, common.ClipHeaderLength)
	}
	hb := make([]byte, common.ClipHeaderLength)
	if _, err := r.ReadAt(hb, 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	h, err := clipDecodeHeader(hb)
	if err != nil {
		return nil, err
	}

	trailer, err := extReadTrailer(r, size)
	if err != nil {
		return nil, err
	}
	limit := size // clip's sections end before the clipd trailer
	if trailer != nil {
		limit = size - extTrailerSize
	}

	idx := clipSection{name: "index", pos: h.IndexPos, len: h.IndexLength, max: MaxIndexBytes}
	if err := clipCheckSection(idx, limit, size); err != nil {
		return nil, err
	}
	if idx.len == 0 {
		return nil, errors.New("index is empty")
	}
	si := clipSection{name: "storage info", pos: h.StorageInfoPos, len: h.StorageInfoLength, max: MaxStorageInfoBytes}
	if si.len != 0 { // clip v1 leaves position and length at 0
		if err := clipCheckSection(si, limit, size); err != nil {
			return nil, err
		}
		if clipOverlap(idx, si) {
			return nil, fmt.Errorf("index at %d+%d overlaps storage info at %d+%d", idx.pos, idx.len, si.pos, si.len)
		}
	}
	if trailer != nil {
		end := max(idx.end(), si.end())
		if trailer.Length > 0 && trailer.Offset < uint64(end) {
			return nil, fmt.Errorf("extension at %d overlaps clip sections ending at %d", trailer.Offset, end)
		}
	}

	cnodes, err := clipDecodeIndex(r, idx)
	if err != nil {
		return nil, err
	}

	var sb []byte
	if si.len != 0 {
		if sb, err = clipReadSection(r, si); err != nil {
			if cnodes.fast == nil {
				return nil, err
			}
			// gob would have failed on the index first, if at all.
			if _, gerr := cnodes.fallback(); gerr != nil {
				return nil, gerr
			}
			return nil, err
		}
	}
	a, err := openNodes(cnodes, sb, size)
	if err != nil && cnodes.fast != nil {
		// The fast decoder walks the nodes while they are converted: on
		// any failure, decode with gob and convert again, so that the
		// error is the one gob, then the conversion, gives.
		if cnodes, err = cnodes.fallback(); err != nil {
			return nil, err
		}
		a, err = openNodes(cnodes, sb, size)
	}
	if err != nil {
		return nil, err
	}

	if trailer != nil {
		body, err := extReadBody(r, trailer)
		if err != nil {
			return nil, err
		}
		if err := extApply(a, body); err != nil {
			return nil, err
		}
		a.Extension = int(trailer.Version)
	}
	// Layers must come from somewhere: a layout-sourced file cut inside its
	// extension (which holds the layout path) has neither.
	if a.Format == FormatOCI && len(a.Layers) > 0 && a.Source.Registry == "" && a.Source.Layout == "" {
		return nil, fmt.Errorf("the archive names neither a registry nor a layout for its layers (a file written for a layout and truncated?)")
	}
	return a, nil
}

// openNodes converts the node list: a v1 archive when there is no storage
// info sb, else what sb says.
func openNodes(cnodes *clipNodes, sb []byte, size int64) (*Archive, error) {
	if sb == nil {
		return openEmbedded(cnodes, size)
	}
	return openStorage(cnodes, sb, size)
}

// openStorage dispatches on the storage info clip recorded.
func openStorage(cnodes *clipNodes, sb []byte, size int64) (*Archive, error) {
	var w common.StorageInfoWrapper
	if err := clipGobDecode("storage info", sb, &w); err != nil {
		return nil, err
	}
	switch w.Type {
	case string(common.StorageModeOCI):
		var info clipOCIInfoWire
		if err := clipGobDecode("oci storage info", w.Data, &info); err != nil {
			return nil, err
		}
		return openOCI(cnodes, &info)
	case string(common.StorageModeLocal), "":
		return openEmbedded(cnodes, size)
	case string(common.StorageModeS3):
		// The file data of such an archive lives in an S3 object clipd has
		// no client for.
		return nil, errors.New("unsupported storage s3 (clip v1 archive stored in S3)")
	default:
		return nil, fmt.Errorf("unsupported storage %q", w.Type)
	}
}

// openEmbedded reads a clip v1 archive: file bytes sit at DataPos in the
// archive itself, which is the single embedded pseudo-layer.
func openEmbedded(cnodes *clipNodes, size int64) (*Archive, error) {
	a := &Archive{
		Format: FormatEmbedded,
		Layers: []Layer{{Embedded: true, Compression: "none", Size: size}},
	}
	nodes := make([]*Node, 0, cnodes.count+1)
	backing := make([]Node, cnodes.count)
	err := cnodes.each(func(cn *common.ClipNode) error {
		n, err := clipNodeToNode(cn, &backing[len(nodes)])
		if err != nil {
			return err
		}
		if clipIsRegular(n) {
			if cn.DataPos < common.ClipHeaderLength || cn.DataLen < 0 || cn.DataPos > size {
				return fmt.Errorf("node %q: data at %d+%d outside the file (size %d)", cn.Path, cn.DataPos, cn.DataLen, size)
			}
			if cn.DataLen > size-cn.DataPos || n.Attr.Size > uint64(size-cn.DataPos) {
				return fmt.Errorf("node %q: data at %d, length %d (size %d) runs past end of file (size %d)",
					cn.Path, cn.DataPos, cn.DataLen, n.Attr.Size, size)
			}
			n.Layer, n.Offset = 0, cn.DataPos
		}
		nodes = append(nodes, n)
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.Nodes, err = clipFinishNodes(nodes)
	return a, err
}

// openOCI reads a clip v2 index: file bytes live in OCI layers.
func openOCI(cnodes *clipNodes, info *clipOCIInfoWire) (*Archive, error) {
	a := &Archive{
		Format: FormatOCI,
		Source: Source{
			Registry:   info.RegistryURL,
			Repository: info.Repository,
			Reference:  info.Reference,
		},
	}
	meta := map[string]clipLayerMetaWire{}
	if im := info.ImageMetadata; im != nil {
		for _, l := range im.LayersData {
			meta[l.Digest] = l
		}
		a.Image = &ImageInfo{
			Digest:       im.Digest,
			Architecture: im.Architecture,
			OS:           im.Os,
			Env:          im.Env,
			Cmd:          im.Cmd,
			Entrypoint:   im.Entrypoint,
			WorkingDir:   im.WorkingDir,
			User:         im.User,
		}
		a.Source.Manifest = im.Digest
	}
	// A tag cannot contain ':', so a Reference that does is a digest
	// (newer clip writes the manifest digest there).
	if a.Source.Manifest == "" && strings.Contains(info.Reference, ":") {
		a.Source.Manifest = info.Reference
	}

	layerOf := make(map[string]int, len(info.Layers))
	for i, d := range info.Layers {
		if _, dup := layerOf[d]; !dup {
			layerOf[d] = i // a layer listed twice: clip's RemoteRef cannot tell them apart
		}
		l := Layer{Digest: d, Compression: "none"}
		if m, ok := meta[d]; ok {
			l.MediaType, l.Size = m.MIMEType, m.Size
			l.Compression = compressionOf(m.MIMEType)
		}
		a.Layers = append(a.Layers, l)
	}

	nodes := make([]*Node, 0, cnodes.count+1)
	backing := make([]Node, cnodes.count)
	err := cnodes.each(func(cn *common.ClipNode) error {
		n, err := clipNodeToNode(cn, &backing[len(nodes)])
		if err != nil {
			return err
		}
		if rr := cn.Remote; rr != nil && clipIsRegular(n) {
			li, ok := layerOf[rr.LayerDigest]
			if !ok {
				return fmt.Errorf("node %q: data in unknown layer %q", cn.Path, rr.LayerDigest)
			}
			if rr.UOffset < 0 || rr.ULength < 0 {
				return fmt.Errorf("node %q: negative data range %d+%d", cn.Path, rr.UOffset, rr.ULength)
			}
			if n.Attr.Size == 0 {
				n.Attr.Size = uint64(rr.ULength)
			}
			if n.Attr.Size > uint64(1<<63-1-rr.UOffset) {
				return fmt.Errorf("node %q: data range %d+%d overflows", cn.Path, rr.UOffset, n.Attr.Size)
			}
			n.Layer, n.Offset = li, rr.UOffset
		} else if clipIsRegular(n) && n.Attr.Size > 0 {
			return fmt.Errorf("node %q: %d-byte file has no data reference", cn.Path, n.Attr.Size)
		}
		nodes = append(nodes, n)
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.Nodes, err = clipFinishNodes(nodes)
	return a, err
}

// clipFinishNodes sorts nodes by path, rejects duplicates and makes sure the
// root exists (clip always writes one, but a root is what every reader
// starts from, so a file without it still gets a plain 0755 root).
func clipFinishNodes(nodes []*Node) ([]*Node, error) {
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Path < nodes[j].Path })
	for i := 1; i < len(nodes); i++ {
		if nodes[i].Path == nodes[i-1].Path {
			return nil, fmt.Errorf("node %q appears twice", nodes[i].Path)
		}
	}
	if len(nodes) == 0 || nodes[0].Path != "/" {
		root := &Node{Path: "/", Layer: -1}
		root.Attr.Mode = clipModeDir | 0o755
		root.Attr.Nlink = 2
		nodes = append([]*Node{root}, nodes...)
	}
	if nodes[0].Attr.Mode&clipModeTypeMask != clipModeDir {
		return nil, fmt.Errorf("root node has mode %o, not a directory", nodes[0].Attr.Mode)
	}
	return nodes, nil
}

// compressionOf maps an OCI or Docker layer media type to a zran
// compression name. The fetcher detects compression from the bytes anyway;
// this is what inspect shows before any byte is fetched.
func compressionOf(mediaType string) string {
	switch {
	case strings.Contains(mediaType, "gzip"):
		return "gzip"
	case strings.Contains(mediaType, "zstd"):
		return "zstd"
	default:
		return "none"
	}
}
