// Package index owns the .clip format: reading every kind of file clip writes
// (v1 archives with embedded data, v2 OCI indexes), writing clip-compatible v2
// files plus the clipd extension, and building an index from an image by
// applying its layers with OCI semantics. It does no network I/O: images come
// in as go-containerregistry v1.Image values that package fetcher provides.
package index

import (
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Node is one entry of the merged image tree.
type Node struct {
	// Path is absolute and clean; the root is "/".
	Path string
	// Attr is what stat reports. Mode holds the file type bits and all twelve
	// permission bits (setuid, setgid, sticky included). Hard links share one
	// Ino and carry the link count in Nlink. Rdev holds device numbers
	// (unix.Mkdev encoding) for character and block devices.
	Attr fuse.Attr
	// Target is the target of a symlink.
	Target string
	// Xattrs maps extended attribute names to raw values; nil when none.
	Xattrs map[string]string
	// A regular file's content is Attr.Size bytes at Offset in the
	// uncompressed stream of Layers[Layer] (for a v1 archive, at Offset in
	// the archive file itself). Layer is -1 when the node has no content.
	Layer  int
	Offset int64
}

// Layer describes one image layer as stored in the registry.
type Layer struct {
	Digest      string // digest of the blob as stored (compressed), "sha256:..."
	MediaType   string
	Size        int64  // size of the blob as stored
	Compression string // "gzip", "zstd" or "none" (see package zran)
	DiffID      string // digest of the uncompressed tar stream, when known
	// Embedded is true for the single pseudo-layer of a v1 archive: its bytes
	// are the archive file itself.
	Embedded bool
	// Spans is the layer's decompression index; nil when the file has none
	// (files written by clip), and the fetcher then builds one on first read.
	Spans *SpanIndex
}

// Source says where an image's blobs live.
type Source struct {
	Registry   string // host[:port]
	Repository string
	Reference  string // tag or digest, as written by whoever made the file
	// Manifest is the manifest digest when known.
	Manifest string
	// Layout is the absolute path of a local OCI image layout when the image
	// was indexed from one (oci-layout:DIR); its blobs are read from there.
	Layout string
}

// Archive is an opened .clip file: the merged tree plus what is needed to
// fetch file contents.
type Archive struct {
	// Path is the .clip file this archive was read from ("" if built in memory).
	Path string
	// Format is 1 for clip v1 archives with embedded data, 2 for OCI indexes.
	Format int
	Source Source
	Layers []Layer
	// Nodes are sorted by Path; Nodes[0] is the root "/".
	Nodes []*Node
	// Image holds image configuration details when the file records them.
	Image *ImageInfo
	// Extension is the clipd extension version found in the file, 0 if the
	// file was written by clip itself.
	Extension int
	// Windows names the blob holding the checkpoint windows when the
	// decompression indexes keep them apart (extension version 3); nil
	// when they are inline or there are none.
	Windows *WindowsBlob
	// FileSize is the size of the .clip file read (0 if built in memory).
	FileSize int64
}

// ImageInfo is the part of an image's configuration a runtime needs.
type ImageInfo struct {
	Digest       string   `json:"digest,omitempty"`
	Architecture string   `json:"architecture,omitempty"`
	OS           string   `json:"os,omitempty"`
	Env          []string `json:"env,omitempty"`
	Cmd          []string `json:"cmd,omitempty"`
	Entrypoint   []string `json:"entrypoint,omitempty"`
	WorkingDir   string   `json:"working_dir,omitempty"`
	User         string   `json:"user,omitempty"`
}
