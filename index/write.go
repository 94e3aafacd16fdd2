package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/gob"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/beam-cloud/clip/pkg/common"
)

// WriteFile writes a as a clip-compatible v2 file plus the clipd extension,
// atomically (temporary file in the same directory, fsync, rename), so a
// reader never sees a half-written index. Only Format 2 archives can be
// written: a v1 archive's data is the archive itself.
func WriteFile(path string, a *Archive) error {
	_, err := WriteFileWith(path, a, WriteOptions{})
	return err
}

// WriteOptions tune WriteFileWith.
type WriteOptions struct {
	// Windows is WindowsInline (the default) or WindowsSeparate: the
	// checkpoint windows go to WindowsPath(path), written before the .clip
	// so that a .clip never names a windows file that is not there.
	Windows string
}

// Written says what WriteFileWith wrote.
type Written struct {
	ClipSize int64
	// Windows names the windows blob (nil when the windows are inline or
	// there are none); WindowsPath is its file, "" when an archive opened
	// with external windows is written again (its blob is unchanged and
	// not rewritten).
	Windows     *WindowsBlob
	WindowsPath string
}

// WriteFileWith writes a as WriteFile does, with the windows where opts
// says.
func WriteFileWith(path string, a *Archive, opts WriteOptions) (*Written, error) {
	if a == nil {
		return nil, fmt.Errorf("write %s: nil archive", path)
	}
	w := &Written{}
	external := false
	for _, l := range a.Layers {
		external = external || (l.Spans != nil && l.Spans.External())
	}
	switch opts.Windows {
	case "", WindowsInline:
		if external {
			return nil, fmt.Errorf("write %s: the windows of this archive are in blob %s, they cannot be written inline", path, a.Windows.Digest)
		}
	case WindowsSeparate:
		if !external {
			layers, blob, err := splitWindows(a)
			if err != nil {
				return nil, fmt.Errorf("write %s: %w", path, err)
			}
			if len(blob) > 0 {
				sum := sha256.Sum256(blob)
				wb := &WindowsBlob{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(blob)), owner: -1}
				cp := *a
				cp.Layers, cp.Windows = layers, wb
				a = &cp
				w.WindowsPath = WindowsPath(path)
				if err := clipWriteAtomic(w.WindowsPath, blob); err != nil {
					return nil, fmt.Errorf("write %s: %w", w.WindowsPath, err)
				}
			}
		}
		if a.Windows != nil && (external || w.WindowsPath != "") {
			w.Windows = &WindowsBlob{Digest: a.Windows.Digest, Size: a.Windows.Size, owner: -1}
		}
	default:
		return nil, fmt.Errorf("write %s: windows mode %q (want %q or %q)", path, opts.Windows, WindowsInline, WindowsSeparate)
	}
	b, err := clipEncodeArchive(a)
	if err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := clipWriteAtomic(path, b); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	w.ClipSize = int64(len(b))
	return w, nil
}

// clipEncodeArchive lays the file out exactly as clip's CreateRemoteArchive
// does (header, gob index, gob StorageInfoWrapper), then appends the
// extension body and trailer.
func clipEncodeArchive(a *Archive) ([]byte, error) {
	if a == nil {
		return nil, errors.New("nil archive")
	}
	if a.Format != FormatOCI {
		return nil, fmt.Errorf("only format %d (OCI) archives can be written, this one is format %d", FormatOCI, a.Format)
	}
	for i, l := range a.Layers {
		if l.Digest == "" || l.Embedded {
			return nil, fmt.Errorf("layer %d: an OCI archive needs a digest and no embedded layer", i)
		}
	}

	sorted := append([]*Node(nil), a.Nodes...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	cnodes := make([]*common.ClipNode, 0, len(sorted))
	for i, n := range sorted {
		cn, err := clipNodeFromNode(n, a.Layers)
		if err != nil {
			return nil, err
		}
		if i > 0 && cn.Path == sorted[i-1].Path {
			return nil, fmt.Errorf("node %q appears twice", cn.Path)
		}
		cnodes = append(cnodes, cn)
	}
	if len(cnodes) == 0 || cnodes[0].Path != "/" {
		return nil, errors.New("archive has no root node")
	}
	var index bytes.Buffer
	if err := gob.NewEncoder(&index).Encode(cnodes); err != nil {
		return nil, fmt.Errorf("encode index: %w", err)
	}

	info := clipStorageInfo(a)
	infoBytes, err := info.Encode()
	if err != nil {
		return nil, fmt.Errorf("encode oci storage info: %w", err)
	}
	var wrapper bytes.Buffer
	if err := gob.NewEncoder(&wrapper).Encode(common.StorageInfoWrapper{Type: info.Type(), Data: infoBytes}); err != nil {
		return nil, fmt.Errorf("encode storage info: %w", err)
	}

	h := common.ClipArchiveHeader{
		ClipFileFormatVersion: common.ClipFileFormatVersion,
		IndexPos:              common.ClipHeaderLength,
		IndexLength:           int64(index.Len()),
		StorageInfoPos:        common.ClipHeaderLength + int64(index.Len()),
		StorageInfoLength:     int64(wrapper.Len()),
	}
	copy(h.StartBytes[:], common.ClipFileStartBytes)
	copy(h.StorageInfoType[:], info.Type())
	header, err := clipEncodeHeader(&h)
	if err != nil {
		return nil, err
	}

	ext, err := extFromArchive(a)
	if err != nil {
		return nil, fmt.Errorf("encode extension: %w", err)
	}
	body, err := json.Marshal(ext)
	if err != nil {
		return nil, fmt.Errorf("encode extension: %w", err)
	}
	jsonLen := len(body)
	body = append(body, ext.spans...)

	var out bytes.Buffer
	out.Grow(len(header) + index.Len() + wrapper.Len() + len(body) + extTrailerSize)
	out.Write(header)
	out.Write(index.Bytes())
	out.Write(wrapper.Bytes())
	bodyPos := out.Len()
	out.Write(body)
	out.Write(extEncodeTrailer(extTrailer{
		Version: uint32(ext.Version),
		JSONLen: uint32(jsonLen),
		Offset:  uint64(bodyPos),
		Length:  uint64(len(body)),
		Sum:     sha256.Sum256(body),
	}))
	return out.Bytes(), nil
}

// clipStorageInfo builds the OCIStorageInfo clip's own indexer would write.
// The maps are empty but not nil, as clip's extractImageMetadata leaves them.
// clip has no notion of a local OCI layout: for one, RegistryURL is empty
// and the extension carries the layout path.
func clipStorageInfo(a *Archive) common.OCIStorageInfo {
	digests := make([]string, 0, len(a.Layers))
	layersData := make([]common.LayerMetadata, 0, len(a.Layers))
	for _, l := range a.Layers {
		digests = append(digests, l.Digest)
		layersData = append(layersData, common.LayerMetadata{MIMEType: l.MediaType, Digest: l.Digest, Size: l.Size})
	}
	registry := a.Source.Registry
	if a.Source.Layout != "" {
		registry = ""
	}
	meta := &common.ImageMetadata{
		Name:         describeSource(a.Source), // the reference clip stores here,
		Digest:       a.Source.Manifest,
		Labels:       map[string]string{},
		ExposedPorts: map[string]struct{}{},
		Volumes:      map[string]struct{}{},
		Env:          []string{},
		Layers:       digests,
		LayersData:   layersData,
	}
	if im := a.Image; im != nil {
		if im.Digest != "" {
			meta.Digest = im.Digest
		}
		meta.Architecture, meta.Os = im.Architecture, im.OS
		if im.Env != nil {
			meta.Env = im.Env
		}
		meta.Cmd, meta.Entrypoint = im.Cmd, im.Entrypoint
		meta.WorkingDir, meta.User = im.WorkingDir, im.User
	}
	return common.OCIStorageInfo{
		RegistryURL:             registry,
		Repository:              a.Source.Repository,
		Reference:               a.Source.Reference,
		Layers:                  digests,
		GzipIdxByLayer:          map[string]*common.GzipIndex{},
		ZstdIdxByLayer:          map[string]*common.ZstdIndex{},
		DecompressedHashByLayer: map[string]string{},
		ImageMetadata:           meta,
	}
}

// clipWriteAtomic writes b to a temporary file beside path, syncs it and
// renames it into place, then syncs the directory so the rename survives a
// crash.
func clipWriteAtomic(path string, b []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err = f.Write(b); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
